"""The whole pipeline at once: fastput -> relay -> HTTP -> server -> claim -> processed.

A dropr cell runs every stage at the same time, each its own process, as in production: a
fresh ``dropr-server`` (``--fsync batch``, its default), a ``dropr-relay`` on a fresh spool,
one producer process calling ``fastput`` once per message, and one consumer process that
claims up to ``--claim`` messages at a time, reads each and marks it processed — with
``--put-many``, a batch consumer's way: the claim's messages in one ``set_processed`` call, as
a redis consumer of pipelined pushes pops N at once (``bench/peers.py``). The cell's time runs
from the producer's first put until the consumer has processed the last message.

The C floor (``bench/_stages.py``) runs the same four stages as four processes at once,
doing the same file operations per message and per batch, and nothing more; with
``--put-many N`` its producer, like dropr's ``fastput_many``, writes one file for N
messages. Cells alternate (floor, dropr, floor, ...), each in a fresh random work directory
after a ``sync``; the figure that counts is the median of the per-round ratios dropr /
floor (target: at least 0.5). Beside each rate stands the CPU time each process spent per
message (user + system), which says where a message's cost goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _floor import build_floor
from _stages import FRESH, PIPELINE_FLOOR, PRODUCER, floor_dirs, floor_stages, free_port, fresh, relay_running
from support import start_server

from dropr._impl import IMPLEMENTATION

CHANNEL = "common"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


CONSUMER = textwrap.dedent(
    """
    import os, sys, time
    from dropr.store import Store
    path, channel, count, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    in_batches = sys.argv[5] == "1"
    while not os.path.isdir(os.path.join(path, "channels")):
        time.sleep(0.001)
    store = Store(path)
    done = 0
    while done < count:
        claimed = store.claim(channel, limit, 60)
        if not claimed:
            time.sleep(0.0005)
            continue
        for message in claimed:
            message.read()
            if not in_batches:
                store.set_processed(message)
        if in_batches:
            store.set_processed(*claimed)
        done += len(claimed)
    print(f"{time.monotonic():.9f}", flush=True)
    """
)


@dataclass
class Cell:
    """One cell's rate and the CPU seconds per message of each of its processes."""

    rate: float
    cpu_us: dict[str, float]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def child_cpu(proc: subprocess.Popen[str]) -> float:
    """CPU time of a child that has exited (reaped here)."""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def floor_cell(binary: str, root: str, args: argparse.Namespace) -> Cell:
    d = floor_dirs(fresh(root))
    count, port, per_put = str(args.count), str(free_port()), str(args.put_many)
    with floor_stages(binary) as run:
        receiver = run("receive", port, d["stage"], d["store"], count, per_put)
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        consumer = run("consume", d["store"], d["claimed"], d["done"], count, str(args.claim))
        forwarder = run(
            "forward",
            d["queue"],
            d["sent"],
            d["free"],
            port,
            count,
            str(args.batch_count),
            str(args.parallel),
            per_put,
            FRESH,
        )
        producer = run(
            "produce", d["tmp"], d["queue"], d["free"], count, str(args.size), "1" if args.sync else "0", per_put
        )
        assert producer.stdout is not None and consumer.stdout is not None
        started = float(producer.stdout.readline())
        ended = float(consumer.stdout.readline())
        cpu = {name: child_cpu(proc) for name, proc in [("producer", producer), ("relay", forwarder),
                                                        ("server", receiver), ("consumer", consumer)]}  # fmt: skip
    return Cell(args.count / (ended - started), {k: v / args.count * 1e6 for k, v in cpu.items()})


def dropr_cell(root: str, args: argparse.Namespace) -> Cell:
    cell = fresh(root)
    spool, store = os.path.join(cell, "spool"), os.path.join(cell, "store")
    server = start_server(store)
    relay_args = ["--batch-count", str(args.batch_count), "--parallel", str(args.parallel)]
    try:
        with relay_running(cell, spool, relay_args) as relay:
            consumer = subprocess.Popen(
                [sys.executable, "-c", CONSUMER, store, CHANNEL, str(args.count), str(args.claim),
                 "1" if args.put_many > 1 else "0"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            producer = subprocess.Popen(
                [sys.executable, "-c", PRODUCER, spool, server.url, str(args.count), str(args.size),
                 "1" if args.sync else "0", str(args.put_many)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert producer.stdout is not None and consumer.stdout is not None
            started = float(producer.stdout.readline())
            ended = float(consumer.stdout.readline())
            cpu = {"relay": cpu_seconds(relay.pid), "server": cpu_seconds(server.proc.pid)}
            cpu["producer"] = child_cpu(producer)
            cpu["consumer"] = child_cpu(consumer)
    finally:
        server.close()
    return Cell(args.count / (ended - started), {k: v / args.count * 1e6 for k, v in cpu.items()})


def show(kind: str, cell: Cell) -> str:
    parts = ", ".join(f"{name} {cell.cpu_us[name]:.0f}" for name in ("producer", "relay", "server", "consumer"))
    return f"{kind} {cell.rate:,.0f}/s (CPU µs/msg: {parts})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per cell (default 20000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="floor/dropr rounds (default 3)")
    parser.add_argument("--sync", action="store_true", help="durable puts (fastput sync=True; fsyncs in the floor)")
    parser.add_argument("--batch-count", type=int, default=1000, help="messages per request (default 1000)")
    parser.add_argument("--parallel", type=int, default=2, help="relay requests in flight (default 2)")
    parser.add_argument("--claim", type=int, default=1000, help="messages per claim (default 1000)")
    parser.add_argument(
        "--put-many",
        type=int,
        default=1,
        metavar="N",
        help="messages per put: fastput_many of N (one file a batch in the floor too; default 1: fastput)",
    )
    parser.add_argument("--dir", default=None, help="where work directories go (default: temp dir)")
    args = parser.parse_args()
    args.count -= args.count % args.put_many
    root = tempfile.mkdtemp(prefix="dropr-pipeline-", dir=args.dir)
    cells: dict[str, Callable[[], Cell]] = {}
    results: dict[str, list[Cell]] = {"floor": [], "dropr": []}
    try:
        binary = build_floor(PIPELINE_FLOOR, root)
        cells = {"floor": lambda: floor_cell(binary, root, args), "dropr": lambda: dropr_cell(root, args)}
        for round_no in range(args.rounds):
            for kind, run in cells.items():
                results[kind].append(run())
            print(f"round {round_no + 1}: " + "; ".join(show(k, v[-1]) for k, v in results.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [d.rate / f.rate for d, f in zip(results["dropr"], results["floor"], strict=True)]
    print()
    print(f"settings: {args.count} messages of {args.size} bytes per cell, {args.rounds} rounds, "
          f"{'sync' if args.sync else 'relaxed'} puts of {args.put_many}, batch {args.batch_count}, "
          f"claim {args.claim}, hot path {IMPLEMENTATION}, {os.cpu_count()} CPUs")  # fmt: skip
    print("| pipeline, median of rounds | msg/s | producer | relay | server | consumer | CPU µs/msg |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, cells_of in results.items():
        cpu = {name: statistics.median(c.cpu_us[name] for c in cells_of) for name in cells_of[0].cpu_us}
        row = " | ".join(f"{cpu[name]:.0f}" for name in ("producer", "relay", "server", "consumer"))
        print(f"| {kind} | {statistics.median(c.rate for c in cells_of):,.0f} | {row} | {sum(cpu.values()):.0f} |")
    print(f"\nmedian ratio dropr / floor: {statistics.median(ratios):.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
