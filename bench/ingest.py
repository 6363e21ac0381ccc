"""The server's commit step without HTTP: moving staged files into a store, and syncing them.

``cost``: microseconds per message to ingest batches of staged 200-byte files, one
``Store.ingest`` call per message against one ``Store.ingest_many`` call per batch
(staging the files is not timed). Rounds alternate the two; medians are printed.

``sync``: milliseconds per batch for the durable commit of N staged files, by each way
the server can do it, alternating within each round:

- ``files``: ``fdatasync`` of each staged file in parallel, ingest, ``fsync`` of the
  directories that changed (what the server does up to ``SYNC_FILES_MAX`` files);
- ``syncfs x2``: ``syncfs``, ingest, ``syncfs`` (what it does above);
- ``syncfs+dirs``: ``syncfs``, ingest, ``fsync`` of the changed directories (a mix that
  measured no better than ``syncfs x2``, shown for that reason).

The crossover between ``files`` and ``syncfs x2`` is where ``SYNC_FILES_MAX`` belongs. It
depends on the disk, and on how much other processes leave dirty on the same file system,
which ``syncfs`` writes too; measure on the machine that matters, several times.

    python bench/ingest.py cost [--rounds 5] [--batch 1000] [--dir DIR]
    python bench/ingest.py sync [--rounds 5] [--sizes 1,4,16,64,256,1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from dropr._impl import codec
from dropr.server.flush import Syncer
from dropr.store import Store

CLIENT = "bench"
PAYLOAD = os.urandom(200)

Batch = list[tuple[str, str, int, str]]


def stage(store: Store, count: int) -> Batch:
    """``count`` staged files, as the server leaves them before its commit."""
    batch = []
    for _ in range(count):
        msg_id = codec.new_id()
        path = os.path.join(store.staging_dir, f"upload-{msg_id}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, PAYLOAD)
        os.close(fd)
        batch.append(("bench", msg_id, 5, path))
    return batch


def one_by_one(store: Store, batch: Batch) -> None:
    for channel, msg_id, priority, path in batch:
        assert store.ingest(channel, CLIENT, msg_id, priority, path)


def at_once(store: Store, batch: Batch) -> None:
    assert all(store.ingest_many(CLIENT, batch).results)


def cost(store: Store, rounds: int, size: int) -> None:
    ways: dict[str, Callable[[Store, Batch], None]] = {
        "ingest": one_by_one,
        "ingest_many": at_once,
    }
    at_once(store, stage(store, 1))  # the channel exists before timing starts
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            batch = stage(store, size)
            started = time.perf_counter()
            way(store, batch)
            times[name].append((time.perf_counter() - started) / size * 1e6)
    for name, got in times.items():
        print(f"{name:12} {statistics.median(got):6.1f} us/message (batches of {size})")


async def commit_files(store: Store, syncer: Syncer, batch: Batch) -> None:
    await syncer.data([path for *_, path in batch])
    await syncer.entries(store.ingest_many(CLIENT, batch))


async def commit_syncfs_dirs(store: Store, syncer: Syncer, batch: Batch) -> None:
    store.flush()
    await syncer.entries(store.ingest_many(CLIENT, batch))


async def commit_syncfs_twice(store: Store, syncer: Syncer, batch: Batch) -> None:
    store.flush()
    store.ingest_many(CLIENT, batch)
    store.flush()


async def sync(store: Store, rounds: int, sizes: list[int]) -> None:
    ways = {
        "files": commit_files,
        "syncfs x2": commit_syncfs_twice,
        "syncfs+dirs": commit_syncfs_dirs,
    }
    syncer = Syncer(store, files_max=max(sizes))
    await commit_files(store, syncer, stage(store, 1))
    for size in sizes:
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                batch = stage(store, size)
                started = time.perf_counter()
                await way(store, syncer, batch)
                times[name].append((time.perf_counter() - started) * 1e3)
        print(
            f"{size:5} files: "
            + "; ".join(f"{name} {statistics.median(got):7.2f} ms (max {max(got):7.2f})" for name, got in times.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("cost", "sync"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000, help="messages per batch (cost)")
    parser.add_argument("--sizes", default="1,4,16,64,256,1000", help="batch sizes (sync)")
    parser.add_argument("--dir", default=None, help="where the store goes (default: temp dir)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dropr-bench-ingest-", dir=args.dir)
    try:
        store = Store(os.path.join(work, "store"), create=True)
        if args.what == "cost":
            cost(store, args.rounds, args.batch)
        else:
            sizes = [int(size) for size in args.sizes.split(",")]
            asyncio.run(sync(store, args.rounds, sizes))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
