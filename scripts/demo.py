"""dropr's main job on loopback: producers -> spool -> dropr-relay -> HTTP -> dropr-server ->
store -> consumers over HTTP.

Starts a server and a relay in fresh temporary directories, runs producer processes calling
``dropr.fastput`` for a while and consumer processes taking the messages from the server
with ``dropr.RemoteStore`` (claim, read, processed), shows the flow once a second until
every message is stored and processed, checks the store holds each one once, processed,
prints the rates, then stops the relay and the server and removes what it made, saying so
as it goes. Ctrl-C (or SIGTERM, SIGHUP) stops it at any
point: the children are stopped and the directories removed (a second Ctrl-C leaves them),
exit status 130.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dropr
from dropr._files import remove_all
from dropr._impl import IMPLEMENTATION, scan

CHANNELS = ("orders", "mail", "audit")
DRAIN_TIMEOUT = 120.0
CLAIM_LIMIT = 500
CLAIM_WAIT = 0.2
"""Seconds a consumer's claim waits on a channel with nothing ready (a long poll)."""
STOP_TIMEOUT = 10.0
REMOVE_CHUNK = 10_000
"""Files removed between two looks at the clock."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long producers put (10)")
    parser.add_argument("--producers", type=int, default=2, help="producer processes (2)")
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes, over HTTP (2)")
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


def produce(spool: str, peer: str, size: int, sync: bool, until: float, stop: Any, counter: Any) -> None:
    """A producer process: puts until ``until`` or ``stop``."""
    payload = os.urandom(size // 2).hex().encode()[:size].ljust(size, b".")
    put = dropr.fastput
    done = 0
    while time.monotonic() < until and not stop.is_set():
        for n in range(100):
            put(payload, peer, CHANNELS[n % 3], n % 10, spool=spool, sync=sync)
        done += 100
    with counter.get_lock():
        counter.value += done


def consume(url: str, stop: Any, counter: Any) -> None:
    """A consumer process: claims, reads and marks processed over HTTP until ``stop``."""
    remote = dropr.RemoteStore(url)
    while not stop.is_set():
        done = 0
        for channel in CHANNELS:
            messages = remote.claim(channel, CLAIM_LIMIT, lease=60, wait=0 if done else CLAIM_WAIT)
            for message in messages:
                message.read()
            if messages:
                remote.set_processed(*messages)
                done += len(messages)
        with counter.get_lock():
            counter.value += done


def held(store: dropr.Store) -> tuple[int, int]:
    """The messages the store holds in any state, and those of them processed."""
    counts = [store.counts(channel) for channel in store.channels()]
    return sum(sum(c.values()) for c in counts), sum(c["processed"] for c in counts)


def spooled(spool: Path) -> int:
    return scan.count_queue(str(spool / "queue")) if (spool / "queue").is_dir() else 0


def every_second() -> Iterator[float]:
    """Yields the seconds since the first call, once a second."""
    start = time.monotonic()
    tick = start
    while True:
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
        yield time.monotonic() - start


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def interrupt(signum: int, frame: object) -> None:
    """Each stop signal stops the demo as Ctrl-C does: its children do not outlive it. SIGINT
    too, even where it came in ignored (a shell's ``./scripts/demo &`` ignores it, and Python
    then leaves ``kill -INT`` without effect)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def no_interrupt() -> Iterator[None]:
    """The stop signals are ignored inside, and by the processes started inside (an ignored
    signal stays ignored in a child)."""
    previous = [signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS]
    try:
        yield
    finally:
        for signum, handler in zip(STOP_SIGNALS, previous, strict=True):
            signal.signal(signum, handler)


