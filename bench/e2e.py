"""End to end: fastput -> relay -> HTTP on loopback -> server store -> ack, against a C floor.

A dropr cell: a fresh server (``--fsync batch``, its default) and a running relay that has
sent one message already (its peer's connection made); a producer process fastputs N
messages of SIZE bytes; the cell's time runs from the first put until the relay has removed
the last acknowledged file from the spool's queue. The same again over the local transport
(``file://`` peer, no server), and to NATS JetStream: a fresh local cluster of three
``nats-server`` nodes with a stream of three replicas for ``dropr.>`` (``nats``), and the
relay alone to such a cluster, the N messages appearing in its queue at once
(``nats-queued``: put beforehand into another spool whose buckets are renamed into place).
Beside them, the engine's own ceiling: nats-py publishing the same messages (same subject,
same headers) to a fresh cluster just like it, with acknowledgements (``publish_async``, up
to 4000 in flight, all awaited), no files involved. The JetStream figure that counts is the
median of the per-round ratios relay alone / ceiling (target: at least 0.5); the end-to-end
one is printed beside it. ``--no-nats`` leaves these out (as does a machine without
``nats-server`` or nats-py).

The C floor is the pipeline's (``bench/_stages.py``) without its consumer: a producer, a
forwarder (with its sweepers) and a receiver, at once, doing the same file operations per
message and per batch as fastput, the relay and the server; its time runs from the first
create until the forwarder has moved the last file out of its queue.

Cells alternate (floor, HTTP, local, floor, ...), each in a fresh random work directory
with ``sync`` between cells; the figures that count are the medians of the per-round
ratios (target: HTTP at least 0.5 of the floor). The table at the end sets today's rates
beside the figures the PHP project published.

``--long N`` instead sets long runs beside short ones in the same rounds (floor short,
floor long, HTTP short, HTTP long): N messages flowing (at least 200000 for the figure that
counts), files created and removed all along, against ``--count``; the figure is the
median of the per-round ratios long / short (target: at least 0.8), for dropr over HTTP and,
to show what the file system itself does, for the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _floor import build_floor
from _stages import FRESH, PIPELINE_FLOOR, PRODUCER, floor_dirs, floor_stages, free_port, fresh, relay_running
from natskit import Cluster
from support import start_server

import dropr
from dropr._impl import IMPLEMENTATION, scan

PHP_FIGURES = [
    ("end to end over HTTP (PHP, published)", "150; 200-250", "http"),
    ("local transport (PHP, published)", "3000", "local"),
]


def floor_cell(binary: str, root: str, count: int, size: int, batch: int, parallel: int) -> float:
    d = floor_dirs(fresh(root))
    port = str(free_port())

    with floor_stages(binary) as run:
        receiver = run("receive", port, d["stage"], d["store"], str(count), "1")
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        forwarder = run(
            "forward", d["queue"], d["sent"], d["free"], port, str(count), str(batch), str(parallel), "1", FRESH
        )
        producer = run("produce", d["tmp"], d["queue"], d["free"], str(count), str(size), "0", "1")
        assert producer.stdout is not None and forwarder.stdout is not None
        started = float(producer.stdout.readline())
        ended = float(forwarder.stdout.readline())
    return count / (ended - started)


def dropr_cell(root: str, count: int, size: int, transport: str, relay_args: list[str], queued: bool = False) -> float:
    cell = fresh(root)
    store = os.path.join(cell, "store")
    if transport == "nats":
        with Cluster(Path(cell) / "nats") as cluster:
            cluster.add_stream(replicas=3)
            return relay_cell(cell, cluster.url, count, size, relay_args, queued)
    if transport == "local":
        return relay_cell(cell, "file://" + store, count, size, relay_args, queued)
    server = start_server(store)
    try:
        return relay_cell(cell, server.url, count, size, relay_args, queued)
    finally:
        server.close()


def relay_cell(cell: str, peer: str, count: int, size: int, relay_args: list[str], queued: bool) -> float:
    """Msg/s from the first put until the relay has moved the last message out of the queue;
    with ``queued``, from the moment all ``count`` messages appear in the queue at once (put
    beforehand into another spool, whose buckets are then renamed into this one's queue).
    Either way one message goes first, so that the relay has made its peer's connection."""
    spool = os.path.join(cell, "spool")
    queue = os.path.join(spool, "queue")
    with relay_running(cell, spool, relay_args):
        with dropr.Client(spool) as client:
            client.put(b"first", peer=peer, priority=0)  # a bucket of its own, apart from the cell's
        while scan.count_queue(queue):
            time.sleep(0.002)
        if queued:
            stage = os.path.join(cell, "stage")
            subprocess.run([sys.executable, "-c", PRODUCER, stage, peer, str(count), str(size), "0", "1"],
                           stdout=subprocess.DEVNULL, check=True)  # fmt: skip
            for name in os.listdir(os.path.join(stage, "names")):
                shutil.copy(os.path.join(stage, "names", name), os.path.join(spool, "names", name))
            started = time.monotonic()
            for bucket in sorted(os.listdir(os.path.join(stage, "queue"))):
                os.rename(os.path.join(stage, "queue", bucket), os.path.join(queue, bucket))
            while scan.count_queue(queue):
                time.sleep(0.002)
            ended = time.monotonic()
        else:
            producer = subprocess.Popen(
                [sys.executable, "-c", PRODUCER, spool, peer, str(count), str(size), "0", "1"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert producer.stdout is not None
            started = float(producer.stdout.readline())
            while producer.poll() is None or scan.count_queue(queue):
                time.sleep(0.002)
            ended = time.monotonic()
            if producer.returncode:
                raise RuntimeError("producer failed")
    return count / (ended - started)


def ceiling_cell(root: str, count: int, size: int) -> float:
    """Msg/s of nats-py publishing ``count`` messages with acknowledgements to a fresh cluster."""
    cell = fresh(root)
    with Cluster(Path(cell) / "nats") as cluster:
        cluster.add_stream(replicas=3)
        return asyncio.run(publish_directly(cluster.servers(), count, size))


async def publish_directly(servers: list[str], count: int, size: int) -> float:
    import nats

    nc = await nats.connect(servers=servers)
    try:
        js = nc.jetstream(timeout=60)
        payload = os.urandom(size)
        started = time.monotonic()
        acks = []
        for i in range(count):
            msg_id = f"{time.time_ns():016x}{i:014x}"
            headers = {
                "Nats-Msg-Id": f"bench:{msg_id}", "Dropr-Client": "bench", "Dropr-Id": msg_id,
                "Dropr-Channel": "common", "Dropr-Priority": "9", "Dropr-Time": f"{time.time():.6f}",
            }  # fmt: skip
            acks.append(await js.publish_async("dropr.common", payload, headers=headers))
        await asyncio.gather(*acks)
        return count / (time.monotonic() - started)
    finally:
        await nc.close()


def compare_long(args: argparse.Namespace, binary: str, root: str, relay_args: list[str]) -> None:
    cells = {
        "floor": lambda count: floor_cell(binary, root, count, args.size, args.batch_count, args.parallel),
        "http": lambda count: dropr_cell(root, count, args.size, "http", relay_args),
    }
    ratios: dict[str, list[float]] = {kind: [] for kind in cells}
    for round_no in range(args.rounds):
        line = []
        for kind, cell in cells.items():
            short, long = cell(args.count), cell(args.long)
            ratios[kind].append(long / short)
            line.append(f"{kind} {short:,.0f}/s short, {long:,.0f}/s long, ratio {ratios[kind][-1]:.2f}")
        print(f"round {round_no + 1}: " + "; ".join(line), flush=True)
    print()
    print(f"settings: long {args.long} vs short {args.count} messages of {args.size} bytes, {args.rounds} "
          f"rounds, batch {args.batch_count}, {args.parallel} requests in flight per peer, "
          f"hot path {IMPLEMENTATION}")  # fmt: skip
    for kind, values in ratios.items():
        print(f"{kind:5s}: median ratio long / short {statistics.median(values):.2f}"
              + ("  (target >= 0.8)" if kind == "http" else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per cell (default 20000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-count", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where work directories go (default: temp dir)")
    parser.add_argument("--long", type=int, metavar="N", help="compare runs of N messages with --count ones")
    parser.add_argument("--no-nats", action="store_true", help="leave out the JetStream peer and its ceiling")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dropr-e2e-", dir=args.dir)
    relay_args = ["--batch-count", str(args.batch_count), "--parallel", str(args.parallel)]
    if args.long:
        try:
            compare_long(args, build_floor(PIPELINE_FLOOR, root), root, relay_args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    if not args.no_nats and (shutil.which("nats-server") is None or importlib.util.find_spec("nats") is None):
        print("JetStream cells left out: they need nats-server and nats-py (pip install 'dropr[nats]')")
        args.no_nats = True
    kinds = ["floor", "http", "local"] + ([] if args.no_nats else ["nats", "nats-queued", "ceiling"])
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        binary = build_floor(PIPELINE_FLOOR, root)
        for round_no in range(args.rounds):
            for kind in kinds:
                if kind == "floor":
                    rate = floor_cell(binary, root, args.count, args.size, args.batch_count, args.parallel)
                elif kind == "ceiling":
                    rate = ceiling_cell(root, args.count, args.size)
                elif kind == "nats-queued":
                    rate = dropr_cell(root, args.count, args.size, "nats", relay_args, queued=True)
                else:
                    rate = dropr_cell(root, args.count, args.size, kind, relay_args)
                rates[kind].append(rate)
            print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"settings: {args.count} messages of {args.size} bytes per cell, {args.rounds} rounds, "
          f"batch {args.batch_count}, {args.parallel} requests in flight per peer, server --fsync batch, "
          f"hot path {IMPLEMENTATION}, {os.cpu_count()} CPUs"
          + ("" if args.no_nats else "; JetStream: 3 nodes, stream of 3 replicas, nats-server defaults"))  # fmt: skip
    for kind in ("http", "local"):
        ratios = [d / f for d, f in zip(rates[kind], rates["floor"], strict=True)]
        print(f"{kind:5s}: median {statistics.median(rates[kind]):,.0f} msg/s; floor median "
              f"{statistics.median(rates['floor']):,.0f} msg/s; median ratio {statistics.median(ratios):.2f}"
              + ("  (target >= 0.5)" if kind == "http" else
                 "  (no socket and no server process: beside the floor, not bound by it)"))  # fmt: skip
    if not args.no_nats:
        ceiling = statistics.median(rates["ceiling"])
        for kind, what in (("nats", "end to end"), ("nats-queued", "relay alone, queue full at once")):
            ratios = [d / c for d, c in zip(rates[kind], rates["ceiling"], strict=True)]
            print(f"{kind}: {what}: median {statistics.median(rates[kind]):,.0f} msg/s; nats-py directly "
                  f"(ceiling) median {ceiling:,.0f} msg/s; median ratio {statistics.median(ratios):.2f}"
                  + ("  (target >= 0.5)" if kind == "nats-queued" else ""))  # fmt: skip
    print()
    print("| figure | PHP dropr (published) | dropr today (this run, median) |")
    print("| --- | --- | --- |")
    for label, php, kind in PHP_FIGURES:
        print(f"| {label} | {php} msg/s | {statistics.median(rates[kind]):,.0f} msg/s |")


if __name__ == "__main__":
    main()
