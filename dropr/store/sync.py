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

Every step blocks, and any number of threads may run them at once (the server commits
each request on a thread of its own). ``syncfs`` is shared between them (group commit): a
caller's writes are covered only by a sync that *starts* after its call, so a caller
arriving while a sync runs waits for the next one, which starts when the running one ends
and serves every caller that queued meanwhile.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import _files

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

SYNC_FILES_MAX = 16
"""Batches of up to this many files sync each file; larger ones sync the file system.

Measured on ext4 (2 cores, a disk shared with other writers): 1 file 1.5 ms against 4.4
for two ``syncfs``, 4 files 2.1 against 4.9, 16 files 7.2 against 7.2, 64 files 20 against
14 (medians of 15)."""
SYNC_THREADS = 16


class Syncer:
    """The two sync steps of a batch in the store at ``path`` (see the module's docstring);
    batches of more than ``files_max`` files sync the file system instead."""

    def __init__(self, path: str, files_max: int = SYNC_FILES_MAX) -> None:
        self.files_max = files_max
        self._flusher = Flusher(functools.partial(_files.sync_file_system, path))
        self._workers: ThreadPoolExecutor | None = None  # made on first use: consumers never sync
        self._making = threading.Lock()

    def data(self, staged: Sequence[str]) -> None:
        """Return once the content of every ``staged`` file is durable."""
        if len(staged) > self.files_max:
            self._flusher.flush()
        elif staged:
            self._each(_files.sync_data, staged)

    def entries(self, directories: Sequence[str], files: int, created: bool) -> None:
        """Return once the entries a batch of ``files`` made in ``directories`` are durable
        (``created``: it also made directories or ``names/`` texts)."""
        if created or files > self.files_max:
            self._flusher.flush()
        elif directories:
            self._each(_files.sync_directory, directories)

    def flush(self) -> None:
        """Make everything written to the store's file system so far durable (shared)."""
        self._flusher.flush()

    def _each(self, sync: Callable[[str], None], paths: Sequence[str]) -> None:
        """``sync`` every path at once (this thread takes the first); raise the first error."""
        workers = self._workers or self._start()
        futures = [workers.submit(sync, path) for path in paths[1:]]
        try:
            sync(paths[0])
        finally:
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def _start(self) -> ThreadPoolExecutor:
        from concurrent.futures import ThreadPoolExecutor

        with self._making:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="dropr-sync")
            return self._workers


class Flusher:
    """Runs a blocking ``flush`` for any number of threads, one run at a time, each run
    shared by every caller that arrived before it started."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._changed = threading.Condition()
        self._running: _Run | None = None
        self._queued: _Run | None = None

    def flush(self) -> None:
        """Return once everything written before this call is durable (or raise OSError)."""
        with self._changed:
            if self._running is None and self._queued is None:
                run = self._running = _Run()
            else:
                run = self._queued = self._queued or _Run()
                while self._running is not None and not run.done:
                    self._changed.wait()
                if not run.done:  # the first of its callers to see its turn runs it
                    self._running, self._queued = run, None
            lead = self._running is run
        if lead:
            try:
                self._flush()
            except BaseException as exc:
                run.error = exc
            with self._changed:
                run.done = True
                self._running = None
                self._changed.notify_all()
        if run.error is not None:
            raise run.error


class _Run:
    """One run of a :class:`Flusher`'s flush: whether it ended, and with which error."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