class Demo:
    """The processes of one run and the directory they work in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="dropr-demo-"))
        self.spool, self.store_dir = self.work / "spool", self.work / "store"
        self.port = free_port()
        self.peer = f"http://127.0.0.1:{self.port}/"
        self.children: list[subprocess.Popen[bytes]] = []
        self.producers: list[multiprocessing.Process] = []
        self.consumers: list[multiprocessing.Process] = []
        self.stop = multiprocessing.Event()
        self.counter = multiprocessing.Value("q", 0)
        self.processed = multiprocessing.Value("q", 0)

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        """Start a child in a session of its own: a Ctrl-C reaches the demo alone, which stops it in order."""
        child = subprocess.Popen([sys.executable, "-m", *command], stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append(child)
        return child

    def run(self) -> int:
        args = self.args
        print(
            f"dropr demo ({IMPLEMENTATION} hot path): {args.producers} producers, {args.consumers} consumers, "
            f"{args.size}-byte messages, sync={'on' if args.sync else 'off'}, {args.seconds:g} s"
        )
        print(f"  spool {self.spool}\n  store {self.store_dir}\n  peer  {self.peer}", flush=True)
        server = self.start("dropr.cli.server", "--store", str(self.store_dir), "--listen", f"127.0.0.1:{self.port}",
                            "--log-level", "warning")  # fmt: skip
        wait_healthy(self.peer, server)
        relay = self.start("dropr.cli.relay", "--spool", str(self.spool), "--log-level", "warning")
        store = dropr.Store(str(self.store_dir))
        until = time.monotonic() + args.seconds
        produce_args = (str(self.spool), self.peer, args.size, args.sync, until, self.stop, self.counter)
        self.producers = [multiprocessing.Process(target=produce, args=produce_args) for _ in range(args.producers)]
        self.consumers = [
            multiprocessing.Process(target=consume, args=(self.peer, self.stop, self.processed))
            for _ in range(args.consumers)
        ]
        with no_interrupt():  # a Ctrl-C is the demo's to handle: it stops them
            for proc in self.producers + self.consumers:
                proc.start()
        last = 0
        stored_at = 0.0
        for elapsed in every_second():
            now_stored, now_processed = held(store)
            putting = any(proc.is_alive() for proc in self.producers)
            phase = "putting " if putting else "draining"
            print(  # the line and its end in one write: a Ctrl-C cannot fall between them
                f"  {elapsed:5.1f} s  {phase}  spooled {spooled(self.spool):>9,}  stored {now_stored:>9,}"
                f"  processed {now_processed:>9,}  ({now_processed - last:,}/s)\n",
                end="",
                flush=True,
            )
            last = now_processed
            if putting:
                continue
            if now_stored >= self.counter.value and not stored_at:
                stored_at = elapsed
            done = now_processed >= self.counter.value or not self.consumers
            if (stored_at and done) or elapsed > args.seconds + DRAIN_TIMEOUT:
                break
            if relay.poll() is not None:
                raise SystemExit(f"demo: dropr-relay exited with status {relay.returncode}")
            if self.consumers and not any(proc.is_alive() for proc in self.consumers):
                raise SystemExit("demo: every consumer exited")
        for proc in self.producers:
            proc.join()
        total, (kept, processed) = self.counter.value, held(store)
        print(f"put {total:,} messages in {args.seconds:g} s: {total / args.seconds:,.0f} msg/s")
        print(f"stored {kept:,} on the server after {stored_at or elapsed:.1f} s: "
              f"{kept / (stored_at or elapsed):,.0f} msg/s end to end")  # fmt: skip
        if self.consumers:
            print(f"processed {processed:,} by {len(self.consumers)} consumers over HTTP after {elapsed:.1f} s: "
                  f"{processed / elapsed:,.0f} msg/s")  # fmt: skip
        if kept != total:
            print(f"demo: {total - kept:,} messages did not arrive", file=sys.stderr)
            return 1
        if self.consumers and (processed != total or self.processed.value != total):
            print(f"demo: {total - processed:,} messages were not processed", file=sys.stderr)
            return 1
        print("every message arrived, stored once" + (", processed once." if self.consumers else "."), flush=True)
        return 0

    def close(self) -> None:
        """Stop the producers and the children (Ctrl-C cannot cut that short, it would leave
        them running), then remove the directories (unless --keep)."""
        with no_interrupt():
            self.stop.set()
            for proc in self.producers + self.consumers:  # the consumers while the server answers
                proc.join()
            running = [child for child in self.children if child.poll() is None]
            if running:
                print("stopping the relay and the server", flush=True)
            for child in reversed(running):  # the relay first, while its server still answers
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if self.args.keep:
            print(f"kept {self.work}")
            return
        remove_tree(self.work)


def remove_tree(top: Path) -> None:
    """Remove ``top`` and everything in it, with the count of files removed once a second."""
    print(f"removing {top}", flush=True)
    removed = 0
    shown = time.monotonic()
    for directory, _, files in os.walk(top, topdown=False):
        for start in range(0, len(files), REMOVE_CHUNK):
            removed += remove_all([os.path.join(directory, name) for name in files[start : start + REMOVE_CHUNK]])
            if time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                print(f"  {removed:,} files removed", flush=True)
    shutil.rmtree(top, ignore_errors=True)
    print(f"removed {removed:,} files", flush=True)


def main() -> int:
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)
    demo = Demo(parse_args())
    status = 130
    try:
        status = demo.run()
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping", flush=True)
    try:
        demo.close()
    except KeyboardInterrupt:
        print(f"\ndemo: interrupted again; left {demo.work}", flush=True)
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
