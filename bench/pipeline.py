"""The whole pipeline at once: fastput -> relay -> HTTP -> server -> claim -> processed.

A dropr cell runs every stage at the same time, each its own process, as in production: a
fresh ``dropr-server`` (``--fsync batch``, its default), a ``dropr-relay`` on a fresh spool,
one producer process calling ``fastput`` once per message, and one consumer process that
claims up to ``--claim`` messages at a time, reads each and marks it processed. The cell's
time runs from the producer's first put until the consumer has processed the last message.

The C floor runs the same four stages as four processes at once, doing the same file
operations per message and per batch, and nothing more:

- producer: create, write, close, rename into its bucket of the queue, making the bucket
  when it is missing (``fdatasync`` and the bucket's ``fsync`` with ``--sync``); with
  ``--put-many N`` (dropr's ``fastput_many``) one such file holds N messages, and the
  forwarder sends it as one record, which the receiver stages as N files;
- forwarder: list the queue's buckets in order (removing the empty ones), open, read and
  close each file of a batch, write the batch to a loopback TCP socket (up to
  ``--parallel`` batches back to back, as the relay keeps that many requests in flight),
  wait for the one-byte acknowledgements, rename each file into ``sent/`` and unlink it;
- receiver: read a batch from the socket, create, write and close a staged file per message
  (every batch that has arrived meanwhile too), ``syncfs``, rename each into the store's
  queue, ``syncfs``, acknowledge each batch (the server shares its flushes so);
- consumer: list the store's queue, set the lease (``utimensat``) and rename each file of a
  claim into ``claimed/``, open, read and close it, rename it into ``processed/``.

The floor checks nothing, probes for no duplicate and parses nothing, so it is the fastest
any design doing these file operations can be. Cells alternate (floor, dropr, floor, ...),
each in a fresh random work directory after a ``sync``; the figure that counts is the median
of the per-round ratios dropr / floor (target: at least 0.5). Beside each rate stands the CPU
time each process spent per message (user + system), which says where a message's cost goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _floor import build_floor
from support import start_server

from dropr._impl import IMPLEMENTATION

CHANNEL = "common"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

C_FLOOR = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NAME_MAX_ 256
static void die(const char *what) { perror(what); exit(1); }
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
static int opendirfd(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC); if (fd < 0) die(path); return fd;
}
static void put_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) die("write"); p += w; n -= (size_t)w; }
}
static void get_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n) { ssize_t r = read(fd, p, n); if (r <= 0) die("read"); p += r; n -= (size_t)r; }
}
/* Up to max paths BUCKET/NAME of a bucketed queue, buckets in order; empty buckets of the
   past are removed, as the relay prunes them. Returns how many. */
static int by_name(const void *a, const void *b) { return strcmp(a, b); }
static long list_buckets(int queue, char (*names)[NAME_MAX_], long max) {
    static char buckets[4096][16];
    DIR *dir = fdopendir(dup(queue)); if (!dir) die("fdopendir");
    rewinddir(dir);
    long nb = 0, n = 0; struct dirent *e;
    while (nb < 4096 && (e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.') strcpy(buckets[nb++], e->d_name);
    closedir(dir);
    qsort(buckets, nb, sizeof buckets[0], by_name);
    for (long b = 0; b < nb && n < max; b++) {
        int fd = openat(queue, buckets[b], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) continue;
        DIR *bucket = fdopendir(fd); if (!bucket) die("fdopendir");
        long before = n;
        while (n < max && (e = readdir(bucket)) != NULL)
            if (e->d_name[0] != '.') snprintf(names[n++], NAME_MAX_, "%s/%s", buckets[b], e->d_name);
        closedir(bucket);
        if (n == before && b + 1 < nb) unlinkat(queue, buckets[b], AT_REMOVEDIR);
    }
    return n;
}

/* Up to max names of a directory, not starting with a dot; returns how many. */
static long list(int dirfd, char (*names)[NAME_MAX_], long max) {
    DIR *dir = fdopendir(dup(dirfd)); if (!dir) die("fdopendir");
    rewinddir(dir);
    long n = 0; struct dirent *e;
    while (n < max && (e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.') strcpy(names[n++], e->d_name);
    closedir(dir);
    return n;
}

/* One file per message, or with per_file above 1 one file per that many (a batch). */
static int produce(const char *tmp_dir, const char *queue_dir, long count, long size, int sync, long per_file) {
    int tmp = opendirfd(tmp_dir), queue = opendirfd(queue_dir);
    size *= per_file;
    char *buf = malloc(size + 1); memset(buf, 'x', size);
    char tmp_name[64], name[NAME_MAX_], path[NAME_MAX_ + 16];
    struct timespec t;
    printf("%.9f\n", now()); fflush(stdout);
    for (long i = 0; i < count / per_file; i++) {
        clock_gettime(CLOCK_REALTIME, &t);
        snprintf(tmp_name, sizeof tmp_name, "%016llx%08x%06lx",
                 (long long)t.tv_sec * 1000000000LL + t.tv_nsec, 0x1234abcdU, i & 0xFFFFFF);
        snprintf(name, sizeof name, "9%s+http%%3A%%2F%%2F127.0.0.1%%3A8080%%2F+common+%lx+%08x",
                 tmp_name, size, 0U);
        int fd = openat(tmp, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) die("openat");
        put_all(fd, buf, size);
        if (sync && fdatasync(fd)) die("fdatasync");
        close(fd);
        /* Into its bucket, queue/BUCKET/NAME, as the spool does (BUCKET: the first 9 chars). */
        memcpy(path, name, 9); path[9] = '/'; strcpy(path + 10, name);
        if (renameat(tmp, tmp_name, queue, path) != 0) {
            path[9] = 0;
            if (errno != ENOENT || (mkdirat(queue, path, 0750) && errno != EEXIST)) die("mkdirat");
            path[9] = '/';
            if (renameat(tmp, tmp_name, queue, path) != 0) die("renameat");
        }
        if (sync) {
            path[9] = 0;
            int bucket = openat(queue, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (bucket < 0 || fsync(bucket)) die("fsync");
            close(bucket);
        }
    }
    return 0;
}

/* Reads one batch's files into out (grown as needed); returns its length. */
static size_t pack(int queue, char (*names)[NAME_MAX_], long n, char **out, size_t *cap) {
    static char data[65536];
    size_t used = 4; uint32_t v = htonl((uint32_t)n); memcpy(*out, &v, 4);
    for (long i = 0; i < n; i++) {
        int fd = openat(queue, names[i], O_RDONLY | O_CLOEXEC); if (fd < 0) die("openat");
        ssize_t got = read(fd, data, sizeof data); close(fd);
        if (got < 0) die("read");
        const char *base = strchr(names[i], '/') + 1;
        uint32_t len = strlen(base);
        while (used + 8 + len + (size_t)got > *cap) { *cap *= 2; *out = realloc(*out, *cap); }
        v = htonl(len); memcpy(*out + used, &v, 4); memcpy(*out + used + 4, base, len);
        v = htonl((uint32_t)got); memcpy(*out + used + 4 + len, &v, 4);
        memcpy(*out + used + 8 + len, data, got); used += 8 + len + got;
    }
    return used;
}

/* Lists up to parallel batches at once and sends them back to back (as the relay keeps
   several requests in flight), then waits for their acknowledgements; a file holds per_file
   messages. */
static int forward(const char *queue_dir, const char *sent_dir, int port, long count, long batch, int parallel,
                   long per_file) {
    int queue = opendirfd(queue_dir), sent = opendirfd(sent_dir);
    int sock = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    batch = batch / per_file > 0 ? batch / per_file : 1;
    char (*names)[NAME_MAX_] = malloc(batch * parallel * NAME_MAX_);
    size_t cap = 1 << 20; char *out = malloc(cap);
    for (long done = 0; done < count;) {
        long n = list_buckets(queue, names, batch * parallel);
        if (!n) { usleep(200); continue; }
        long sent_batches = 0;
        for (long first = 0; first < n; first += batch, sent_batches++) {
            long size = n - first < batch ? n - first : batch;
            put_all(sock, out, pack(queue, names + first, size, &out, &cap));
        }
        for (long i = 0; i < sent_batches; i++) { char ack; get_all(sock, &ack, 1); }
        for (long i = 0; i < n; i++) {
            const char *base = strchr(names[i], '/') + 1;
            if (renameat(queue, names[i], sent, base)) die("renameat sent");
            if (unlinkat(sent, base, 0)) die("unlinkat");
        }
        done += n * per_file;
    }
    return 0;
}

/* Stages every batch that has arrived, then makes them durable together (group commit, as
   the server shares a flush between requests in flight) and acknowledges each; each file
   received holds per_file messages, each staged as a file of its own. */
static int receive(int port, const char *stage_dir, const char *store_dir, long count, long per_file) {
    int stage = opendirfd(stage_dir), store = opendirfd(store_dir);
    int lsock = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof addr) || listen(lsock, 1)) die("bind");
    printf("ready\n"); fflush(stdout);
    int sock = accept(lsock, NULL, NULL); if (sock < 0) die("accept");
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char (*names)[NAME_MAX_] = NULL; long names_cap = 0; char *data = malloc(1 << 24);
    for (long done = 0; done < count;) {
        long total = 0, batches = 0; char peek;
        do {
            uint32_t v; get_all(sock, &v, 4); long n = ntohl(v) * per_file;
            if (total + n > names_cap) { names_cap = 2 * (total + n); names = realloc(names, names_cap * NAME_MAX_); }
            for (long i = total; i < total + n; i += per_file) {
                char name[NAME_MAX_];
                get_all(sock, &v, 4); uint32_t len = ntohl(v);
                get_all(sock, name, len); name[len] = 0;
                get_all(sock, &v, 4); uint32_t size = ntohl(v);
                get_all(sock, data, size);
                for (long j = 0; j < per_file; j++) {
                    snprintf(names[i + j], NAME_MAX_, "%s.%lx", name, j);
                    int fd = openat(stage, names[i + j], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
                    if (fd < 0) die("openat stage");
                    put_all(fd, data + j * (size / per_file), size / per_file); close(fd);
                }
            }
            total += n; batches++;
        } while (recv(sock, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1);
        if (syncfs(store)) die("syncfs");
        for (long i = 0; i < total; i++)
            if (renameat(stage, names[i], store, names[i])) die("renameat store");
        if (syncfs(store)) die("syncfs");
        for (long i = 0; i < batches; i++) put_all(sock, "a", 1);
        done += total;
    }
    return 0;
}

static int consume(const char *queue_dir, const char *claimed_dir, const char *processed_dir,
                   long count, long limit) {
    int queue = opendirfd(queue_dir), claimed = opendirfd(claimed_dir), processed = opendirfd(processed_dir);
    char (*names)[NAME_MAX_] = malloc(limit * NAME_MAX_); char data[65536];
    struct timespec lease[2];
    for (long done = 0; done < count;) {
        long n = list(queue, names, limit);
        if (!n) { usleep(200); continue; }
        clock_gettime(CLOCK_REALTIME, &lease[0]); lease[0].tv_sec += 60; lease[1] = lease[0];
        for (long i = 0; i < n; i++) {
            if (utimensat(queue, names[i], lease, AT_SYMLINK_NOFOLLOW)) die("utimensat");
            if (renameat(queue, names[i], claimed, names[i])) die("renameat claimed");
        }
        for (long i = 0; i < n; i++) {
            int fd = openat(claimed, names[i], O_RDONLY | O_CLOEXEC); if (fd < 0) die("openat");
            if (read(fd, data, sizeof data) < 0) die("read");
            close(fd);
            if (renameat(claimed, names[i], processed, names[i])) die("renameat processed");
        }
        done += n;
    }
    printf("%.9f\n", now());
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 8 && !strcmp(argv[1], "produce"))
        return produce(argv[2], argv[3], atol(argv[4]), atol(argv[5]), atoi(argv[6]), atol(argv[7]));
    if (argc == 9 && !strcmp(argv[1], "forward"))
        return forward(argv[2], argv[3], atoi(argv[4]), atol(argv[5]), atol(argv[6]), atoi(argv[7]), atol(argv[8]));
    if (argc == 7 && !strcmp(argv[1], "receive"))
        return receive(atoi(argv[2]), argv[3], argv[4], atol(argv[5]), atol(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "consume"))
        return consume(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]));
    fprintf(stderr, "usage: floor produce|forward|receive|consume ...\n");
    return 2;
}
"""

