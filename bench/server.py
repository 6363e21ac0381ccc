"""The server alone: how many messages a second ``dropr-server`` takes in over loopback.

A real ``dropr-server`` process on 127.0.0.1 with a fresh store in the system's temporary
directory; this process posts batches (default 1000 messages of 200 bytes) on one
keep-alive connection with pycurl, the messages one after another in one part as the relay
sends small ones (``--parts``: a part each, as the manifest also allows), each part a buffer
libcurl already holds, so the client's share of the time is small; ``--clients N`` posts N batches at a time on N
connections (a thread each), as several relays do. Every batch has fresh ids and must be
acked ``stored`` in full. Per round it prints the rate (messages over the time spent
posting) and the server's CPU time per message (user + system, from ``/proc``), of which
user time is the figure the server's per-part code decides (system time is mostly the file
system's); the last lines give the medians, with each request's latency (post to ack, seen
by the client) at p50/p99 over every round: with ``--count 1`` that is the put-to-stored
latency of a lone message.

``--baseline SRC`` runs a second server from another source tree (say, a checkout of an
earlier commit, extensions built) beside this tree's, each on a store of its own, the two
taking turns step by step (N batches to one, then N to the other, the order alternating),
so both see the same load of a shared machine; the last line is then the median of the
per-round ratios, this tree's over the baseline's. ``--shapes`` runs two servers of this
tree so instead, one posted joined batches and the other a part per message.

    python bench/server.py [--rounds 3] [--batches 20] [--count 1000] [--size 200]
                           [--clients 1] [--fsync batch|none] [--dir DIR] [--parts]
                           [--baseline SRC | --shapes]
"""

from __future__ import annotations

import argparse
import contextlib
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
from dropr.relay.batches import JOINED_PART as JOINED

# HTTPPOST still works and keeps the client cheap: libcurl takes each part's buffer as is.
warnings.filterwarnings("ignore", "HTTPPOST is deprecated", DeprecationWarning)

CLIENT = "bench"
TICK = os.sysconf("SC_CLK_TCK")

Form = list[tuple[str, object]]


def make_batch(count: int, size: int, parts: bool) -> tuple[list[str], Form]:
    """Fresh ids and the ``HTTPPOST`` form of one batch (client, manifest, file parts): the
    messages joined in one part, or with ``parts`` a part each."""
    ids = [codec.new_id() for _ in range(count)]
    payloads = [os.urandom(size) for _ in range(count)]
    if parts:
        entries = [[i, "bench", 5, i, size, zlib.crc32(data)] for i, data in zip(ids, payloads, strict=True)]
        files = [
            (i, (pycurl.FORM_BUFFER, i, pycurl.FORM_BUFFERPTR, data)) for i, data in zip(ids, payloads, strict=True)
        ]
    else:
        entries = [
            [i, "bench", 5, JOINED, size, zlib.crc32(data), n * size]
            for n, (i, data) in enumerate(zip(ids, payloads, strict=True))
        ]
        files = [(JOINED, (pycurl.FORM_BUFFER, JOINED, pycurl.FORM_BUFFERPTR, b"".join(payloads)))]
    manifest = msgpack.packb(entries)
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
    return ids, form + files


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def connection(server: ServerProcess) -> pycurl.Curl:
    """A keep-alive connection to ``server``."""
    curl = pycurl.Curl()
    curl.setopt(pycurl.URL, server.url)
    curl.setopt(pycurl.HTTPHEADER, ["Expect:"])
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.TIMEOUT, 120)
    return curl


def post(curl: pycurl.Curl, ids: list[str], form: Form) -> float:
    """Post one batch; the seconds from send to ack."""
    body = BytesIO()
    curl.setopt(pycurl.WRITEDATA, body)
    curl.setopt(pycurl.HTTPPOST, form)
    started = time.perf_counter()
    curl.perform()
    seconds = time.perf_counter() - started
    status = curl.getinfo(pycurl.RESPONSE_CODE)
    if status != 200:
        raise SystemExit(f"server answered {status}: {body.getvalue()!r}")
    acks = msgpack.unpackb(body.getvalue())
    if len(acks) != len(ids) or any(a[0] != "stored" for a in acks.values()):
        raise SystemExit(f"not all stored: {list(acks.items())[:3]}")
    return seconds


