"""Relay memory and rate while draining a deep queue: RSS must stay flat.

N messages are put while no relay runs, then a relay drains them (local transport by
default, ``--http`` for a server on loopback). Its resident set size is read from
``/proc/PID/status`` every half second; the rate over the first and the last tenth of the
queue shows whether depth slows it. The full run is ``--count 1000000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import start_server

import dropr
from dropr._impl import IMPLEMENTATION, scan


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--http", action="store_true", help="drain to a server instead of file://")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dropr-drain-")
    spool = os.path.join(root, "spool")
    store = os.path.join(root, "store")
    server = start_server(store) if args.http else None
    peer = server.url if server else "file://" + store
    payload = os.urandom(200)
    started = time.monotonic()
    for _ in range(args.count):
        dropr.fastput(payload, peer, spool=spool)
    print(f"put {args.count} in {time.monotonic() - started:.1f} s", flush=True)
    queue = os.path.join(spool, "queue")
    relay = subprocess.Popen(
        [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise"],
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, int, int]] = []
    try:
        started = time.monotonic()
        while True:
            left = scan.count(queue)
            samples.append((time.monotonic() - started, left, rss_kib(relay.pid)))
            if not left:
                break
            time.sleep(0.5)
    finally:
        relay.terminate()
        relay.wait(60)
        if server:
            server.close()
        shutil.rmtree(root, ignore_errors=True)

    def rate(low: float, high: float) -> float:
        """Messages/s between the samples where the drain first reached ``low`` and ``high``."""
        def at(fraction: float) -> tuple[float, int]:
            return next((t, left) for t, left, _ in samples if args.count - left >= fraction * args.count)

        (t0, left0), (t1, left1) = at(low), at(high)
        return (left0 - left1) / (t1 - t0) if t1 > t0 else float("nan")

    rss = [kib for _, _, kib in samples[1:]] or [0]
    print(f"drained {args.count} messages over {'HTTP' if args.http else 'the local transport'} "
          f"in {samples[-1][0]:.1f} s (hot path {IMPLEMENTATION})")  # fmt: skip
    print(f"relay RSS: first {rss[0] / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB")
    print(f"rate: first quarter {rate(0, 0.25):,.0f} msg/s, last quarter {rate(0.75, 1.0):,.0f} msg/s")


if __name__ == "__main__":
    main()
