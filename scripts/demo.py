"""dropr's main job on loopback: producers -> spool -> dropr-relay -> HTTP -> dropr-server -> store.

Starts a server and a relay in fresh temporary directories, runs producer processes calling
``dropr.fastput`` for a while, shows the flow as it goes, waits until every message is stored,
checks the store holds each one, and prints the rates.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dropr
from dropr._impl import IMPLEMENTATION, scan

CHANNELS = ("orders", "mail", "audit")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long producers put (10)")
    parser.add_argument("--producers", type=int, default=2, help="producer processes (2)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (200)")
    parser.add_argument("--sync", action="store_true", help="fsync every put")
    parser.add_argument("--keep", action="store_true", help="keep the spool and store")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: dropr-server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("demo: dropr-server did not become healthy")


def produce(spool: str, peer: str, size: int, sync: bool, until: float, counter: object) -> None:
    payload = os.urandom(size // 2).hex().encode()[:size].ljust(size, b".")
    put = dropr.fastput
    done = 0
    while time.monotonic() < until:
        for n in range(100):
            put(payload, peer, CHANNELS[n % 3], n % 10, spool=spool, sync=sync)
        done += 100
    with counter.get_lock():  # type: ignore[attr-defined]
        counter.value += done  # type: ignore[attr-defined]


def stored(store: dropr.Store) -> int:
    return sum(store.count_queued(channel) for channel in store.channels())


def spooled(spool: Path) -> int:
    return scan.count_queue(str(spool / "queue")) if (spool / "queue").is_dir() else 0


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="dropr-demo-"))
    spool, store_dir = work / "spool", work / "store"
    port = free_port()
    peer = f"http://127.0.0.1:{port}/"
    python = sys.executable
    print(
        f"dropr demo ({IMPLEMENTATION} hot path): {args.producers} producers, "
        f"{args.size}-byte messages, sync={'on' if args.sync else 'off'}, {args.seconds:g} s"
    )
    print(f"  spool {spool}\n  store {store_dir}\n  peer  {peer}")
    server = subprocess.Popen(
        [
            python,
            "-m",
            "dropr.cli.server",
            "--store",
            str(store_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
    )
    relay = None
    try:
        wait_healthy(peer, server)
        relay = subprocess.Popen([python, "-m", "dropr.cli.relay", "--spool", str(spool), "--log-level", "warning"])
        store = dropr.Store(str(store_dir))
        counter = multiprocessing.Value("q", 0)
        start = time.monotonic()
        until = start + args.seconds
        producers = [
            multiprocessing.Process(target=produce, args=(str(spool), peer, args.size, args.sync, until, counter))
            for _ in range(args.producers)
        ]
        for proc in producers:
            proc.start()
        last = 0
        while any(proc.is_alive() for proc in producers):
            time.sleep(1.0)
            now_stored = stored(store)
            elapsed = time.monotonic() - start
            print(
                f"  {elapsed:5.1f} s  spooled {spooled(spool):>8,}  stored {now_stored:>9,}  ({now_stored - last:,}/s)",
                flush=True,
            )
            last = now_stored
        for proc in producers:
            proc.join()
        put_seconds = time.monotonic() - start
        total = counter.value
        deadline = time.monotonic() + 120
        while stored(store) < total and time.monotonic() < deadline:
            if relay.poll() is not None:
                raise SystemExit(f"demo: dropr-relay exited with status {relay.returncode}")
            time.sleep(0.05)
        flow_seconds = time.monotonic() - start
        held = stored(store)
        print(f"put {total:,} messages in {put_seconds:.1f} s: {total / put_seconds:,.0f} msg/s")
        print(f"stored {held:,} on the server after {flow_seconds:.1f} s: {held / flow_seconds:,.0f} msg/s end to end")
        if held != total:
            print(f"demo: {total - held:,} messages did not arrive", file=sys.stderr)
            return 1
        print("every message arrived, stored once.")
        return 0
    finally:
        for proc in (relay, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
