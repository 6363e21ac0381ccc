"""The consumer side of a store: what is queued, claims, outcomes, dead letters, groups, cleaning.

It reads names and moves files between the state directories of a channel, or of one of its
consumer groups (the moves and the leases are :mod:`.claims`', the groups :mod:`.groups`');
only :meth:`ConsumerSide.subscribe` writes a ``names/`` text, so looking at a channel that
never received anything changes nothing.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

from .. import _files
from .. import limits as _limits
from .._impl import codec, scan
from ..errors import StoreError
from ..names import check_channel, check_group, check_message_id, field
from . import claims, groups
from .claims import Claims, LeaseLost, RetryPolicy, check_lease
from .layout import (
    ATTEMPTS,
    CLAIMED,
    DEAD,
    DELAYED,
    GROUPS,
    PROCESSED,
    QUEUE,
    STATES,
    PathLike,
    StoreDirectory,
    group_roots,
    remember,
)
from .message import ClaimReads, Message
from .waiting import Arrivals

STATUSES = {QUEUE: "queued", CLAIMED: "claimed", DELAYED: "delayed", PROCESSED: "processed", DEAD: "dead"}
"""What :meth:`ConsumerSide.status` answers for a message in each state directory."""
MAX_WAIT = 3600.0
"""The longest a claim waits for a message, in seconds."""


class ConsumerSide(StoreDirectory):
    """The side of a store that consumers use; safe beside other processes doing the same
    and the server ingesting. ``max_attempts``, ``retry_delay`` and ``max_retry_delay`` set
    how failed messages are retried (see :class:`~dropr.store.claims.RetryPolicy`),
    ``sweep_interval`` and ``rescan_interval`` how this process looks for expired claims and
    reuses scans (see :class:`~dropr.store.claims.Claims`).

    Every method that takes a channel takes ``group=`` too: None is the channel's own queue
    (where its messages wait while it has no groups), a name one of its consumer groups
    (StoreError when it has no such group).
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
        super().__init__(path, create, limits=limits)
        self._claims = Claims(RetryPolicy(max_attempts, retry_delay, max_retry_delay), sweep_interval, rescan_interval)
        self._roots: dict[tuple[str, str | None], str] = {}
        self._clients: dict[str, str] = {}

    @property
    def retry(self) -> RetryPolicy:
        """How failed messages are retried."""
        return self._claims.retry

    @property
    def sweep_interval(self) -> float:
        """The longest this process takes to notice other processes' expired claims."""
        return self._claims.sweep_interval

    @property
    def rescan_interval(self) -> float:
        """How long a claim may reuse the names an earlier claim's scan saw."""
        return self._claims.rescan_interval

    def channels(self) -> list[str]:
        """The channels that have received messages (or groups), sorted."""
        return sorted(self.text(entry) for entry in os.listdir(self.channels_dir) if not entry.startswith("."))

    def has_channel(self, channel: str) -> bool:
        """Whether ``channel`` has received messages (or groups)."""
        return os.path.isdir(os.path.join(self._root(channel, None), QUEUE))

    def groups(self, channel: str) -> list[str]:
        """The consumer groups of ``channel``, sorted."""
        return sorted(self.text(os.path.basename(root)) for root in group_roots(self._root(channel, None)))

    def subscribe(self, channel: str, group: str) -> bool:
        """Make ``group`` a consumer group of ``channel``; False when it was one already.

        Every message stored in the channel from now on goes to each of its groups, whose
        consumers take it independently of the other groups'. The first group takes over
        what waits in the channel's own queue (delayed, claimed and dead ones too, with
        their leases and failure records); a later one starts with what arrives after it.
        """
        channel_field = self.names.register(check_channel(channel, self.limits))
        group_field = self.names.register(check_group(group, self.limits))
        return groups.subscribe(self.channels_dir, os.path.join(self.channels_dir, channel_field), group_field)

    def unsubscribe(self, channel: str, group: str) -> None:
        """Remove ``group`` from ``channel``, with every message it holds; StoreError when
        the channel has no such group. With the last group gone, new messages wait in the
        channel's own queue again."""
        check_group(group, self.limits)
        if not groups.unsubscribe(self._root(channel, None), field(group)):
            raise _no_group(channel, group)

    def messages(self, channel: str, limit: int | None = None, *, group: str | None = None) -> list[Message]:
        """The queued messages of ``channel`` in delivery order (not claimed: see :meth:`claim`)."""
        root = self._existing_root(channel, group)
        self._claims.sweep(root)
        queue = os.path.join(root, QUEUE)
        try:
            names = scan.scan(queue, scan.count(queue) if limit is None else _count(limit))
        except FileNotFoundError:
            return []
        return [self._message(channel, group, queue, name) for name in names]

    def claim(
        self, channel: str, limit: int, lease: float, *, group: str | None = None, wait: float = 0.0
    ) -> list[Message]:
        """Take up to ``limit`` messages of ``channel`` for ``lease`` seconds, in delivery order.

        Each message goes to one claimant only. One neither processed, failed nor released
        before its lease ends returns to the queue for another consumer. A message that
        arrives while an earlier claim's scan is reused is claimed in its order from the
        next scan on. When none is ready, waits up to ``wait`` seconds for one (woken by
        inotify as it arrives, or when a retry or an expired claim becomes due).
        """
        lease_ns = check_lease(lease)
        limit = _count(limit)
        check_wait(wait)
        root = self._root(channel, group)
        names, token = self._claims.take(root, limit, lease_ns, shared=group is not None)
        if not names and limit:
            if group is not None and not os.path.isdir(root):
                raise _no_group(channel, group)
            if wait > 0:
                names, token = self._wait(root, limit, lease_ns, time.monotonic() + wait, group is not None)
        claimed = os.path.join(root, CLAIMED)
        reads = ClaimReads() if len(names) > 1 else None
        return [self._message(channel, group, claimed, name, token, reads) for name in names]

    def claimed_message(self, channel: str, name: str, lease_ns: int, *, group: str | None = None) -> Message:
        """The message a claim's receipt names (its file name and lease token), to settle
        it; ValueError when ``name`` is not a message's."""
        return self._message(channel, group, os.path.join(self._root(channel, group), CLAIMED), name, lease_ns)

    def wake_paths(self, channel: str, *, group: str | None = None) -> tuple[str, ...]:
        """The directories whose arrivals may make a claim of ``channel`` succeed, for an
        event loop that waits for claims itself (the server); the channels directory too,
        which the channel appears in."""
        root = self._root(channel, group)
        return (*(os.path.join(root, state) for state in (QUEUE, DELAYED, CLAIMED)), self.channels_dir)

    def due_in(self, channel: str, *, group: str | None = None) -> float:
        """Seconds until the earliest retry or claim of ``channel`` known to this process
        becomes due (``inf``: none), which a waiting claim must not sleep past."""
        return self._claims.due_in(self._root(channel, group))

    def look_again(self, channel: str, *, group: str | None = None) -> None:
        """Something arrived in ``channel``'s delayed or claimed messages that this process
        did not see: the next claim looks for what is due afresh."""
        self._claims.forget(self._root(channel, group))

    def release(self, *messages: Message) -> None:
        """Return claimed messages to the queue at once (nothing for one that is there
        already); StoreError, after the others went back, for one whose lease was lost."""
        self._settle(messages, QUEUE)

    def set_processed(self, *messages: Message) -> None:
        """Mark messages done: each moves to ``processed/`` until wiped (again: harmless).

        A claimed message must still be its claimant's: StoreError, after the others were
        marked, for one whose lease was lost (taken back after it ran out, or claimed by
        someone else). A message listed by :meth:`messages` is taken from the queue.
        """
        self._settle(messages, PROCESSED)

    def set_failed(self, message: Message, reason: str) -> None:
        """Record a failed attempt: the message is retried later, or becomes a dead letter.
        StoreError when it is no longer held, or its lease was lost."""
        root = self._root(message.channel, message.group)
        try:
            message.path = self._claims.fail(
                root, message.name, message.lease_ns, str(reason), shared=message.group is not None
            )
        except LeaseLost:
            raise _lost([message]) from None
        except FileNotFoundError:
            raise _gone(message) from None

    def status(self, channel: str, msg_id: str, *, group: str | None = None) -> str | None:
        """The state of message ``msg_id`` of ``channel``: "queued", "claimed", "delayed",
        "processed", "dead", or None when the store does not hold it."""
        check_message_id(msg_id)
        root = self._existing_root(channel, group)
        self._claims.sweep(root)
        # A message moving back (claimed or delayed to the queue) may be missed once.
        for _ in range(2):
            for state in STATES:
                try:
                    if scan.find(os.path.join(root, state), msg_id):
                        return STATUSES[state]
                except FileNotFoundError:
                    continue
        return None

    def dead_letters(self, channel: str, *, group: str | None = None) -> list[Message]:
        """The dead letters of ``channel`` in delivery order, with their attempts and reasons."""
        root = self._existing_root(channel, group)
        dead = os.path.join(root, DEAD)
        found = []
        for name in _names(dead):
            message = self._message(channel, group, dead, name)
            attempts, reasons = claims.read_attempts(root, name)
            message.attempts, message.reasons = attempts, tuple(reasons)
            found.append(message)
        return found

    def requeue_dead(self, channel: str, ids: Iterable[str] | None = None, *, group: str | None = None) -> int:
        """Put dead letters back in the queue (all, or those with these ids); how many moved.

        StoreError, before anything moves, if an id is not among the dead letters.
        """
        root = self._existing_root(channel, group)
        names = _names(os.path.join(root, DEAD))
        if ids is not None:
            wanted = {check_message_id(msg_id) for msg_id in ids}
            held = [(codec.parse_store_name(name)[1], name) for name in names]
            unknown = sorted(wanted.difference(msg_id for msg_id, _ in held))
            if unknown:
                raise StoreError(errno.ENOENT, f"not a dead letter of {channel!r}: {', '.join(unknown)}")
            names = [name for msg_id, name in held if msg_id in wanted]
        return claims.requeue_dead(root, names)

    def count_queued(self, channel: str, *, group: str | None = None) -> int:
        """How many messages of ``channel`` wait in its queue (claimed and delayed ones not)."""
        root = self._existing_root(channel, group)
        self._claims.sweep(root)
        return _count_dir(os.path.join(root, QUEUE))

    def oldest_queued(self, channel: str, *, group: str | None = None) -> float | None:
        """When the oldest message waiting in ``channel``'s queue was put (seconds since the
        epoch, from its id); None when none waits. Read from the names, in C."""
        try:
            oldest = scan.oldest(os.path.join(self._existing_root(channel, group), QUEUE))
        except FileNotFoundError:
            return None
        return codec.id_time_ns(oldest) / 1e9 if oldest else None

    def count_processed(self, channel: str, *, group: str | None = None) -> int:
        """How many processed messages of ``channel`` are kept."""
        return _count_dir(os.path.join(self._existing_root(channel, group), PROCESSED))

    def counts(self, channel: str, *, group: str | None = None) -> dict[str, int]:
        """How many messages of ``channel`` each state holds, by the words of :meth:`status`."""
        root = self._existing_root(channel, group)
        self._claims.sweep(root)
        return {word: _count_dir(os.path.join(root, state)) for state, word in STATUSES.items()}

    def processed(self, channel: str, *, group: str | None = None) -> list[Message]:
        """The processed messages of ``channel`` still kept, in delivery order."""
        directory = os.path.join(self._existing_root(channel, group), PROCESSED)
        return [self._message(channel, group, directory, name) for name in _names(directory)]

    def wipe_processed(self, minutes: float, channel: str | None = None) -> int:
        """Remove processed messages done ``minutes`` ago or earlier, in every group too; how
        many went.

        The time a message was processed is the change time (ctime) its last rename set.
        """
        if not minutes >= 0:
            raise ValueError(f"minutes must be zero or more, not {minutes!r}")
        cutoff = time.time() - minutes * 60
        channels = self.channels() if channel is None else [channel]
        removed = 0
        for name in channels:
            channel_dir = self._root(name, None)
            for root in (channel_dir, *group_roots(channel_dir)):
                removed += _wipe(root, cutoff)
        return removed

    def settle(self, messages: Iterable[Message], state: str) -> list[Message]:
        """Move each claimed message to ``state`` (``processed`` or ``queue``), those of one
        root in one batch; the messages whose lease was lost (the others moved). What
        :meth:`set_processed` and :meth:`release` do, for a caller that answers for each
        message (the server) instead of raising."""
        by_root: dict[str, tuple[list[Message], list[int]]] = {}
        for message in messages:
            if message.lease_ns is None:
                raise ValueError(f"message {message.id} of {message.channel!r} was not claimed")
            held, tokens = by_root.setdefault(self._root(message.channel, message.group), ([], []))
            held.append(message)
            tokens.append(message.lease_ns)
        lost: list[Message] = []
        for root, (held, tokens) in by_root.items():
            paths = self._claims.settle(root, [message.name for message in held], tokens, state)
            for message, path in zip(held, paths, strict=True):
                if path is None:
                    lost.append(message)
                else:
                    message.path = path
        return lost

    def _settle(self, messages: Iterable[Message], state: str) -> None:
        """Move each message from ``claimed/`` (from the queue, one not claimed) to ``state``."""
        claimed: list[Message] = []
        gone: list[Message] = []
        for message in messages:
            if message.lease_ns is not None:
                claimed.append(message)
                continue
            root = self._root(message.channel, message.group)
            path = claims.process(root, message.name) if state == PROCESSED else message.path
            if path is None:
                gone.append(message)
            else:
                message.path = path
        lost = self.settle(claimed, state)
        if lost:
            raise _lost(lost)
        if gone:
            raise _gone(gone[0])

    def _wait(self, root: str, limit: int, lease_ns: int, deadline: float, shared: bool) -> tuple[list[str], int]:
        """Claim as messages arrive until ``deadline`` (monotonic); what was claimed."""
        with Arrivals(root, self.channels_dir) as arrivals:
            while True:
                arrivals.watch()
                names, token = self._claims.take(root, limit, lease_ns, shared=shared)
                left = deadline - time.monotonic()
                if names or left <= 0:
                    return names, token
                if arrivals.wait(min(left, max(0.0, self._claims.due_in(root)))):
                    self._claims.forget(root)

    def _root(self, channel: str, group: str | None) -> str:
        """The directory of a valid channel, or of one of its groups (whether it exists or not)."""
        key = (channel, group)
        path = self._roots.get(key)
        if path is None:
            path = os.path.join(self.channels_dir, field(check_channel(channel, self.limits)))
            if group is not None:
                path = os.path.join(path, GROUPS, field(check_group(group, self.limits)))
            if len(self._roots) >= 4096:
                self._roots.clear()
            self._roots[key] = path
        return path

    def _existing_root(self, channel: str, group: str | None) -> str:
        """As :meth:`_root`, and StoreError for a group the channel does not have."""
        root = self._root(channel, group)
        if group is not None and not os.path.isdir(root):
            raise _no_group(channel, group)
        return root

    def _message(
        self,
        channel: str,
        group: str | None,
        directory: str,
        name: str,
        lease_ns: int | None = None,
        reads: ClaimReads | None = None,
    ) -> Message:
        priority, msg_id, client_field = codec.parse_store_name(name)
        client = self._clients.get(client_field)
        if client is None:
            client = remember(self._clients, client_field, self.text(client_field))
        return Message(
            msg_id,
            client,
            channel,
            priority,
            codec.id_time_ns(msg_id) / 1e9,
            name,
            f"{directory}{os.sep}{name}",
            group=group,
            lease_ns=lease_ns,
            reads=reads,
        )


def check_wait(wait: float) -> float:
    """``wait`` if it is a number of seconds from 0 to :data:`MAX_WAIT`; ValueError if not."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
        raise ValueError(f"wait must be a number of seconds from 0 to {MAX_WAIT:.0f}, not {wait!r}")
    return wait


def _gone(message: Message) -> StoreError:
    return StoreError(errno.ENOENT, f"message {message.id} of {message.channel!r} is no longer held")


def _lost(messages: list[Message]) -> StoreError:
    ids = ", ".join(message.id for message in messages)
    return StoreError(
        errno.ESTALE,
        f"lease lost: {ids} of {messages[0].channel!r} no longer held by this claimant "
        "(the claim ran out and was taken back, or was never this one's)",
    )


def _no_group(channel: str, group: str) -> StoreError:
    return StoreError(errno.ENOENT, f"channel {channel!r} has no group {group!r}")


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


def _wipe(root: str, cutoff: float) -> int:
    processed = os.path.join(root, PROCESSED)
    attempts = os.path.join(root, ATTEMPTS)
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
