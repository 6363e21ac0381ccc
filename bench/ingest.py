"""The store's ingest path without HTTP: moving staged files into a store, and syncing them.

``cost``: microseconds per message to ingest batches of staged 200-byte files, one
``Store.ingest`` call per message against one ``Store.ingest_many`` call per batch and
against ``Store.commit`` without syncs (the whole path: verify, move in, answer); staging
the files is not timed. Rounds alternate the ways; medians are printed.

``sync``: milliseconds per batch for the durable commit of N staged files, by each way
the store can do it, alternating within each round:

- ``files``: ``fdatasync`` of each staged file in parallel, ingest, ``fsync`` of the
  directories that changed (what a commit does up to ``SYNC_FILES_MAX`` files);
- ``syncfs x2``: ``syncfs``, ingest, ``syncfs`` (what it does above);
- ``syncfs+dirs``: ``syncfs``, ingest, ``fsync`` of the changed directories (a mix that
  measured no better than ``syncfs x2``, shown for that reason);
- ``commit``: ``Store.commit``, which picks one of the first two by the batch's size.

The crossover between ``files`` and ``syncfs x2`` is where ``SYNC_FILES_MAX`` belongs. It
depends on the disk, and on how much other processes leave dirty on the same file system,
which ``syncfs`` writes too; measure on the machine that matters, several times.

``--threads N`` (``sync``) runs N such commits at once, each thread its own batches, and
prints milliseconds per batch of the whole (wall time / batches): how commits of
concurrent requests share their syncs.

    python bench/ingest.py cost [--rounds 5] [--batch 1000] [--dir DIR]
    python bench/ingest.py sync [--rounds 5] [--sizes 1,4,16,64,256,1000] [--threads 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dropr._impl import codec
from dropr.store import Store
from dropr.store.ingest import Staged
from dropr.store.sync import Syncer

CLIENT = "bench"
PAYLOAD = os.urandom(200)
CRC = zlib.crc32(PAYLOAD)

Batch = list[Staged]


def stage(store: Store, count: int) -> Batch:
    """``count`` staged files, as the server leaves them before its commit."""
    staging = store.staging("upload-")
    batch = []
    for _ in range(count):
        file = staging.open()
        file.write(PAYLOAD)
        file.close()
        batch.append(Staged(codec.new_id(), "bench", 5, len(PAYLOAD), CRC, file))
    return batch


def moves(batch: Batch) -> list[tuple[str, str, int, str]]:
    return [(m.channel, m.id, m.priority, m.file.path) for m in batch]


def one_by_one(store: Store, batch: Batch) -> None:
    for channel, msg_id, priority, path in moves(batch):
        assert store.ingest(channel, CLIENT, msg_id, priority, path)


def at_once(store: Store, batch: Batch) -> None:
    assert all(store.ingest_many(CLIENT, moves(batch)).results)


def unsynced_commit(store: Store, batch: Batch) -> None:
    assert all(status == "stored" for status, _ in store.commit(CLIENT, batch, sync=False).values())


def cost(store: Store, rounds: int, size: int) -> None:
    ways: dict[str, Callable[[Store, Batch], None]] = {
        "ingest": one_by_one,
        "ingest_many": at_once,
        "commit": unsynced_commit,
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


def commit_files(store: Store, syncer: Syncer, batch: Batch) -> None:
    syncer.data([m.file.path for m in batch])
    ingested = store.ingest_many(CLIENT, moves(batch))
    syncer.entries(ingested.directories, len(batch), ingested.created)


def commit_syncfs_dirs(store: Store, syncer: Syncer, batch: Batch) -> None:
    syncer.flush()
    ingested = store.ingest_many(CLIENT, moves(batch))
    syncer.entries(ingested.directories, len(batch), ingested.created)


def commit_syncfs_twice(store: Store, syncer: Syncer, batch: Batch) -> None:
    syncer.flush()
    store.ingest_many(CLIENT, moves(batch))
    syncer.flush()


def commit(store: Store, syncer: Syncer, batch: Batch) -> None:
    store.commit(CLIENT, batch)


def sync(store: Store, rounds: int, sizes: list[int], threads: int) -> None:
    ways = {
        "files": commit_files,
        "syncfs x2": commit_syncfs_twice,
        "syncfs+dirs": commit_syncfs_dirs,
        "commit": commit,
    }
    syncer = Syncer(store.path, files_max=max(sizes))
    pool = ThreadPoolExecutor(threads - 1 or 1)  # threads made once: a new thread's first syncs are slow
    commit_files(store, syncer, stage(store, 1))
    for size in sizes:
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                batches = [stage(store, size) for _ in range(threads)]
                started = time.perf_counter()
                others = [pool.submit(way, store, syncer, batch) for batch in batches[1:]]
                way(store, syncer, batches[0])
                for other in others:
                    other.result()
                times[name].append((time.perf_counter() - started) / threads * 1e3)
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
    parser.add_argument("--threads", type=int, default=1, help="commits at once (sync)")
    parser.add_argument("--dir", default=None, help="where the store goes (default: temp dir)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dropr-bench-ingest-", dir=args.dir)
    try:
        store = Store(os.path.join(work, "store"), create=True)
        if args.what == "cost":
            cost(store, args.rounds, args.batch)
        else:
            sizes = [int(size) for size in args.sizes.split(",")]
            sync(store, args.rounds, sizes, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
