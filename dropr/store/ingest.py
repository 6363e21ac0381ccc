"""The ingest side of a store, and the one path by which messages enter it.

:meth:`IngestSide.commit` takes a batch of staged files (:mod:`.staging`) and answers for
each message: **verify** its size and CRC-32 against what its sender declared
(:func:`dropr.protocol.mismatch`), **make it durable** — the verified files' data synced,
each moved into its channel's queue under its final name without replacing anything
(once the channel has consumer groups, hard-linked into each group's queue instead, under
the channel's shared lock: see :mod:`.layout`; a message held already, by client and id in
any state, is a duplicate: acknowledged again, kept once), then the new directory entries
synced (:mod:`.sync` picks how for the batch's
size) — and only then **answer** (:data:`dropr.protocol.Acks`). A staged file shared by
several messages (the small ones of a request, see :func:`.staging.write_held`) is linked
under each message's name and leaves the staging area once they are all in (or, with some
refused, once the last of them is answered). The HTTP server (which
stages each part as it streams in) and the local transport (which stages spool files by
hard link, or a batch file's messages by copy) both commit through it.

A message due later (its put time, the time in its id, plus its delay) goes into its
channel's ``delayed/`` instead, its mtime that time, as a failed message waits for its retry:
no consumer can claim it before, and the first to look after moves it into the queue. Its
timestamp is made durable with the batch, by a flush of the file system.

A commit blocks on the disk, and any number of threads may commit at once: the moves of
one batch into the queues run under a lock (they are quick, and the duplicate checks need
them to), while the syncs of different batches overlap and share each ``syncfs``.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .. import _files
from .. import limits as _limits
from .._impl import codec, moves
from ..errors import InvalidMessage
from ..names import check_channel, check_client_id, check_message_id, check_priority
from ..protocol import DUPLICATE, REJECTED, STORED, Acks, mismatch
from .bounds import Bounds
from .layout import (
    DELAYED,
    INGESTED,
    QUEUE,
    STATES,
    PathLike,
    StoreDirectory,
    group_roots,
    locked,
    make_channel,
    remember,
)
from .staging import StagedFile, Staging, shared_payload
from .sync import Syncer

_OPEN_CHANNELS = 64  # channels whose state directories stay open, five descriptors each
# A batch lists a state directory instead of probing each of its N names when the directory
# is at most _LIST_BYTES * N bytes: an entry takes 20 bytes (tmpfs) to ~40 (ext4), and
# reading one costs a small fraction of a probe. Up to _PROBE_MAX names are always probed.
_LIST_BYTES = 64
_PROBE_MAX = 16
_STORED = (STORED, "")
_DUPLICATE = (DUPLICATE, "already held")
_DELAYED_FD = STATES.index(DELAYED)
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
"""How a file system without hard links refuses one; its queues get copies instead."""

Move = tuple[str, str, int, str] | tuple[str, str, int, str, float]
"""A message for :meth:`IngestSide.ingest_many`: ``(channel, msg_id, priority, staged)``,
and when it is due later, the time (seconds since the epoch) before which none may claim it."""


class Staged(NamedTuple):
    """One message of a batch to commit: what its sender declared, and its staged file.

    ``size`` and ``crc`` are the declared size and CRC-32; a ``size`` below zero declares
    nothing (the manifest-less form of the protocol), and the file is taken as it is.
    ``delay_ms``: how long after its put time (the time in its id) it may be claimed.
    """

    id: str
    channel: str
    priority: int
    size: int
    crc: int
    file: StagedFile
    delay_ms: int = 0

    def due(self) -> float:
        """When the message may be claimed (seconds since the epoch); 0: at once."""
        return codec.id_time_ns(self.id) / 1e9 + self.delay_ms / 1e3 if self.delay_ms else 0.0


class Ingested(NamedTuple):
    """What :meth:`IngestSide.ingest_many` did, and what to sync before acknowledging it.

    The staged files' data must have been made durable before the call (for example
    :meth:`IngestSide.sync_data` on each, or :meth:`IngestSide.flush`). After it, syncing
    the ``directories`` (:meth:`IngestSide.sync_directory`) makes the new entries durable
    — or :meth:`IngestSide.flush` when ``created`` says that new directories, ``names/``
    texts or delayed messages came into being, whose entries lie elsewhere or whose
    timestamps only a flush makes durable. :meth:`IngestSide.commit` does all of that.
    """

    results: list[bool | str]
    directories: tuple[str, ...]
    created: bool


class IngestSide(StoreDirectory):
    """The side of a store that takes messages in (the server and the local transport).

    Safe to use from several threads, and beside other processes using the same store.
    """

    def __init__(self, path: PathLike, create: bool = False, *, limits: _limits.Limits | None = None) -> None:
        super().__init__(path, create, limits=limits)
        self._syncer = Syncer(self.path)
        self._moving = threading.Lock()  # held by one batch's checks and moves at a time
        self._registered: dict[str, str] = {}  # channel -> its directory, its text in names/
        self._client_fields: dict[str, str] = {}
        self._state_fds: dict[str, tuple[int, ...]] = {}
        self._bounds = Bounds(os.path.join(self.path, INGESTED))

    def staging(self, prefix: str) -> Staging:
        """Fresh staged files in this store, named ``prefix``… (the sender's own prefix, by
        which what it left behind when it died is found again)."""
        return Staging(self.staging_dir, prefix)

    def commit(self, client: str, staged: Sequence[Staged], *, sync: bool = True) -> Acks:
        """Verify, make durable and answer for one batch of ``client`` (see the module's
        docstring); with ``sync`` false nothing is synced (fast, not crash-safe).

        The staged files are the store's from this call on: each ends in a queue or is
        removed, whatever happens. OSError (a full disk, a failing one): nothing of the
        batch may be acknowledged; what of it got into a queue is a duplicate when resent.
        """
        acks: Acks = {}
        verified: list[Staged] = []
        try:
            for message in staged:
                file = message.file
                problem = message.size >= 0 and mismatch(message.size, message.crc, file.size, file.crc)
                if problem:
                    acks[message.id] = (REJECTED, problem)
                    file.discard()
                else:
                    verified.append(message)
            if not verified:
                return acks
            if sync:
                self._syncer.data(list(dict.fromkeys(m.file.path for m in verified)))
            ingested = self.ingest_many(client, [(m.channel, m.id, m.priority, m.file.path, m.due()) for m in verified])
            for message, result in zip(verified, ingested.results, strict=True):
                if result is True or result is False:
                    message.file.handed_over()
                    acks[message.id] = _STORED if result else _DUPLICATE
                else:
                    acks[message.id] = (REJECTED, result)
            if sync:
                self._syncer.entries(ingested.directories, len(verified), ingested.created)
        finally:
            for message in staged:
                if message.file.path:
                    message.file.discard()
        return acks

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

    def ingest_many(self, client: str, messages: Iterable[Move]) -> Ingested:
        """Move complete staged files into their channels' queues, one batch of ``client``.

        Each message is a :data:`Move`; one due later than now goes into ``delayed/``, its
        mtime set to when it is due. Its result is True when stored, False when already held
        in any state (``staged`` removed), or the reason it was refused (``staged`` left
        alone, nothing changed for it). The client and each distinct channel are checked
        once, and the state directories are probed through open descriptors. Nothing is
        synced here: see :class:`Ingested`.
        """
        batch = list(messages)
        with self._moving:
            if client not in self._client_fields:
                try:
                    check_client_id(client, self.limits)
                except InvalidMessage as exc:
                    return Ingested([str(exc)] * len(batch), (), False)
            results: list[bool | str] = [False] * len(batch)
            by_channel: dict[str, list[tuple[int, int, str, str, float]]] = {}
            refused: dict[str, str] = {}
            now = time.time()
            for index, message in enumerate(batch):
                channel, msg_id, priority, staged = message[:4]
                due = message[4] if len(message) > 4 and message[4] > now else 0.0
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
                    by_channel[channel].append((index, priority, msg_id, staged, due))
            if not by_channel:
                return Ingested(results, (), False)
            written = self.names.written
            client_field = self._client_field(client)
            directories = [self.staging_dir]
            created = False
            uses = collections.Counter(item[3] for items in by_channel.values() for item in items)
            shared = {path for path, count in uses.items() if count > 1}
            ids = [item[2] for items in by_channel.values() for item in items]
            with self._bounds.holding(client_field, ids) as above:
                for channel, items in by_channel.items():
                    channel_dir = self._registered_dir(channel)
                    made, moved_into = self._move_in(channel_dir, client_field, items, results, shared, above)
                    directories += moved_into
                    # A delayed message's due time is its mtime: only a flush makes that durable.
                    created |= made or any(item[4] for item in items)
            for path in shared:  # all its names are in: claims may take them now
                _complete(path)
            return Ingested(results, tuple(directories), created or self.names.written != written)

    def sync_data(self, path: str) -> None:
        """Make the content of one file (a staged upload) durable."""
        _files.sync_data(path)

    def sync_directory(self, path: str) -> None:
        """Make the entries of one directory (see :attr:`Ingested.directories`) durable."""
        _files.sync_directory(path)

    def flush(self) -> None:
        """Make everything written to the store so far durable: one ``syncfs`` of its file
        system (other processes' writes included), shared with concurrent commits."""
        self._syncer.flush()

    def close(self) -> None:
        """Close the directories :meth:`ingest_many` keeps open (reopened when needed)."""
        with self._moving:
            fds = [fd for dir_fds in self._state_fds.values() for fd in dir_fds]
            self._state_fds.clear()
            self._bounds.close()
        _close_all(fds)

    def __del__(self) -> None:
        if getattr(self, "_state_fds", None):
            self.close()

    def _client_field(self, client: str) -> str:
        name = self._client_fields.get(client)
        if name is None:
            check_client_id(client, self.limits)
            name = remember(self._client_fields, client, self.names.register(client))
        return name

    def _channel_problem(self, channel: str) -> str:
        """Why ``channel`` cannot be one, or "" when it can."""
        if channel in self._registered:
            return ""
        try:
            check_channel(channel, self.limits)
        except InvalidMessage as exc:
            return str(exc)
        return ""

    def _registered_dir(self, channel: str) -> str:
        """The directory of a valid channel (its text kept in names/ first when compact)."""
        path = self._registered.get(channel)
        if path is None:
            path = os.path.join(self.channels_dir, self.names.register(check_channel(channel, self.limits)))
            remember(self._registered, channel, path)
        return path

    def _move_in(
        self,
        channel_dir: str,
        client_field: str,
        items: list[tuple[int, int, str, str, float]],
        results: list[bool | str],
        shared: set[str],
        above: str | None,
    ) -> tuple[bool, list[str]]:
        """Ingest one channel's share of a batch (under the lock, the channel's shared);
        whether its directories had to be created, and the directories that got messages.
        A staged file of ``shared`` holds several messages: it is linked, never moved or
        removed (its staged name goes with the last of them, see ``StagedFile``). Ids
        ``above`` the client's highest stored one are not looked for (see :mod:`.bounds`)."""
        names = [codec.store_name(prio, msg_id, client_field) for _, prio, msg_id, _, _ in items]
        created = delayed = False
        done = 0
        while True:
            fds, made = self._open_states(channel_dir)
            created |= made
            try:
                with locked(fds[0], exclusive=False), _Targets(channel_dir, fds) as targets:
                    fresh = set() if above is None else {i for i in range(done, len(items)) if items[i][2] > above}
                    fresh.update(_unheld(targets.held, names, [i for i in range(done, len(items)) if i not in fresh]))
                    while done < len(items):
                        index, _, _, staged, due = items[done]
                        if done not in fresh:
                            if staged not in shared:
                                _files.remove(staged)
                            done += 1
                        elif due:
                            os.utime(staged, (due, due))  # before it shows in delayed/, which goes by mtime
                            results[index] = _move(staged, targets.into(_DELAYED_FD), names[done])
                            delayed = True
                            done += 1
                        else:  # with the fresh ones due now after it, in one batch
                            keep = staged in shared
                            end = done + 1
                            while end in fresh and not items[end][4] and (items[end][3] in shared) == keep:
                                end += 1
                            done += _link_in(items, names, done, end, targets.into(0), results, keep)
                    return created, targets.dirs(QUEUE) + (targets.dirs(DELAYED) if delayed else [])
            except FileNotFoundError:
                if not os.path.lexists(items[done][3]):
                    raise
                # The channel's directories were removed under us: open (or make) them anew.
                self._close_states(channel_dir)

    def _open_states(self, channel_dir: str) -> tuple[tuple[int, ...], bool]:
        """Descriptors of a channel's state directories (queue first), made if missing."""
        fds = self._state_fds.get(channel_dir)
        if fds is not None:
            return fds, False
        created = False
        try:
            fds = _open_dirs(channel_dir, STATES)
        except FileNotFoundError:
            make_channel(self.channels_dir, channel_dir)
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


def _complete(staged: str) -> None:
    """Give a shared staged file, all its names linked in, :data:`~dropr._files.SHARED_MODE`
    — its staged name removed first, so that a claim counting the file's links finds the
    queues' alone: one more would look like names it did not see, and make it copy them."""
    fd = os.open(staged, _files.READ_FLAGS)
    try:
        os.unlink(staged)
        os.fchmod(fd, _files.SHARED_MODE)
    finally:
        os.close(fd)


def _message_problem(msg_id: str, priority: int) -> str:
    """Why ``(msg_id, priority)`` cannot name a message, or "" when it can."""
    try:
        check_message_id(msg_id)
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


def _unheld(state_fds: tuple[int, ...], names: list[str], positions: list[int]) -> list[int]:
    """The positions (of ``positions``) of ``names`` held in none of the state directories.

    The states are looked at in the order messages flow forward (queue, claimed, then
    delayed, processed, dead), each after the one before, so a message a consumer moves
    forward meanwhile is seen in its next state; every move back ends in the queue, where
    :func:`_move` refuses to replace. A directory small next to the names looked for is
    listed once; otherwise each name is probed (``faccessat``: no exception when missing).
    """
    left = positions
    for fd in state_fds:
        if not left:
            break
        if len(left) > _PROBE_MAX and os.fstat(fd).st_size <= _LIST_BYTES * len(left):
            present = set(os.listdir(fd))
            left = [i for i in left if names[i] not in present]
        else:
            left = moves.absent_names(fd, names, left)
    return left


def _held_in(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in the directory ``dir_fd`` (a symlink is not followed)."""
    return os.access(name, os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


class _Targets:
    """Where one batch's messages for a channel go, known under the channel's lock: its own
    queue (or delayed/) while it has no groups, else every group's. ``held`` are the state
    directories that tell a message held already: the channel's own, then each group's."""

    def __init__(self, channel_dir: str, own: tuple[int, ...]) -> None:
        self._channel_dir = channel_dir
        self._own = own
        self._opened: list[tuple[int, ...]] = []
        self.held = own
        self._targets: tuple[tuple[int, ...], ...] = (own,)
        self._roots = [channel_dir]

    def __enter__(self) -> _Targets:
        roots = group_roots(self._channel_dir)
        try:
            for root in roots:
                self._opened.append(_open_dirs(root, STATES))
        except BaseException:
            self.__exit__()
            raise
        if roots:
            self.held = self._own + tuple(fd for fds in self._opened for fd in fds)
            self._targets = tuple(self._opened)
            self._roots = roots
        return self

    def into(self, state: int) -> tuple[int, ...]:
        """The directories (by their index in :data:`STATES`) a message goes into, one each."""
        return tuple(fds[state] for fds in self._targets)

    def dirs(self, state: str) -> list[str]:
        """The paths of the directories of ``state`` messages go into."""
        return [os.path.join(root, state) for root in self._roots]

    def __exit__(self, *exc: object) -> None:
        for fds in self._opened:
            _close_all(fds)
        self._opened.clear()


def _link_in(
    items: list[tuple[int, int, str, str, float]],
    names: list[str],
    start: int,
    end: int,
    queue_fds: tuple[int, ...],
    results: list[bool | str],
    keep: bool,
) -> int:
    """Move the staged files of ``items[start:end]`` into ``queue_fds`` as :func:`_move`
    does (with ``keep``, shared files: link them, leave them staged), in one batch without
    the GIL, their results into ``results``; how many moved."""
    linked, error = moves.link_files([item[3] for item in items[start:end]], names[start:end], queue_fds, keep)
    for item, result in zip(items[start:end], linked, strict=False):  # linked: up to a failure
        results[item[0]] = result
    if not error:
        return len(linked)
    failed = start + len(linked)
    if error not in _NO_LINKS:
        raise OSError(error, os.strerror(error), items[failed][3])
    index, _, msg_id, staged, _ = items[failed]
    results[index] = _copy_in(staged, queue_fds, names[failed], msg_id if keep else None)
    return len(linked) + 1


def _move(staged: str, queue_fds: tuple[int, ...], name: str) -> bool:
    """Give the file ``staged`` the name ``name`` in each queue of ``queue_fds`` (one hard
    link each) without replacing one that exists in the first; the staged name goes either
    way. False if ``name`` was taken."""
    linked, error = moves.link_files([staged], [name], queue_fds)
    if not error:
        return bool(linked[0])
    if error not in _NO_LINKS:
        raise OSError(error, os.strerror(error), staged)
    return _copy_in(staged, queue_fds, name)


def _copy_in(staged: str, queue_fds: tuple[int, ...], name: str, shared_id: str | None = None) -> bool:
    """:func:`_move` on a file system without hard links: the check just before is the
    guard, and the other groups get copies. With ``shared_id``, ``staged`` is a shared file
    (left staged): every queue gets a copy of that message's bytes alone."""
    first, *others = queue_fds
    if _held_in(first, name):
        if shared_id is None:
            os.unlink(staged)
        return False
    if shared_id is not None:
        payload = shared_payload(staged, shared_id)
        for fd in queue_fds:
            _write_copy(payload, fd, name, None)
        return True
    for fd in others:
        _copy(staged, fd, name)
    os.rename(staged, name, dst_dir_fd=first)
    return True


def _copy(staged: str, dir_fd: int, name: str) -> None:
    """A durable copy of ``staged`` named ``name`` in directory ``dir_fd`` (hidden until
    whole), with its times (a delayed message's mtime is when it is due)."""
    with open(staged, "rb") as source:
        times = os.fstat(source.fileno())
        _write_copy(source.read(), dir_fd, name, (times.st_atime_ns, times.st_mtime_ns))


def _write_copy(data: bytes, dir_fd: int, name: str, times_ns: tuple[int, int] | None) -> None:
    """A durable file named ``name`` in directory ``dir_fd`` holding ``data`` (hidden until
    whole), with the times ``times_ns`` when given."""
    tmp = f".{name}.copy"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _files.FILE_MODE, dir_fd=dir_fd)
    with open(fd, "wb") as copy:
        copy.write(data)
        copy.flush()
        if times_ns is not None:
            os.utime(copy.fileno(), ns=times_ns)
        os.fsync(copy.fileno())
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
