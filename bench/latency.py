"""Put -> stored latency through an idle relay: one message at a time, p50 and p99.

A server and a relay run; the benchmark puts single messages, a few milliseconds apart so
the relay is idle each time, and times with inotify (no polling) when the message appears
in the store's channel queue ("stored") and when the relay took it out of the spool's queue
after the server's acknowledgement ("acked"; the benchmark watches the queue bucket each put
goes into, made beforehand). Target: stored p99 <= 20 ms. ``--local`` measures
the file:// transport instead of HTTP.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import start_server

import dropr
from dropr import _inotify
from dropr._impl import IMPLEMENTATION, scan
from dropr.relay import inotify

CHANNEL = "latency"
PRIORITY = 5


def wait_event(watch: _inotify.Inotify, timeout: float = 10.0) -> float:
    """The time at which ``watch`` next reports something about an entry."""
    while True:
        ready, _, _ = select.select([watch.fd], [], [], timeout)
        if not ready:
            raise TimeoutError("no event")
        now = time.perf_counter()
        if any(event.name for event in watch.events() or ()):
            return now


class Departures:
    """Watches the buckets of a spool's queue that puts from now on go into, for files leaving."""

    def __init__(self, queue_dir: str) -> None:
        fd = _inotify.create()
        assert fd is not None, "inotify is needed"
        self.watch = _inotify.Inotify(fd)
        self._queue_dir = queue_dir
        self._watched: set[str] = set()

    def prepare(self) -> None:
        """Watch the bucket a put made now (or a moment later) goes into, made if missing."""
        now_ns = time.time_ns()
        for when in (now_ns, now_ns + 100_000_000):
            bucket = f"{PRIORITY}{when >> 32:08x}"  # a bucket: the priority and the id's first 8 digits
            if bucket not in self._watched:
                path = os.path.join(self._queue_dir, bucket)
                os.makedirs(path, exist_ok=True)
                self.watch.add(path, _inotify.IN_DELETE | _inotify.IN_MOVED_FROM)
                self._watched.add(bucket)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--local", action="store_true", help="the file:// transport instead of HTTP")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dropr-latency-")
    spool = os.path.join(root, "spool")
    store = os.path.join(root, "store")
    server = None if args.local else start_server(store)
    peer = "file://" + store if server is None else server.url
    relay = subprocess.Popen(
        [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise"],
        stderr=subprocess.DEVNULL,
    )
    client = dropr.Client(spool)
    try:
        client.put(b"warm-up", peer=peer, channel=CHANNEL)
        store_queue = os.path.join(store, "channels", CHANNEL, "queue")
        deadline = time.monotonic() + 30
        while not os.path.isdir(store_queue):
            if time.monotonic() > deadline:
                raise RuntimeError("the relay delivers nothing")
            time.sleep(0.01)
        arrivals = inotify.watch(store_queue)
        departures = Departures(client.spool.queue_dir)
        assert arrivals is not None
        while scan.count_queue(client.spool.queue_dir):
            time.sleep(0.01)
        stored: list[float] = []
        acked: list[float] = []
        payload = os.urandom(200)
        for _ in range(args.count):
            time.sleep(random.uniform(0.002, 0.01))
            departures.prepare()
            start = time.perf_counter()
            client.put(payload, peer=peer, channel=CHANNEL, priority=PRIORITY)
            stored.append(wait_event(arrivals) - start)
            acked.append(wait_event(departures.watch) - start)
    finally:
        client.close()
        relay.terminate()
        relay.wait(30)
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.count} single messages of 200 bytes, {'local transport' if args.local else 'HTTP on loopback'}, "
          f"idle relay, hot path {IMPLEMENTATION}")  # fmt: skip
    for label, values in (("put -> stored", stored), ("put -> acked", acked)):
        ms = [v * 1000 for v in values]
        print(f"{label}: p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
              f"max {max(ms):.2f} ms" + ("  (target p99 <= 20 ms)" if label == "put -> stored" else ""))  # fmt: skip


if __name__ == "__main__":
    main()
