"""Consumer throughput: claim -> read -> set_processed, against a C floor, in one run; and the
same over HTTP from a dropr-server (RemoteStore), beside the local figure.

The C floor is a small program built at run time that does the same file operations per
message as ``Store.claim`` + ``Message.read`` + ``Store.set_processed``: set the lease time
on ``queue/NAME``, rename it to ``claimed/``, open/read/close it, rename it to ``processed/``
(a rename lost to another process is skipped, as in the store). It lists the queue once,
where dropr rescans it per claim batch. Both run with 1 and with 4 processes on fresh
stores of the same messages, C and dropr alternating, several rounds; the table shows the
median of the per-round ratios. Remote consumers (1 and 4 processes) claim a batch over
HTTP from a ``dropr-server`` on loopback, read each payload from the answer and settle the
batch with one ``set_processed(*batch)``; their rate is shown beside the local consumers' of
the same round (target: 4 remote >= 0.5 x 4 local). With ``--groups``, consumers of one of
two consumer groups run too, beside the local ones of the same round: each message a group
takes while the other still links its file gets a copy of its own first, which is what that
figure weighs. With ``--mixed``, consumers of a channel whose messages came the way a relay
sends them, in requests of 500 that mix it with another channel and two priorities (a
request's small messages share a file a queue), run beside the local ones of the same
round. Stores are removed only at the end:
mass deletes would slow the next cells' file creation (on ext4 without a journal, by many
times).

    python bench/consume.py [--count N] [--rounds R] [--batch B] [--size BYTES] [--no-remote]
                            [--groups] [--mixed]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _floor import build_floor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import start_server
from test_server import batch, msg, post

from dropr._impl import IMPLEMENTATION, codec
from dropr.remote import RemoteStore
from dropr.store import Store

C_FLOOR = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    /* argv[1]: channel directory holding queue/, claimed/, processed/ */
    char path[4096], target[4096], buf[65536];
    size_t cap = 1024, n = 0;
    char **names = malloc(cap * sizeof *names);
    snprintf(path, sizeof path, "%s/queue", argv[1]);
    DIR *dir = opendir(path);
    if (!dir) { perror("opendir"); return 1; }
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.') continue;
        if (n == cap) names = realloc(names, (cap *= 2) * sizeof *names);
        names[n++] = strdup(entry->d_name);
    }
    closedir(dir);
    qsort(names, n, sizeof *names, by_name);
    struct timespec lease[2];
    clock_gettime(CLOCK_REALTIME, &lease[0]);
    lease[0].tv_sec += 60;
    lease[1] = lease[0];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/queue/%s", argv[1], names[i]);
        snprintf(target, sizeof target, "%s/claimed/%s", argv[1], names[i]);
        if (utimensat(AT_FDCWD, path, lease, 0) != 0 || rename(path, target) != 0) {
            if (errno == ENOENT) continue;
            perror("claim"); return 1;
        }
        int fd = open(target, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror("open"); return 1; }
        while (read(fd, buf, sizeof buf) > 0) {}
        close(fd);
        snprintf(path, sizeof path, "%s/processed/%s", argv[1], names[i]);
        if (rename(target, path) != 0) { perror("rename"); return 1; }
    }
    return 0;
}
"""


GROUPS = ("first", "second")
"""The groups of ``--groups``: the consumers take the first's messages, copies while the second links them."""


def fill(root: str, count: int, size: int, groups: tuple[str, ...] = ()) -> Store:
    """A fresh store whose channel ``bench`` holds ``count`` messages of ``size`` bytes, in
    each of ``groups`` when there are any."""
    store = Store(root, create=True)
    for group in groups:
        store.subscribe("bench", group)
    payload = os.urandom(size)
    for _ in range(count):
        msg_id = codec.new_id()
        staged = os.path.join(store.staging_dir, msg_id)
        with open(staged, "wb") as file:
            file.write(payload)
        store.ingest("bench", "bench-client", msg_id, 9, staged)
    os.sync()
    return store


MIXED_REQUEST = 500
"""Messages a request of ``--mixed``: half the channel's, half another's, two priorities each."""