PRODUCER = textwrap.dedent(
    """
    import os, sys, time
    import dropr
    spool, peer, count, size, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    per_put = int(sys.argv[6])
    payload, fastput, fastput_many = os.urandom(size), dropr.fastput, dropr.fastput_many
    dropr.Client(spool).close()
    print(f"{time.monotonic():.9f}", flush=True)
    if per_put == 1:
        for _ in range(count):
            fastput(payload, peer, spool=spool, sync=sync)
    else:
        payloads = [payload] * per_put
        for _ in range(count // per_put):
            fastput_many(payloads, peer, spool=spool, sync=sync)
    """
)

CONSUMER = textwrap.dedent(
    """
    import os, sys, time
    from dropr.store import Store
    path, channel, count, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
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
            store.set_processed(message)
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


def fresh(root: str) -> str:
    subprocess.run(["sync"], check=True)
    return tempfile.mkdtemp(prefix="cell-", dir=root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def floor_cell(binary: str, root: str, args: argparse.Namespace) -> Cell:
    cell = fresh(root)
    d = {name: os.path.join(cell, name) for name in ("tmp", "queue", "sent", "stage", "store", "claimed", "done")}
    for path in d.values():
        os.mkdir(path)
    count, port = str(args.count), str(free_port())

    def run(*argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([binary, *argv], stdout=subprocess.PIPE, text=True)

    per_put = str(args.put_many)
    receiver = run("receive", port, d["stage"], d["store"], count, per_put)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    consumer = run("consume", d["store"], d["claimed"], d["done"], count, str(args.claim))
    forwarder = run("forward", d["queue"], d["sent"], port, count, str(args.batch_count), str(args.parallel), per_put)
    producer = run("produce", d["tmp"], d["queue"], count, str(args.size), "1" if args.sync else "0", per_put)
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
    log = open(os.path.join(cell, "relay.log"), "w+")
    relay_args = ["--batch-count", str(args.batch_count), "--parallel", str(args.parallel)]
    relay = subprocess.Popen(
        [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise", *relay_args],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        while "relaying" not in _read(log.name):
            if relay.poll() is not None:
                raise RuntimeError(_read(log.name))
            time.sleep(0.01)
        consumer = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, store, CHANNEL, str(args.count), str(args.claim)],
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
        relay.terminate()
        relay.wait(60)
        server.close()
        log.close()
    return Cell(args.count / (ended - started), {k: v / args.count * 1e6 for k, v in cpu.items()})


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


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
        binary = build_floor(C_FLOOR, root)
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
