"""Relay rate and memory draining a deep queue against a small one, in the same run.

Each cell fills a fresh spool with messages while no relay runs, then times a ``dropr-relay
--once`` draining it. Cells alternate per transport: small queue, deep queue, small queue
again; the figure that counts is the deep cell's rate over the first quarter of its drain
(the queue still holds at least three quarters of ``--count``) divided by the mean rate of
the small cells (target >= 0.8), and the relay's resident set size, read from
``/proc/PID/status`` all along, must stay flat however deep the queue.

Only the relay is measured: the HTTP server runs with ``--fsync none`` and both the
server's store and the local transport's store live on a RAM file system (``/dev/shm``
when there is one), so the receiving side is not the bottleneck; the spool is on the disk
(``--dir``, default the temporary directory). Rates are counted from the relay's first
acknowledged batch (the debug log line of each batch is timestamped as it arrives), so
interpreter start-up weighs on neither cell; the time to the first batch, which includes
the first scan of the whole queue, is printed beside. The full run is ``--count 1000000``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import start_server

from dropr._impl import IMPLEMENTATION

FILLER = """
import os, sys
import dropr
spool, peer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload, fastput = os.urandom(200), dropr.fastput
for _ in range(count):
    fastput(payload, peer, spool=spool)
"""
_SENT = re.compile(r": (\d+) sent in [0-9.]+ s: (\{.*\})")
_DELIVERED = re.compile(r"'(?:stored|duplicate)': (\d+)")
RAM_DIR = "/dev/shm"


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fill(spool: str, peer: str, count: int, procs: int) -> float:
    """Put ``count`` messages with ``procs`` producer processes; returns the seconds taken."""
    started = time.monotonic()
    shares = [count // procs + (i < count % procs) for i in range(procs)]
    producers = [subprocess.Popen([sys.executable, "-c", FILLER, spool, peer, str(n)]) for n in shares if n]
    if any(p.wait() for p in producers):
        raise RuntimeError("a producer failed")
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


class Cell:
    """One drain: acknowledged counts over time and RSS samples of the relay."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.acks: list[tuple[float, int]] = []
        self.rss: list[int] = []
        self.started = 0.0
        self.ended = 0.0
        self.log_tail: list[str] = []

    def read_log(self, stream) -> None:  # type: ignore[no-untyped-def]
        delivered = 0
        for line in stream:
            now = time.monotonic()
            match = _SENT.search(line)
            if match:
                done = _DELIVERED.findall(match.group(2))
                delivered += sum(int(n) for n in done)
                self.acks.append((now, delivered))
            else:
                self.log_tail = (self.log_tail + [line.rstrip()])[-5:]

    def rate(self, low: float, high: float) -> float:
        """Messages/s between the first acknowledgement at or past each fraction of the queue."""

        def at(fraction: float) -> tuple[float, int]:
            goal = max(1, fraction * self.count)
            return next((t, n) for t, n in self.acks if n >= goal)

        (t0, n0), (t1, n1) = at(low), at(high)
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")

    def delivered(self) -> int:
        return self.acks[-1][1] if self.acks else 0


def drain(root: str, count: int, transport: str, procs: int, relay_args: list[str]) -> tuple[Cell, float]:
    work = tempfile.mkdtemp(prefix="cell-", dir=root)
    ram = tempfile.mkdtemp(prefix="dropr-drain-store-", dir=RAM_DIR if os.path.isdir(RAM_DIR) else None)
    spool = os.path.join(work, "spool")
    store = os.path.join(ram, "store")
    server = start_server(store, extra_args=["--fsync", "none"]) if transport == "http" else None
    cell = Cell(count)
    try:
        filled = fill(spool, server.url if server else "file://" + store, count, procs)
        cell.started = time.monotonic()
        relay = subprocess.Popen(
            [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--once", "--no-supervise",
             "--log-level", "debug", *relay_args],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        reader = threading.Thread(target=cell.read_log, args=(relay.stderr,), daemon=True)
        reader.start()
        while relay.poll() is None:
            cell.rss.append(rss_kib(relay.pid))
            time.sleep(0.25)
        cell.ended = time.monotonic()
        reader.join(10)
        if relay.returncode or cell.delivered() != count:
            raise RuntimeError(f"relay exited {relay.returncode}, {cell.delivered()} of {count} delivered: "
                               + " | ".join(cell.log_tail))  # fmt: skip
    finally:
        if server:
            server.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ram, ignore_errors=True)
    return cell, filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="deep queue (default 200000)")
    parser.add_argument("--small", type=int, default=20_000, help="small queue (default 20000)")
    parser.add_argument("--transport", choices=("http", "local", "both"), default="both")
    parser.add_argument("--fill-procs", type=int, default=2, help="producer processes filling a spool")
    parser.add_argument("--dir", default=None, help="where spools go (default: the temporary directory)")
    parser.add_argument("relay_args", nargs="*", help="more dropr-relay options (after --)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dropr-drain-", dir=args.dir)
    transports = ("http", "local") if args.transport == "both" else (args.transport,)
    print(f"relay draining {args.count:,} queued messages vs {args.small:,}, 200-byte payloads, "
          f"hot path {IMPLEMENTATION}, {os.cpu_count()} CPUs; receiving side: server --fsync none, "
          f"stores on {RAM_DIR} (not the bottleneck); spool on disk", flush=True)  # fmt: skip
    results = []
    try:
        for transport in transports:
            cells = []
            for label, count in (("small", args.small), ("deep", args.count), ("small", args.small)):
                cell, filled = drain(root, count, transport, args.fill_procs, args.relay_args)
                first = cell.acks[0][0] - cell.started
                rss = cell.rss[1:] or cell.rss or [0]
                cells.append((label, cell))
                print(f"{transport:5s} {label:5s} {count:>9,}: filled in {filled:.0f} s; drained in "
                      f"{cell.ended - cell.started:.1f} s, first batch after {first:.2f} s; rate "
                      f"{cell.rate(0, 1):,.0f} msg/s overall, first quarter {cell.rate(0, 0.25):,.0f}, "
                      f"last quarter {cell.rate(0.75, 1):,.0f}; RSS first {rss[0] / 1024:.1f} MiB, "
                      f"max {max(rss) / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB", flush=True)  # fmt: skip
            small = statistics.mean(cell.rate(0, 1) for label, cell in cells if label == "small")
            deep = cells[1][1]
            results.append((transport, small, deep.rate(0, 0.25), deep.rate(0, 1)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    for transport, small, deep_first, deep_all in results:
        print(f"{transport:5s}: small queue {small:,.0f} msg/s; at depth {args.count:,} (first quarter) "
              f"{deep_first:,.0f} msg/s, ratio {deep_first / small:.2f}; whole deep drain "
              f"{deep_all:,.0f} msg/s, ratio {deep_all / small:.2f}  (target >= 0.8)")  # fmt: skip


if __name__ == "__main__":
    main()
