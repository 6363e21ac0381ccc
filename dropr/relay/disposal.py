"""Disposal: what becomes of queued messages the relay is done with, and the spool's chores.

Acknowledged files leave the queue on a few remover threads; their names stay held until
then, so a scan started meanwhile skips them. With a retention they are renamed into
``sent/``. Without one, a small file goes to ``free/`` while that holds fewer than
``FREE_FILES``, for a put to write its message into (see ``dropr.spool``): on this file
system a create right after many deletes costs 300-700 µs of kernel time, a rename a few;
a producer writing 10,000 messages at a time into a spool cleared each time ran at 2-28k/s,
into one whose files came back through ``free/`` at 23k/s every time. Otherwise what an
unlink costs decides. A file put in the last
:func:`fresh_seconds` most likely has no blocks on the disk yet (the kernel writes dirty
data back after ``vm.dirty_expire_centisecs``): unlinking it frees nothing, so it is
unlinked at once. An older file's unlink frees blocks and, on a file system that discards
them at once, waits for the disk (80 µs here, a rename 14 µs): it is renamed into
``sent/``, which a sweeper thread clears, several files at once, off the relay's path.
Unlinking fresh files at once halves the file operations of a flowing queue and spares the
one ``sent/`` directory, whose lock every rename into it takes (the relay alone to
JetStream: 0.44 of nats-py's own rate before, 0.62 after). Where something flushes the
whole file system — a ``dropr-server`` on the same one, whose ``syncfs`` writes the spool's
files back too — even fresh files have blocks, and their unlink waits for the disk on the
remover threads, as the sweeper's would (a third of the relay's CPU in such a profile).

A message rejected, expired or otherwise undeliverable goes to ``failed/`` with its reason.
A name acknowledged or failed while a threaded scan was reading could still come back from
it: such names are remembered until that scan ends and dropped from its result, so they are
not sent twice.

A message queued for longer than ``max_age_minutes`` expires: when a scan reads it, or, for
the peers the relay is leaving alone (backing off, given up), in a periodic pass over the
buckets old enough to hold one. That pass and the other chores — a crashed producer's
leftovers in ``tmp/``, ``sent/`` past its retention — are blocking directory passes
(``housekeeping``), run on a worker thread of their own.

The message files of a request are read on the loop thread, one after the other, and a deep
queue's files were written long ago and may have left the page cache, so the batches of a
deep queue are prefetched (``posix_fadvise`` WILLNEED on a thread of their own) while the
batches before them are sent — all but the files put in the last fresh seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import spool as _spool
from .._impl import codec, scan
from . import housekeeping
from .config import RelayConfig
from .status import RelayStatus

log = logging.getLogger("dropr.relay")

REMOVERS = 4
"""Threads removing acknowledged files from the queue."""
RECOUNT_SECONDS = 0.25
"""How often a full ``free/`` is counted again (the producers take files out of it)."""
DIRTY_EXPIRE = "/proc/sys/vm/dirty_expire_centisecs"
CHORE_SECONDS = 60.0
TMP_CHORE_SECONDS = 600.0


class Disposal:
    """Moves ``spool``'s messages out of its queue and keeps its chores, as ``config`` says."""

    def __init__(self, config: RelayConfig, spool: _spool.Spool, status: RelayStatus) -> None:
        self.failed = 0
        self._status = status
        self._config = config
        self._spool = spool
        self._max_age_ns = int(config.max_age_minutes * 60 * 1e9)
        self._fresh_ns = int(fresh_seconds() * 1e9)
        self._expired = f"expired: queued for more than {config.max_age_minutes:g} minutes"
        self._finished: set[str] | None = None
        self._sweeping = False
        self._in_free = _count(spool.free_dir)
        self._counted = time.monotonic()
        self._due = {"tmp": 0.0, "sent": 0.0, "expire": 0.0}
        self._remover = ThreadPoolExecutor(REMOVERS, thread_name_prefix="dropr-relay-remove")
        self._sweeper = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-sweep")
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-prefetch")
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-chores")

    @property
    def due(self) -> float:
        """When :meth:`chores` has work again (monotonic seconds)."""
        return min(self._due.values())

    # -- finished messages -------------------------------------------------------------

    async def remove(self, names: list[str]) -> None:
        """Take acknowledged ``names`` out of the queue, on the remover threads: into
        ``sent/``, or without a retention into ``free/`` while it has room, else unlinked
        when fresh (see the module's docstring)."""
        if not names:
            return
        loop = asyncio.get_running_loop()
        keep = bool(self._config.keep_sent_minutes)
        fresh_after = 0 if keep else time.time_ns() - self._fresh_ns
        room = 0 if keep else await self._free_room(loop)
        count = min(REMOVERS, len(names))
        shares = [names[i::REMOVERS] for i in range(count)]
        rooms = [room // count + (i < room % count) for i in range(count)]
        moves = [
            loop.run_in_executor(self._remover, self._move_files, share, fresh_after, share_room)
            for share, share_room in zip(shares, rooms, strict=True)
        ]
        done = await asyncio.gather(*moves)
        self._in_free += sum(freed for freed, _ in done)
        if self._finished is not None:
            self._finished.update(names)
        if any(renamed for _, renamed in done) and not keep and not self._sweeping:
            self._sweeping = True
            sweep = loop.run_in_executor(self._sweeper, housekeeping.clear_sent, self._spool.sent_dir)
            sweep.add_done_callback(self._swept)

    async def _free_room(self, loop: asyncio.AbstractEventLoop) -> int:
        """How many more files ``free/`` takes: counted again, on a remover thread, when it
        looked full and was last counted more than :data:`RECOUNT_SECONDS` ago."""
        now = time.monotonic()
        if self._in_free >= _spool.FREE_FILES and now - self._counted >= RECOUNT_SECONDS:
            self._counted = now
            self._in_free = await loop.run_in_executor(self._remover, _count, self._spool.free_dir)
        return max(0, _spool.FREE_FILES - self._in_free)

    def _move_files(self, names: list[str], fresh_after: int, room: int) -> tuple[int, int]:
        """Rename up to ``room`` of ``names`` that are small files into ``free/``, unlink the
        others put at ``fresh_after`` (ns) or later, rename the rest into ``sent/`` (all of
        them when ``fresh_after`` is 0); how many went to ``free/`` and to ``sent/``."""
        locate = self._spool.queued_path
        sent_dir, free_dir = self._spool.sent_dir, self._spool.free_dir
        id_time_ns = codec.id_time_ns
        freed = renamed = 0
        for name in names:
            path = locate(name)
            try:
                if freed < room and _reusable(os.lstat(path)):
                    os.rename(path, os.path.join(free_dir, name))
                    freed += 1
                elif fresh_after and id_time_ns(name[1 : 1 + codec.ID_LEN]) >= fresh_after:
                    os.unlink(path)
                else:
                    os.rename(path, os.path.join(sent_dir, name))
                    renamed += 1
            except FileNotFoundError:
                pass
        return freed, renamed

    def _swept(self, done: asyncio.Future[int]) -> None:
        self._sweeping = False
        if not done.cancelled() and done.exception() is not None:
            log.warning("clearing sent/ failed: %s", done.exception())

    def fail(self, name: str, reason: str) -> None:
        """Move queued message ``name`` to ``failed/`` with ``reason`` (nothing if it is gone)."""
        try:
            self._spool.fail(name, reason)
        except FileNotFoundError:
            return
        if self._finished is not None:
            self._finished.add(name)
        try:
            messages = codec.parse_spool_name(name)[6]
        except ValueError:
            messages = 1  # not a message name: counted as one
        self.failed += messages
        self._status.failed(name, messages)
        log.warning("%s moved to failed/: %s", name, reason)

    def expire(self, name: str) -> None:
        """Fail ``name`` as queued for longer than ``max_age_minutes``."""
        self.fail(name, self._expired)

    def expiry_cutoff(self) -> int:
        """Messages whose ids were made before this (ns since the epoch) are expired; 0: none."""
        return time.time_ns() - self._max_age_ns if self._max_age_ns else 0

    def scan_started(self) -> None:
        """A scan runs on its thread: the names finished from now on are remembered."""
        self._finished = set()

    def scan_ended(self) -> Collection[str]:
        """The names finished since :meth:`scan_started`, no longer remembered."""
        finished, self._finished = self._finished, None
        return () if finished is None else finished

    def prefetch(self, names: list[str]) -> None:
        """Start reading the queued files ``names`` into the page cache, on the prefetch
        thread; not those put in the last fresh seconds, which are still in it (their blocks
        not even written yet)."""
        put_before = time.time_ns() - self._fresh_ns
        id_time_ns = codec.id_time_ns
        locate = self._spool.queued_path
        cold = [locate(name) for name in names if id_time_ns(name[1 : 1 + codec.ID_LEN]) < put_before]
        if cold:
            self._prefetcher.submit(_prefetch, cold)

    # -- chores ------------------------------------------------------------------------

    def chores(self, now: float, resting: Callable[[float], Collection[str]], held: Collection[str]) -> None:
        """Start the chores due at ``now``; ``resting(now)``: the fields of the peers left alone,
        ``held``: the names batches hold (expiry passes them over)."""
        due = self._due
        if now >= due["tmp"]:
            due["tmp"] = now + TMP_CHORE_SECONDS
            self._chore(housekeeping.clean_tmp, self._spool.tmp_dir)
        if now >= due["sent"]:
            due["sent"] = now + CHORE_SECONDS
            if self._config.keep_sent_minutes:
                self._chore(self._spool.wipe_sent, self._config.keep_sent_minutes)
        if now >= due["expire"]:
            due["expire"] = now + CHORE_SECONDS
            waiting = resting(now)
            if waiting and self._max_age_ns:
                args = (self._spool.queue_dir, waiting, self.expiry_cutoff(), self._config.scan_limit)
                self._chore(housekeeping.expired, *args, then=functools.partial(self._expire, held))

    def _chore(self, fn: Any, *args: Any, then: Any = None) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

        def finished(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                return
            exc = done.exception()
            if exc is not None:
                log.warning("%s failed: %s", fn.__name__, exc)
            elif then is not None:
                then(done.result())

        future.add_done_callback(finished)

    def _expire(self, held: Collection[str], names: list[str]) -> None:
        for name in names:
            if name not in held:
                self.expire(name)

    def close(self) -> None:
        """Wait for the work under way; without a retention, clear ``sent/`` a last time."""
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self._worker.shutdown(wait=True)
        self._remover.shutdown(wait=True)
        if not self._config.keep_sent_minutes:
            self._sweeper.submit(housekeeping.clear_sent, self._spool.sent_dir)
        self._sweeper.shutdown(wait=True)


def _reusable(info: os.stat_result) -> bool:
    """Whether a file is one to write again: regular, one link, at most ``REUSE_BYTES``."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_size <= _spool.REUSE_BYTES


def _count(path: str) -> int:
    """The files in directory ``path`` (0 when it is missing)."""
    try:
        return int(scan.count(path))
    except FileNotFoundError:
        return 0


def fresh_seconds() -> float:
    """How long after its put a file is taken to have no blocks on the disk yet: half the
    kernel's ``vm.dirty_expire_centisecs`` (30 s by default), so that a file written back
    early, or put a moment before a slow batch, is still most likely unlinked cheaply."""
    try:
        with open(DIRTY_EXPIRE) as setting:
            return int(setting.read()) / 200
    except (OSError, ValueError):
        return 15.0


def _prefetch(paths: list[str]) -> None:
    """Starts reading files into the page cache, so that sending them waits less on the disk.

    A deep queue was written long ago: its files may have left the cache, and libcurl reads
    each one on the event loop's thread, one after the other.
    """
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
