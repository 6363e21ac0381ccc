"""Put -> stored latency through an idle relay: one message at a time, p50 and p99.

A server and a relay run; the benchmark puts single messages, a few milliseconds apart so
the relay is idle each time, and times with inotify (no polling) when the message appears
in the store's channel queue ("stored") and when the relay moved it to the spool's sent/ after
the server's acknowledgement ("acked"). Target: stored p99 <= 20 ms. ``--local`` measures
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


def wait_event(watch: inotify.Watch, timeout: float = 10.0) -> float:
    """The time at which ``watch`` next reports something."""
    while True:
        ready, _, _ = select.select([watch.fd], [], [], timeout)
        if not ready:
            raise TimeoutError("no event")
        now = time.perf_counter()
        if watch.read() != []:
            return now


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
        removals = inotify.watch(client.spool.sent_dir, _inotify.IN_MOVED_TO)  # acknowledged files move there
        assert arrivals is not None and removals is not None
        while scan.count_queue(client.spool.queue_dir):
            time.sleep(0.01)
        removals.read()
        stored: list[float] = []
        acked: list[float] = []
        payload = os.urandom(200)
        for _ in range(args.count):
            time.sleep(random.uniform(0.002, 0.01))
            start = time.perf_counter()
            client.put(payload, peer=peer, channel=CHANNEL)
            stored.append(wait_event(arrivals) - start)
            acked.append(wait_event(removals) - start)
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