def fill_mixed(root: str, count: int, size: int) -> Store:
    """A fresh store whose channel ``bench`` holds ``count`` messages of ``size`` bytes that
    came through a server in requests mixing it with channel ``other`` and two priorities."""
    payload = os.urandom(size)
    with start_server(root, extra_args=["--log-level", "warning"]) as server:
        for start in range(0, 2 * count, MIXED_REQUEST):
            mixed = [
                msg(payload, ("bench", "other")[i % 2], (1, 9)[i // 2 % 2]) for i in range(start, start + MIXED_REQUEST)
            ]
            if post(server, batch("bench-client", mixed[: 2 * count - start])).status != 200:
                raise RuntimeError("a request of the mixed store was refused")
    os.sync()
    return Store(root)


def run_floor(binary: str, store: Store, procs: int) -> float:
    channel_dir = os.path.join(store.path, "channels", "bench")
    start = time.monotonic()
    children = [subprocess.Popen([binary, channel_dir]) for _ in range(procs)]
    for child in children:
        if child.wait() != 0:
            raise RuntimeError("C floor failed")
    return time.monotonic() - start


def _consumer(
    path: str,
    batch: int,
    ready: multiprocessing.synchronize.Barrier,
    times: multiprocessing.queues.Queue,
    group: str | None = None,
) -> None:  # type: ignore[name-defined]
    if path.startswith("http"):
        remote = RemoteStore(path)
        ready.wait()
        start = time.monotonic()
        while claimed := remote.claim("bench", batch, 60):
            for message in claimed:
                message.read()
            remote.set_processed(*claimed)
    else:
        store = Store(path)
        ready.wait()
        start = time.monotonic()
        while claimed := store.claim("bench", batch, 60, group=group):
            for message in claimed:
                message.read()
                store.set_processed(message)
    times.put((start, time.monotonic()))


def run_dropr(store: Store, procs: int, batch: int, url: str | None = None, group: str | None = None) -> float:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(procs)
    times = ctx.Queue()
    target = url or store.path
    children = [ctx.Process(target=_consumer, args=(target, batch, ready, times, group)) for _ in range(procs)]
    for child in children:
        child.start()
    spans = [times.get() for _ in children]
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError("consumer failed")
    return max(end for _, end in spans) - min(start for start, _ in spans)


def check(store: Store, count: int, group: str | None = None) -> None:
    if store.count_processed("bench", group=group) != count or store.count_queued("bench", group=group) != 0:
        raise RuntimeError("not every message was processed exactly once")


def show_beside_local(rates: dict[tuple[str, int], list[float]], kind: str, title: str) -> None:
    """The rates of the consumers of ``kind`` beside the channel's local ones of the same rounds."""
    print(f"{title}, same rounds")
    print(f"{'processes':>9}  {'local msg/s':>11}  {kind + ' msg/s':>11}  {kind + '/local (median)':>20}")
    for procs in (1, 4):
        local = statistics.median(rates["dropr", procs])
        theirs = statistics.median(rates[kind, procs])
        shares = [t / d for t, d in zip(rates[kind, procs], rates["dropr", procs], strict=True)]
        print(f"{procs:>9}  {local:>11,.0f}  {theirs:>11,.0f}  {statistics.median(shares):>20.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--no-remote", action="store_true", help="leave out the consumers over HTTP")
    parser.add_argument("--groups", action="store_true", help="also consumers of one of two consumer groups")
    parser.add_argument("--mixed", action="store_true", help="also consumers of messages put in mixed requests")
    args = parser.parse_args()
    kinds = ("c", "dropr") if args.no_remote else ("c", "dropr", "remote")
    kinds += ("group",) if args.groups else ()
    kinds += ("mixed",) if args.mixed else ()
    work = tempfile.mkdtemp(prefix="dropr-bench-consume-")
    try:
        binary = build_floor(C_FLOOR, work)
        ratios: dict[int, list[float]] = {1: [], 4: []}
        # remote / local per round: with as many local processes, and with 4 local ones
        remote_same: dict[int, list[float]] = {1: [], 4: []}
        remote_four: dict[int, list[float]] = {1: [], 4: []}
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for procs in (1, 4):
                for kind in kinds:
                    root = os.path.join(work, f"{kind}-{procs}-{round_}-{os.urandom(4).hex()}")
                    group = GROUPS[0] if kind == "group" else None
                    if kind == "mixed":
                        store = fill_mixed(root, args.count, args.size)
                    else:
                        store = fill(root, args.count, args.size, GROUPS if group else ())
                    if kind == "c":
                        elapsed = run_floor(binary, store, procs)
                    elif kind == "remote":
                        with start_server(store.path, extra_args=["--log-level", "warning"]) as server:
                            elapsed = run_dropr(store, procs, args.batch, server.url)
                    else:
                        elapsed = run_dropr(store, procs, args.batch, group=group)
                    check(store, args.count, group)
                    rates.setdefault((kind, procs), []).append(args.count / elapsed)
                    os.sync()
                ratios[procs].append(rates["dropr", procs][-1] / rates["c", procs][-1])
            for procs in (1, 4) if "remote" in kinds else ():
                remote_same[procs].append(rates["remote", procs][-1] / rates["dropr", procs][-1])
                remote_four[procs].append(rates["remote", procs][-1] / rates["dropr", 4][-1])
        print(f"consume: {args.count} messages of {args.size} bytes, batch {args.batch}, "
              f"{args.rounds} rounds, {IMPLEMENTATION} hot path")  # fmt: skip
        print(f"{'processes':>9}  {'C floor msg/s':>13}  {'dropr msg/s':>11}  {'ratio (median)':>14}  per round")
        for procs in (1, 4):
            c_rate = statistics.median(rates["c", procs])
            d_rate = statistics.median(rates["dropr", procs])
            ratio = statistics.median(ratios[procs])
            rounds = " ".join(f"{r:.2f}" for r in ratios[procs])
            print(f"{procs:>9}  {c_rate:>13,.0f}  {d_rate:>11,.0f}  {ratio:>14.2f}  {rounds}")
        if "remote" in kinds:
            print(f"remote consumers over HTTP (RemoteStore, batch {args.batch}) beside local ones, same rounds")
            print(
                f"{'processes':>9}  {'local msg/s':>11}  {'remote msg/s':>12}  {'remote/local':>12}  {'÷ 4 local':>9}"
            )
            for procs in (1, 4):
                local = statistics.median(rates["dropr", procs])
                remote = statistics.median(rates["remote", procs])
                same = statistics.median(remote_same[procs])
                four = statistics.median(remote_four[procs])
                print(f"{procs:>9}  {local:>11,.0f}  {remote:>12,.0f}  {same:>12.2f}  {four:>9.2f}")
        if "group" in kinds:
            show_beside_local(rates, "group", f"consumers of one of two groups (batch {args.batch}) beside a channel's")
        if "mixed" in kinds:
            show_beside_local(rates, "mixed", f"consumers of messages put in mixed requests (batch {args.batch})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
