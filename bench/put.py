"""fastput against a C program doing the same file system calls per message.

Per message the C floor does openat(tmp, O_CREAT|O_EXCL), write, [fdatasync], close,
renameat into the queue's bucket (mkdirat first when the bucket is new), [fsync bucket, and
fsync queue once per new bucket]: the calls fastput makes, without computing a checksum or
an id. Both run in fresh processes, alternately (A B A B ...), each cell in a fresh
random work directory under the system temp dir, with ``sync`` between cells; the figure
that counts is the median of the per-round ratios.

``--depth N`` instead compares putting into a spool already holding N queued messages
with putting into one that started empty (made at the same time, so both sit alike on
disk; it holds at most 2 x rounds x count messages by the end), for fastput (target: at
least 0.8) and for the C floor, which shows what the file system itself charges for a
large directory.

Work directories are removed at the end, not between cells: on a file system without a
journal, creates right after mass deletes are several times slower, which would skew the
cells that follow.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
from typing import NamedTuple

from _floor import build_floor

PEER = "http://127.0.0.1:8080/q"
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000

C_FLOOR = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: floor TMP QUEUE COUNT SIZE SYNC\n"); return 2; }
    int tmp = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int queue = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    long count = atol(argv[3]), size = atol(argv[4]);
    int sync = atoi(argv[5]);
    if (tmp < 0 || queue < 0) die("open");
    char *buf = malloc(size ? size : 1);
    memset(buf, 'x', size);
    char tmp_name[64], queue_name[256], bucket[16] = "";
    int bucket_fd = -1;
    struct timespec t0, t1, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++) {
        clock_gettime(CLOCK_REALTIME, &now);
        long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
        snprintf(tmp_name, sizeof tmp_name, "%016llx%08x%06lx", ns, 0x1234abcdU, i & 0xFFFFFF);
        snprintf(queue_name, sizeof queue_name,
                 "9%.8s/9%s+http%%3A%%2F%%2F127.0.0.1%%3A8080%%2Fq+common+%lx+%08x", tmp_name, tmp_name,
                 size, 0U);
        int new_bucket = memcmp(bucket, queue_name, 9) != 0;
        if (new_bucket) {
            memcpy(bucket, queue_name, 9);
            if (mkdirat(queue, bucket, 0750) != 0 && errno != EEXIST) die("mkdirat");
            if (bucket_fd >= 0) close(bucket_fd);
            bucket_fd = openat(queue, bucket, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (bucket_fd < 0) die("openat bucket");
        }
        int fd = openat(tmp, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) die("openat");
        if (write(fd, buf, size) != size) die("write");
        if (sync && fdatasync(fd) != 0) die("fdatasync");
        if (close(fd) != 0) die("close");
        if (renameat(tmp, tmp_name, queue, queue_name) != 0) die("renameat");
        if (sync && fsync(bucket_fd) != 0) die("fsync");
        if (sync && new_bucket && fsync(queue) != 0) die("fsync");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.9f c\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
"""

FASTPUT = textwrap.dedent(
    """
    import os, sys, time
    import dropr, dropr._impl
    root, count, size, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    payload, peer, fastput = os.urandom(size), sys.argv[5], dropr.fastput
    fastput(payload, peer, spool=root, sync=sync)
    start = time.perf_counter()
    for _ in range(count):
        fastput(payload, peer, spool=root, sync=sync)
    print(time.perf_counter() - start, dropr._impl.IMPLEMENTATION)
    """
)