class Poster:
    """Posts to one server on ``clients`` connections, and sums what a round cost it."""

    def __init__(self, server: ServerProcess, clients: int) -> None:
        self.server = server
        self.curls = [connection(server) for _ in range(clients)]
        self.latencies: list[float] = []
        self.start_round()

    def start_round(self) -> None:
        self.messages = 0
        self.seconds = 0.0
        self._cpu_at_start = cpu_seconds(self.server.proc.pid)

    def post(self, batches: list[tuple[list[str], Form]]) -> None:
        """Post one batch on each connection at once (on threads when there are several)."""
        latencies: list[float] = []
        failures: list[BaseException] = []

        def send(curl: pycurl.Curl, ids: list[str], form: Form) -> None:
            try:
                latencies.append(post(curl, ids, form))
            except BaseException as exc:
                failures.append(exc)

        started = time.perf_counter()
        if len(batches) == 1:
            send(self.curls[0], *batches[0])
        else:
            threads = [threading.Thread(target=send, args=(c, *b)) for c, b in zip(self.curls, batches, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.seconds += time.perf_counter() - started
        if failures:
            raise failures[0]
        self.latencies += latencies
        self.messages += sum(len(ids) for ids, _ in batches)

    def end_round(self) -> tuple[float, float, float]:
        """The round's messages a second, and CPU (user + system, user) us per message;
        the server does nothing while the other one is posted to."""
        (user0, sys0), (user1, sys1) = self._cpu_at_start, cpu_seconds(self.server.proc.pid)
        user = (user1 - user0) / self.messages * 1e6
        return self.messages / self.seconds, user + (sys1 - sys0) / self.messages * 1e6, user

    def close(self) -> None:
        for curl in self.curls:
            curl.close()


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
    parser.add_argument("--parts", action="store_true", help="a part per message, not the messages joined in one")
    compared = parser.add_mutually_exclusive_group()
    compared.add_argument("--baseline", metavar="SRC", help="also run the server of this source tree, in turns")
    compared.add_argument("--shapes", action="store_true", help="joined batches to one server, parts to another")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="dropr-bench-server-", dir=args.dir)
    extra = ["--fsync", args.fsync]
    figures: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            first = "joined" if args.shapes else "this"
            servers = {first: stack.enter_context(start_server(os.path.join(work, first), extra_args=extra))}
            parts = {first: args.parts and not args.shapes, "baseline": args.parts, "parts": True}
            if args.shapes:
                servers["parts"] = stack.enter_context(start_server(os.path.join(work, "parts"), extra_args=extra))
            if args.baseline:
                env = {k: v for k, v in os.environ.items() if k != "DROPR_TOKEN"}
                env["PYTHONPATH"] = os.path.abspath(args.baseline)
                env["PYTHONSAFEPATH"] = "1"  # run from this tree, its cwd must not come first
                baseline = start_server(os.path.join(work, "baseline"), extra_args=extra, env=env)
                servers["baseline"] = stack.enter_context(baseline)
            posters = {name: Poster(srv, args.clients) for name, srv in servers.items()}
            for name, poster in posters.items():
                stack.callback(poster.close)
                poster.post([make_batch(args.count, args.size, parts[name]) for _ in range(args.clients)])  # warm up
                poster.latencies.clear()
            for round_no in range(1, args.rounds + 1):
                for poster in posters.values():
                    poster.start_round()
                for step in range(max(1, args.batches // args.clients)):
                    turns = list(posters.items())
                    for name, poster in turns if step % 2 == 0 else turns[::-1]:
                        poster.post([make_batch(args.count, args.size, parts[name]) for _ in range(args.clients)])
                line = []
                for name, poster in posters.items():
                    figures.setdefault(name, []).append(poster.end_round())
                    rate, cpu, user = figures[name][-1]
                    line.append(f"{name} {rate:,.0f} msg/s, server CPU {cpu:.0f} us/message ({user:.0f} user)")
                print(f"round {round_no}: " + "; ".join(line), flush=True)
            for srv in servers.values():
                srv.stop()
            latencies = {name: poster.latencies for name, poster in posters.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shape = "a part per message" if args.parts else "joined"
    settings = f"{args.count} x {args.size} B per batch, {args.clients} at once, fsync {args.fsync}"
    for name, rounds in figures.items():
        rate, cpu, user = (statistics.median(column) for column in zip(*rounds, strict=True))
        print(
            f"median{'' if name == 'this' else ' ' + name}: {rate:,.0f} msg/s, server CPU {cpu:.0f} us/message "
            f"({user:.0f} user); request latency p50 {_percentile(latencies[name], 50):.2f} ms, "
            f"p99 {_percentile(latencies[name], 99):.2f} ms ({settings}{'' if args.shapes else ', ' + shape})"
        )
    if len(figures) == 2:
        (one, ones), (other, others) = figures.items()
        ratios = [(t[0] / b[0], t[1] / b[1]) for t, b in zip(ones, others, strict=True)]
        print(
            f"{one} / {other}: rate {statistics.median(r for r, _ in ratios):.3f} "
            f"(per round {', '.join(f'{r:.2f}' for r, _ in ratios)}), "
            f"CPU per message {statistics.median(c for _, c in ratios):.3f}"
        )


def _percentile(seconds: list[float], percent: int) -> float:
    """The ``percent``-th percentile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, len(ordered) * percent // 100)] * 1e3


if __name__ == "__main__":
    main()
