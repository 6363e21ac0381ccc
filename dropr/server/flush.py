"""Making a batch durable before it is acknowledged, at the least cost for its size.

A batch is synced in two steps: the staged files' data before they are moved into the
store (so no entry can ever name a file whose data a crash lost), then the new directory
entries. A small batch syncs exactly what it wrote: ``fdatasync`` of each staged file,
then ``fsync`` of the directories its entries changed (the staging directory and one
queue per channel); the syncs of one step run in parallel threads, so the disk merges
their cache flushes. A large batch syncs the whole file system at each step instead
(``syncfs``): that costs less than dozens of ``fdatasync``, but it also writes whatever
other processes left dirty on that file system, so for a batch of a few messages it is
slower and has long tails. :data:`SYNC_FILES_MAX` is the crossover measured with
``bench/ingest.py sync``. A batch that created a channel or a ``names/`` text syncs the
file system for its entries too, since those lie in directories of their own.

``syncfs`` blocks for as long as the disk takes, so it runs in a worker thread and is
shared (group commit): a caller's writes are covered only by a sync that *starts* after
its call, so a caller arriving while a sync runs waits for the next one, which starts when
the running one ends and serves every caller queued meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..store import Ingested

SYNC_FILES_MAX = 16
"""Batches of up to this many files sync each file; larger ones sync the file system.

Measured on ext4 (2 cores, a disk shared with other writers): 1 file 1.5 ms against 4.4
for two ``syncfs``, 4 files 2.1 against 4.9, 16 files 7.2 against 7.2, 64 files 20 against
14 (medians of 15)."""
SYNC_THREADS = 16


class SyncableStore(Protocol):
    def flush(self) -> None: ...
    def sync_data(self, path: str) -> None: ...
    def sync_directory(self, path: str) -> None: ...


class Syncer:
    """The two sync steps of a batch for one store (see the module's docstring); batches of
    more than ``files_max`` files sync the file system instead."""

    def __init__(self, store: SyncableStore, files_max: int = SYNC_FILES_MAX) -> None:
        self._store = store
        self._files_max = files_max
        self._workers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="dropr-sync")
        self._flusher = Flusher(store.flush)

    async def data(self, staged: Sequence[str]) -> None:
        """Return once the content of every ``staged`` file is durable."""
        if len(staged) > self._files_max:
            await self._flusher.flush()
        elif staged:
            await self._each(self._store.sync_data, staged)

    async def entries(self, ingested: Ingested) -> None:
        """Return once the directory entries ``ingested`` made are durable."""
        if ingested.created or len(ingested.results) > self._files_max:
            await self._flusher.flush()
        elif ingested.directories:
            await self._each(self._store.sync_directory, ingested.directories)

    async def _each(self, sync: Callable[[str], None], paths: Sequence[str]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._fan_out, sync, paths)

    def _fan_out(self, sync: Callable[[str], None], paths: Sequence[str]) -> None:
        """``sync`` every path at once (this thread takes the first); raise the first error."""
        futures = [self._workers.submit(sync, path) for path in paths[1:]]
        try:
            sync(paths[0])
        finally:
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error


class Flusher:
    """Runs ``flush`` (blocking) in a thread, sharing each run between concurrent callers."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._running: asyncio.Task[None] | None = None
        self._queued: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        """Return once everything written before this call is durable (or raise OSError)."""
        if self._running is None:
            self._running = task = asyncio.ensure_future(self._run())
        elif self._queued is None:
            self._queued = task = asyncio.ensure_future(self._run_after(self._running))
        else:
            task = self._queued
        await asyncio.shield(task)

    async def _run_after(self, previous: asyncio.Task[None]) -> None:
        await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        await self._run()

    async def _run(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._flush)
        finally:
            if self._running is asyncio.current_task():
                self._running = None
