"""The server-side store: what the server ingests and what consumers take, one file each."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

from .. import _files
from .. import limits as _limits
from .._impl import codec, scan
from ..errors import InvalidMessage, StoreError
from ..names import Names, check_channel, check_client_id, check_priority
from . import claims
from .claims import RetryPolicy
from .layout import (
    ATTEMPTS,
    CHANNELS,
    CLAIMED,
    DEAD,
    DELAYED,
    NAMES,
    PROCESSED,
    QUEUE,
    STATES,
    TMP,
)
from .message import Message

PathLike = str | os.PathLike[str]

_CACHE_LIMIT = 4096
_SCAN_SHARE = 10  # reuse a scan ten times as long as it took: at most ~1/10 of the time scanning
_OPEN_CHANNELS = 64  # channels whose state directories stay open, five descriptors each
# A batch lists a state directory instead of probing each of its N names when the directory
# is at most _LIST_BYTES * N bytes: an entry takes 20 bytes (tmpfs) to ~40 (ext4), and
# reading one costs a small fraction of a probe. Up to _PROBE_MAX names are always probed.
_LIST_BYTES = 64
_PROBE_MAX = 16


class Ingested(NamedTuple):
    """What :meth:`Store.ingest_many` did, and what to sync before acknowledging it.

    The staged files' data must have been made durable before the call (for example
    :meth:`Store.sync_data` on each, or :meth:`Store.flush`). After it, syncing the
    ``directories`` (:meth:`Store.sync_directory`) makes the new entries durable — or
    :meth:`Store.flush` when ``created`` says that new directories or ``names/`` texts
    came into being, whose entries lie elsewhere.
    """

    results: list[bool | str]
    directories: tuple[str, ...]
    created: bool


class Store:
    """A store directory (see :mod:`dropr.store.layout`); ``create`` makes a missing one.

    Safe to use from several processes at once: the server ingesting while consumers claim.
    ``max_attempts``, ``retry_delay`` and ``max_retry_delay`` set how failed messages are
    retried (see :class:`~dropr.store.claims.RetryPolicy`); ``sweep_interval`` bounds how
    long this process may take to notice other processes' expired claims. A claim may use
    the names an earlier claim's scan saw for ``rescan_interval`` seconds (or ten times as
    long as that scan took, in a deep queue): a message that arrives meanwhile is claimed in
    its order from the next scan on.
    """

    def __init__(
        self,
        path: PathLike,
        create: bool = False,
        *,
        limits: _limits.Limits | None = None,
        max_attempts: int = 5,
        retry_delay: float = 10.0,
        max_retry_delay: float = 3600.0,
        sweep_interval: float = 1.0,
        rescan_interval: float = 0.05,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.limits = limits or _limits.DEFAULT
        self.retry = RetryPolicy(max_attempts, retry_delay, max_retry_delay)
        self.sweep_interval = sweep_interval
        self.rescan_interval = rescan_interval
        self.staging_dir = os.path.join(self.path, TMP)
        self.channels_dir = os.path.join(self.path, CHANNELS)
        self._names = Names(os.path.join(self.path, NAMES))
        self._channel_dirs: dict[str, str] = {}
        self._client_fields: dict[str, str] = {}
        self._clients: dict[str, str] = {}
        self._next_sweep: dict[str, float] = {}
        self._seen: dict[str, tuple[float, list[str]]] = {}
        self._state_fds: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        if create:
            for name in (TMP, NAMES, CHANNELS):
                os.makedirs(os.path.join(self.path, name), _files.DIR_MODE, exist_ok=True)
        elif not os.path.isdir(self.channels_dir):
            raise StoreError(errno.ENOENT, f"not a store (no channels/ directory): {self.path}")

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # -- server side -------------------------------------------------------------------

    def ingest(self, channel: str, client: str, msg_id: str, priority: int, staged: str) -> bool:
        """Move the complete file ``staged`` into ``channel``'s queue as message ``msg_id``.

        False (and ``staged`` removed) when this client's message is already held in any
        state; InvalidMessage (and nothing changed) for a bad argument. One message of
        :meth:`ingest_many`, which a caller with a batch should use instead.
        """
        [result] = self.ingest_many(client, [(channel, msg_id, priority, staged)]).results
        if isinstance(result, str):
            raise InvalidMessage(result)
        return result

    def ingest_many(self, client: str, messages: Iterable[tuple[str, str, int, str]]) -> Ingested:
        """Move complete staged files into their channels' queues, one batch of ``client``.

        Each message is ``(channel, msg_id, priority, staged)``. Its result is True when
        stored, False when already held in any state (``staged`` removed), or the reason it
        was refused (``staged`` left alone, nothing changed for it). The client and each
        distinct channel are checked once, and the state directories are probed through
        open descriptors. Nothing is synced here: see :class:`Ingested`.
        """
        batch = list(messages)
        if client not in self._client_fields:
            try:
                check_client_id(client, self.limits)
            except InvalidMessage as exc:
                return Ingested([str(exc)] * len(batch), (), False)
        results: list[bool | str] = [False] * len(batch)
        by_channel: dict[str, list[tuple[int, int, str, str]]] = {}
        refused: dict[str, str] = {}
        for index, (channel, msg_id, priority, staged) in enumerate(batch):
            problem = _message_problem(msg_id, priority)
            if not problem and channel not in by_channel:
                problem = refused.get(channel) or self._channel_problem(channel)
                if problem:
                    refused[channel] = problem
                else:
                    by_channel[channel] = []
            if problem:
                results[index] = problem
            else:
                by_channel[channel].append((index, priority, msg_id, staged))
        if not by_channel:
            return Ingested(results, (), False)
        written = self._names.written
        client_field = self._client_field(client)
        directories = [self.staging_dir]
        created = False
        with self._lock:
            for channel, items in by_channel.items():
                channel_dir = self._channel_dir(channel)
                created |= self._move_in(channel_dir, client_field, items, results)
                directories.append(os.path.join(channel_dir, QUEUE))
        return Ingested(results, tuple(directories), created or self._names.written != written)

    def close(self) -> None:
        """Close the directories :meth:`ingest_many` keeps open (reopened when needed)."""
        with self._lock:
            fds = [fd for dir_fds in self._state_fds.values() for fd in dir_fds]
            self._state_fds.clear()
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_state_fds", None):
            self.close()

    def sync_data(self, path: str) -> None:
        """Make the content of one file (a staged upload) durable."""
        _files.sync_data(path)

    def sync_directory(self, path: str) -> None:
        """Make the entries of one directory (see :attr:`Ingested.directories`) durable."""
        _files.sync_directory(path)

    def flush(self) -> None:
        """Make everything written to the store so far durable (one ``syncfs``: the whole
        file system, other processes' writes included)."""
        _files.sync_file_system(self.path)

    # -- consumers ---------------------------------------------------------------------

    def channels(self) -> list[str]:
        """The channels that have received messages, sorted."""
        return sorted(self._text(entry) for entry in os.listdir(self.channels_dir) if not entry.startswith("."))

    def has_channel(self, channel: str) -> bool:
        """Whether ``channel`` has received messages."""
        return os.path.isdir(os.path.join(self._channel_dir(channel), QUEUE))

    def messages(self, channel: str, limit: int | None = None) -> list[Message]:
        """The queued messages of ``channel`` in delivery order (not claimed: see :meth:`claim`)."""
        channel_dir = self._channel_dir(channel)
        self._sweep(channel_dir)
        queue = os.path.join(channel_dir, QUEUE)
        try:
            names = scan.scan(queue, scan.count(queue) if limit is None else _count(limit))
        except FileNotFoundError:
            return []
        return [self._message(channel, queue, name) for name in names]

    def claim(self, channel: str, limit: int, lease: float) -> list[Message]:
        """Take up to ``limit`` messages of ``channel`` for ``lease`` seconds, in delivery order.

        Each message goes to one claimant only. One neither processed, failed nor released
        before its lease ends returns to the queue for another consumer.
        """
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        channel_dir = self._channel_dir(channel)
        now = time.time()
        self._sweep(channel_dir, now)
        until = now + lease
        fresh_until, seen = self._seen.pop(channel_dir, (0.0, []))
        if now >= fresh_until:
            seen = []
        names, untried, scanning = claims.claim(channel_dir, _count(limit), until, seen)
        if scanning:
            fresh_until = now + max(self.rescan_interval, _SCAN_SHARE * scanning)
        if untried:
            self._seen[channel_dir] = (fresh_until, untried)
        if names:
            self._next_sweep[channel_dir] = min(self._next_sweep[channel_dir], until)
        claimed = os.path.join(channel_dir, CLAIMED)
        return [self._message(channel, claimed, name) for name in names]

    def release(self, message: Message) -> None:
        """Return a claimed message to the queue at once (nothing if it is there already)."""
        target = self._state_path(message, QUEUE)
        try:
            os.rename(message.path, target)
        except FileNotFoundError:
            return
        message.path = target
        self._seen.pop(self._channel_dir(message.channel), None)

    def set_processed(self, message: Message) -> None:
        """Mark ``message`` done: it moves to ``processed/`` until wiped.

        A message whose lease ran out and that went back to the queue is still taken from
        there; StoreError if it is nowhere to be taken from.
        """
        target = self._state_path(message, PROCESSED)
        for source in (message.path, self._state_path(message, QUEUE)):
            try:
                os.rename(source, target)
            except FileNotFoundError:
                continue
            message.path = target
            return
        if not os.path.lexists(target):
            raise StoreError(errno.ENOENT, f"message {message.id} of {message.channel!r} is no longer held")
        message.path = target

    def set_failed(self, message: Message, reason: str) -> None:
        """Record a failed attempt: the message is retried later, or becomes a dead letter."""
        channel_dir = self._channel_dir(message.channel)
        now = time.time()
        try:
            due = claims.fail(channel_dir, message.name, message.path, str(reason), now, self.retry)
        except FileNotFoundError:
            raise StoreError(errno.ENOENT, f"message {message.id} of {message.channel!r} is no longer held") from None
        state = DEAD if due is None else DELAYED
        message.path = self._state_path(message, state)
        if due is not None and channel_dir in self._next_sweep:
            self._next_sweep[channel_dir] = min(self._next_sweep[channel_dir], due)

    def dead_letters(self, channel: str) -> list[Message]:
        """The dead letters of ``channel`` in delivery order, with their attempts and reasons."""
        channel_dir = self._channel_dir(channel)
        dead = os.path.join(channel_dir, DEAD)
        found = []
        for name in _names(dead):
            message = self._message(channel, dead, name)
            attempts, reasons = claims.read_attempts(channel_dir, name)
            message.attempts, message.reasons = attempts, tuple(reasons)
            found.append(message)
        return found

    def requeue_dead(self, channel: str, ids: Iterable[str] | None = None) -> int:
        """Put dead letters back in the queue (all, or those with these ids); how many moved.

        StoreError, before anything moves, if an id is not among the dead letters.
        """
        channel_dir = self._channel_dir(channel)
        names = _names(os.path.join(channel_dir, DEAD))
        if ids is not None:
            wanted = set(ids)
            by_id = {name[1:31]: name for name in names}
            unknown = sorted(wanted - by_id.keys())
            if unknown:
                raise StoreError(errno.ENOENT, f"not a dead letter of {channel!r}: {', '.join(unknown)}")
            names = [name for name in names if name[1:31] in wanted]
        return claims.requeue_dead(channel_dir, names)

    def count_queued(self, channel: str) -> int:
        """How many messages of ``channel`` wait in its queue (claimed and delayed ones not)."""
        channel_dir = self._channel_dir(channel)
        self._sweep(channel_dir)
        return _count_dir(os.path.join(channel_dir, QUEUE))

    def count_processed(self, channel: str) -> int:
        """How many processed messages of ``channel`` are kept."""
        return _count_dir(os.path.join(self._channel_dir(channel), PROCESSED))

    def processed(self, channel: str) -> list[Message]:
        """The processed messages of ``channel`` still kept, in delivery order."""
        directory = os.path.join(self._channel_dir(channel), PROCESSED)
        return [self._message(channel, directory, name) for name in _names(directory)]

    def wipe_processed(self, minutes: float, channel: str | None = None) -> int:
        """Remove processed messages done ``minutes`` ago or earlier; how many went.

        The time a message was processed is the change time (ctime) its last rename set.
        """
        if not minutes >= 0:
            raise ValueError(f"minutes must be zero or more, not {minutes!r}")
        cutoff = time.time() - minutes * 60
        channels = self.channels() if channel is None else [channel]
        removed = 0
        for name in channels:
            removed += _wipe(self._channel_dir(name), cutoff)
        return removed

    # -- internals ---------------------------------------------------------------------

    def _channel_dir(self, channel: str) -> str:
        """The directory of a valid channel (the text of a compact one kept in names/)."""
        path = self._channel_dirs.get(channel)
        if path is None:
            check_channel(channel, self.limits)
            path = os.path.join(self.channels_dir, self._names.register(channel))
            _remember(self._channel_dirs, channel, path)
        return path

    def _channel_problem(self, channel: str) -> str:
        if channel in self._channel_dirs:
            return ""
        try:
            check_channel(channel, self.limits)
        except InvalidMessage as exc:
            return str(exc)
        return ""

    def _move_in(
        self,
        channel_dir: str,
        client_field: str,
        items: list[tuple[int, int, str, str]],
        results: list[bool | str],
    ) -> bool:
        """Ingest one channel's share of a batch (under the lock); True if the channel's
        directories had to be created."""
        fds, created = self._open_states(channel_dir)
        names = [codec.store_name(prio, msg_id, client_field) for _, prio, msg_id, _ in items]
        fresh = set(_unheld(fds, names))
        for position, (index, _, _, staged) in enumerate(items):
            if position not in fresh:
                _files.remove(staged)
                continue
            try:
                results[index] = _move(staged, fds[0], names[position])
            except FileNotFoundError:
                if not os.path.lexists(staged):
                    raise
                # The channel's directories were removed under us: open (or make) them anew.
                self._close_states(channel_dir)
                fds, made = self._open_states(channel_dir)
                created |= made
                results[index] = _move(staged, fds[0], names[position])
        return created

    def _open_states(self, channel_dir: str) -> tuple[tuple[int, ...], bool]:
        """Descriptors of a channel's state directories (queue first), made if missing."""
        fds = self._state_fds.get(channel_dir)
        if fds is not None:
            return fds, False
        created = False
        try:
            fds = _open_dirs(channel_dir, STATES)
        except FileNotFoundError:
            self._make_channel(channel_dir)
            created = True
            fds = _open_dirs(channel_dir, STATES)
        if len(self._state_fds) >= _OPEN_CHANNELS:
            for old in self._state_fds.values():
                _close_all(old)
            self._state_fds.clear()
        self._state_fds[channel_dir] = fds
        return fds, created

    def _close_states(self, channel_dir: str) -> None:
        _close_all(self._state_fds.pop(channel_dir, ()))

    def _client_field(self, client: str) -> str:
        name = self._client_fields.get(client)
        if name is None:
            check_client_id(client, self.limits)
            name = _remember(self._client_fields, client, self._names.register(client))
        return name

    def _client(self, name: str) -> str:
        text = self._clients.get(name)
        if text is None:
            text = _remember(self._clients, name, self._text(name))
        return text

    def _text(self, name: str) -> str:
        """The text of a channel or client field; the field itself when its text is lost."""
        try:
            return self._names.resolve(name)
        except (OSError, ValueError):
            return name

    def _make_channel(self, channel_dir: str) -> None:
        """Create a channel's directories all at once: built aside, then renamed into place."""
        tmp = os.path.join(self.channels_dir, f".new.{os.getpid()}.{os.urandom(4).hex()}")
        os.mkdir(tmp, _files.DIR_MODE)
        try:
            for state in (*STATES, ATTEMPTS):
                os.mkdir(os.path.join(tmp, state), _files.DIR_MODE)
            try:
                os.rename(tmp, channel_dir)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _message(self, channel: str, directory: str, name: str) -> Message:
        priority, msg_id, client = codec.parse_store_name(name)
        return Message(
            msg_id,
            self._client(client),
            channel,
            priority,
            codec.id_time_ns(msg_id) / 1e9,
            name,
            f"{directory}{os.sep}{name}",
        )

    def _state_path(self, message: Message, state: str) -> str:
        return f"{self._channel_dir(message.channel)}{os.sep}{state}{os.sep}{message.name}"

    def _sweep(self, channel_dir: str, now: float | None = None) -> None:
        """Requeue what is due in this channel, unless nothing can be due yet."""
        if now is None:
            now = time.time()
        if now < self._next_sweep.get(channel_dir, 0.0):
            return
        moved, earliest = claims.requeue_due(channel_dir, now)
        self._next_sweep[channel_dir] = min(now + self.sweep_interval, earliest)
        if moved:
            self._seen.pop(channel_dir, None)


def _remember(cache: dict[str, str], key: str, value: str) -> str:
    """Keep ``value`` for ``key`` in a cache of at most _CACHE_LIMIT entries; ``value``."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _message_problem(msg_id: str, priority: int) -> str:
    """Why ``(msg_id, priority)`` cannot name a message, or "" when it can."""
    if not isinstance(msg_id, str) or not codec.is_message_id(msg_id):
        return f"message id must be 30 lower-case hex digits, not {msg_id!r}"
    if type(priority) is not int or not 0 <= priority <= 9:
        try:
            check_priority(priority)
        except InvalidMessage as exc:
            return str(exc)
    return ""


def _open_dirs(parent: str, names: tuple[str, ...]) -> tuple[int, ...]:
    fds: list[int] = []
    try:
        for name in names:
            fds.append(os.open(os.path.join(parent, name), _files.DIR_FLAGS))
    except BaseException:
        _close_all(fds)
        raise
    return tuple(fds)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


def _unheld(state_fds: tuple[int, ...], names: list[str]) -> list[int]:
    """The positions of ``names`` held in none of the state directories.

    The states are looked at in the order messages flow forward (queue, claimed, then
    delayed, processed, dead), each after the one before, so a message a consumer moves
    forward meanwhile is seen in its next state; every move back ends in the queue, where
    :func:`_move` refuses to replace. A directory small next to the names looked for is
    listed once; otherwise each name is probed (``faccessat``: no exception when missing).
    """
    left = list(range(len(names)))
    for fd in state_fds:
        if not left:
            break
        if len(left) > _PROBE_MAX and os.fstat(fd).st_size <= _LIST_BYTES * len(left):
            present = set(os.listdir(fd))
            left = [i for i in left if names[i] not in present]
        else:
            left = [i for i in left if not _held_in(fd, names[i])]
    return left


def _held_in(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in the directory ``dir_fd`` (a symlink is not followed)."""
    return os.access(name, os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


def _move(staged: str, queue_fd: int, name: str) -> bool:
    """Give the file ``staged`` the name ``name`` in the queue without replacing one that
    exists there; the staged name goes either way. False if ``name`` was taken."""
    try:
        os.link(staged, name, dst_dir_fd=queue_fd, follow_symlinks=False)
    except FileExistsError:
        os.unlink(staged)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A file system without hard links: the check just before is the guard.
        if _held_in(queue_fd, name):
            os.unlink(staged)
            return False
        os.rename(staged, name, dst_dir_fd=queue_fd)
        return True
    os.unlink(staged)
    return True


def _count(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a whole number, zero or more, not {limit!r}")
    return limit


def _count_dir(path: str) -> int:
    try:
        return int(scan.count(path))
    except FileNotFoundError:
        return 0


def _names(directory: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if not name.startswith("."))
    except FileNotFoundError:
        return []


def _wipe(channel_dir: str, cutoff: float) -> int:
    processed = os.path.join(channel_dir, PROCESSED)
    attempts = os.path.join(channel_dir, ATTEMPTS)
    try:
        failed_before = {name for name in os.listdir(attempts) if not name.startswith(".")}
    except FileNotFoundError:
        failed_before = set()
    removed = 0
    try:
        entries = os.scandir(processed)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_ctime > cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
            if entry.name in failed_before:
                _files.remove(os.path.join(attempts, entry.name))
    return removed