def spread_out(path: str) -> None:
    """``chattr +T``: ext4 then places each new subdirectory in a fresh block group.

    Without it, every cell lands in the groups of the temp dir, where other programs' recent
    deletes make creates slow (see the module docstring). Elsewhere it is a no-op.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
    except OSError:
        pass
    finally:
        os.close(fd)


def fresh_spool(workdir: str) -> str:
    root = tempfile.mkdtemp(prefix="cell-", dir=workdir)
    for sub in ("queue", "tmp"):
        os.mkdir(os.path.join(root, sub))
    return root


class Cell(NamedTuple):
    """One measured cell: messages per second and what ran."""

    rate: float
    what: str


def measure(command: list[str], count: int, env: dict[str, str] | None = None) -> Cell:
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.split()
    return Cell(count / float(out[0]), out[1])


def run_floor(binary: str, root: str, count: int, size: int, sync: bool) -> Cell:
    tmp, queue = os.path.join(root, "tmp"), os.path.join(root, "queue")
    return measure([binary, tmp, queue, str(count), str(size), str(int(sync))], count)


def run_fastput(root: str, count: int, size: int, sync: bool, env: dict[str, str]) -> Cell:
    command = [sys.executable, "-c", FASTPUT, root, str(count), str(size), str(int(sync)), PEER]
    return measure(command, count, env)


def compare_floor(args: argparse.Namespace, binary: str, workdir: str, env: dict[str, str]) -> None:
    print(f"{'mode':8} {'round':>5} {'C floor msg/s':>14} {'fastput msg/s':>14} {'ratio':>6}")
    for sync in (False, True):
        mode = "sync" if sync else "relaxed"
        count = max(1, args.count // 10) if sync else args.count
        ratios = []
        for round_no in range(1, args.rounds + 1):
            cells = {}
            order = ("floor", "fastput") if round_no % 2 else ("fastput", "floor")
            for cell in order:
                os.sync()
                root = fresh_spool(workdir)
                if cell == "floor":
                    cells[cell] = run_floor(binary, root, count, args.size, sync)
                else:
                    cells[cell] = run_fastput(root, count, args.size, sync, env)
            floor, put = cells["floor"], cells["fastput"]
            ratios.append(put.rate / floor.rate)
            print(f"{mode:8} {round_no:>5} {floor.rate:>14.0f} {put.rate:>14.0f} {ratios[-1]:>6.3f}")
        print(f"{mode:8} median ratio {statistics.median(ratios):.3f} (target >= 0.9; {count} messages "
              f"of {args.size} bytes per cell, fastput {cells['fastput'].what})")  # fmt: skip
    print("sync figures depend on the file system: where fsync is cheap (no journal) they are high")


def compare_depth(args: argparse.Namespace, binary: str, workdir: str, env: dict[str, str]) -> None:
    empty, deep = fresh_spool(workdir), fresh_spool(workdir)
    print(f"filling a spool with {args.depth} queued messages ...", flush=True)
    run_floor(binary, deep, args.depth, args.size, False)
    print(f"{'round':>5} {'who':8} {'empty msg/s':>12} {'deep msg/s':>12} {'ratio':>6}")
    ratios: dict[str, list[float]] = {"C floor": [], "fastput": []}
    for round_no in range(1, args.rounds + 1):
        cells = {}
        order = [(who, root) for who in ratios for root in (empty, deep)]
        for who, root in order if round_no % 2 else order[::-1]:
            os.sync()
            if who == "fastput":
                cells[who, root] = run_fastput(root, args.count, args.size, False, env)
            else:
                cells[who, root] = run_floor(binary, root, args.count, args.size, False)
        for who, values in ratios.items():
            values.append(cells[who, deep].rate / cells[who, empty].rate)
            print(f"{round_no:>5} {who:8} {cells[who, empty].rate:>12.0f} {cells[who, deep].rate:>12.0f}"
                  f" {values[-1]:>6.3f}")  # fmt: skip
    for who, values in ratios.items():
        print(f"depth {args.depth}, {who}: median ratio deep/empty {statistics.median(values):.3f}"
              f"{' (target >= 0.8)' if who == 'fastput' else ''}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per cell (a tenth with sync)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument(
        "--depth",
        type=int,
        nargs="?",
        const=100_000,
        metavar="N",
        help="compare put into a spool holding N messages (default 100000) with an empty one",
    )
    parser.add_argument("--python", action="store_true", help="measure the plain-Python twins")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.python:
        env["DROPR_NO_EXTENSIONS"] = "1"
        env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    workdir = tempfile.mkdtemp(prefix=f"dropr-bench-{os.urandom(4).hex()}-")
    spread_out(workdir)
    try:
        binary = build_floor(C_FLOOR, workdir)
        if args.depth:
            compare_depth(args, binary, workdir, env)
        else:
            compare_floor(args, binary, workdir, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
