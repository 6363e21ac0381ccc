"""The server alone: how many messages a second ``dropr-server`` takes in over loopback.

A real ``dropr-server`` process on 127.0.0.1 with a fresh store in the system's temporary
directory; this process posts batches (default 1000 messages of 200 bytes) one after the
other on one keep-alive connection with pycurl, each part a buffer libcurl already holds,
so the client's share of the time is small; ``--clients N`` posts on N connections at once
(a thread each), as several relays do. Every batch has fresh ids and must be acked
``stored`` in full. Per round it prints the wall-clock rate and the server's CPU time per
message (user + system, from ``/proc``), of which user time is the figure the server's
per-part code decides (system time is mostly the file system's); the last line gives the
medians, with each request's latency (post to ack, seen by the client) at p50/p99 over
every round: with ``--count 1`` that is the put-to-stored latency of a lone message.

    python bench/server.py [--rounds 3] [--batches 20] [--count 1000] [--size 200]
                           [--clients 1] [--fsync batch|none] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
import zlib
from io import BytesIO

import msgpack
import pycurl

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import ServerProcess, start_server

from dropr._impl import codec

# HTTPPOST still works and keeps the client cheap: libcurl takes each part's buffer as is.
warnings.filterwarnings("ignore", "HTTPPOST is deprecated", DeprecationWarning)

CLIENT = "bench"
TICK = os.sysconf("SC_CLK_TCK")

Form = list[tuple[str, object]]


def make_batch(count: int, size: int) -> tuple[list[str], Form]:
    """Fresh ids and the ``HTTPPOST`` form of one batch (client, manifest, file parts)."""
    ids = [codec.new_id() for _ in range(count)]
    payloads = [os.urandom(size) for _ in range(count)]
    manifest = msgpack.packb(
        [[i, "bench", 5, i, size, zlib.crc32(data)] for i, data in zip(ids, payloads, strict=True)]
    )
    form: Form = [
        ("client", CLIENT),
        (
            "manifest",
            (
                pycurl.FORM_BUFFER,
                "manifest",
                pycurl.FORM_BUFFERPTR,
                manifest,
                pycurl.FORM_CONTENTTYPE,
                "application/msgpack",
            ),
        ),
    ]
    form += [(i, (pycurl.FORM_BUFFER, i, pycurl.FORM_BUFFERPTR, data)) for i, data in zip(ids, payloads, strict=True)]
    return ids, form


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def post_all(server: ServerProcess, batches: list[tuple[list[str], Form]]) -> list[float]:
    """Post the batches one after the other; each request's seconds from send to ack."""
    latencies = []
    curl = pycurl.Curl()
    curl.setopt(pycurl.URL, server.url)
    curl.setopt(pycurl.HTTPHEADER, ["Expect:"])
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.TIMEOUT, 120)
    try:
        for ids, form in batches:
            body = BytesIO()
            curl.setopt(pycurl.WRITEDATA, body)
            curl.setopt(pycurl.HTTPPOST, form)
            started = time.perf_counter()
            curl.perform()
            latencies.append(time.perf_counter() - started)
            status = curl.getinfo(pycurl.RESPONSE_CODE)
            if status != 200:
                raise SystemExit(f"server answered {status}: {body.getvalue()!r}")
            acks = msgpack.unpackb(body.getvalue())
            if len(acks) != len(ids) or any(a[0] != "stored" for a in acks.values()):
                raise SystemExit(f"not all stored: {list(acks.items())[:3]}")
    finally:
        curl.close()
    return latencies


def post_at_once(server: ServerProcess, batches: list[tuple[list[str], Form]], clients: int) -> list[float]:
    """Post the batches on ``clients`` connections at once, each its share in order."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            latencies[index] = post_all(server, batches[index::clients])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return [seconds for share in latencies for seconds in share]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="batches per round")
    parser.add_argument("--count", type=int, default=1000, help="messages per batch")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--clients", type=int, default=1, help="connections posting at once")
    parser.add_argument("--fsync", choices=("batch", "none"), default="batch")
    parser.add_argument(
        "--dir",
        default=None,
        help="where the store goes (default: the system's temporary directory; a tmpfs such "
        "as /dev/shm leaves out the file system and shows the server's own cost)",
    )
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="dropr-bench-server-", dir=args.dir)
    rates, cpus, users, latencies = [], [], [], []
    try:
        with start_server(os.path.join(work, "store"), extra_args=["--fsync", args.fsync]) as srv:
            post_all(srv, [make_batch(args.count, args.size)])  # warm up
            for round_no in range(1, args.rounds + 1):
                batches = [make_batch(args.count, args.size) for _ in range(args.batches)]
                messages = args.batches * args.count
                (user0, sys0), t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
                latencies += post_at_once(srv, batches, args.clients)
                wall = time.perf_counter() - t0
                user1, sys1 = cpu_seconds(srv.proc.pid)
                rates.append(messages / wall)
                users.append((user1 - user0) / messages * 1e6)
                cpus.append(users[-1] + (sys1 - sys0) / messages * 1e6)
                print(
                    f"round {round_no}: {messages} messages in {wall:.2f} s = "
                    f"{rates[-1]:,.0f} msg/s; server CPU {cpus[-1]:.0f} us/message "
                    f"({users[-1]:.0f} user)"
                )
            srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"median: {statistics.median(rates):,.0f} msg/s, server CPU "
        f"{statistics.median(cpus):.0f} us/message ({statistics.median(users):.0f} user); "
        f"request latency p50 {_percentile(latencies, 50):.2f} ms, "
        f"p99 {_percentile(latencies, 99):.2f} ms "
        f"({args.count} x {args.size} B per batch, {args.clients} at once, fsync {args.fsync})"
    )


def _percentile(seconds: list[float], percent: int) -> float:
    """The ``percent``-th percentile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, len(ordered) * percent // 100)] * 1e3


if __name__ == "__main__":
    main()
