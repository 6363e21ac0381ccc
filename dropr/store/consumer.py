"""The consumer side of a store: what is queued, claims, outcomes, dead letters, cleaning.

It reads names and moves files between a channel's state directories (the moves and the
leases are :mod:`.claims`'); it never writes a ``names/`` text, so looking at a channel
that never received anything changes nothing.
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
from ..names import check_channel, field
from . import claims
from .claims import Claims, RetryPolicy
from .layout import ATTEMPTS, CLAIMED, DEAD, DELAYED, PROCESSED, QUEUE, PathLike, StoreDirectory, remember
from .message import Message

STATUSES = {QUEUE: "queued", CLAIMED: "claimed", DELAYED: "delayed", PROCESSED: "processed", DEAD: "dead"}
"""The word for a message in each state directory."""


class ConsumerSide(StoreDirectory):
    """The side of a store that consumers use; safe beside other processes doing the same
    and the server ingesting. ``max_attempts``, ``retry_delay`` and ``max_retry_delay`` set
    how failed messages are retried (see :class:`~dropr.store.claims.RetryPolicy`),
    ``sweep_interval`` and ``rescan_interval`` how this process looks for expired claims and
    reuses scans (see :class:`~dropr.store.claims.Claims`).
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
        self._channel_dirs: dict[str, str] = {}
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
        """The channels that have received messages, sorted."""
        return sorted(self.text(entry) for entry in os.listdir(self.channels_dir) if not entry.startswith("."))

    def has_channel(self, channel: str) -> bool:
        """Whether ``channel`` has received messages."""
        return os.path.isdir(os.path.join(self._channel_dir(channel), QUEUE))

    def messages(self, channel: str, limit: int | None = None) -> list[Message]:
        """The queued messages of ``channel`` in delivery order (not claimed: see :meth:`claim`)."""
        channel_dir = self._channel_dir(channel)
        self._claims.sweep(channel_dir)
        queue = os.path.join(channel_dir, QUEUE)
        try:
            names = scan.scan(queue, scan.count(queue) if limit is None else _count(limit))
        except FileNotFoundError:
            return []
        return [self._message(channel, queue, name) for name in names]

    def claim(self, channel: str, limit: int, lease: float) -> list[Message]:
        """Take up to ``limit`` messages of ``channel`` for ``lease`` seconds, in delivery order.

        Each message goes to one claimant only. One neither processed, failed nor released
        before its lease ends returns to the queue for another consumer. A message that
        arrives while an earlier claim's scan is reused is claimed in its order from the
        next scan on.
        """
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        channel_dir = self._channel_dir(channel)
        names = self._claims.take(channel_dir, _count(limit), lease)
        claimed = os.path.join(channel_dir, CLAIMED)
        return [self._message(channel, claimed, name) for name in names]

    def release(self, message: Message) -> None:
        """Return a claimed message to the queue at once (nothing if it is there already)."""
        path = self._claims.release(self._channel_dir(message.channel), message.name, message.path)
        if path is not None:
            message.path = path

    def set_processed(self, message: Message) -> None:
        """Mark ``message`` done: it moves to ``processed/`` until wiped.

        A message whose lease ran out and that went back to the queue is still taken from
        there; StoreError if it is nowhere to be taken from.
        """
        path = claims.process(self._channel_dir(message.channel), message.name, message.path)
        if path is None:
            raise _gone(message)
        message.path = path

    def set_failed(self, message: Message, reason: str) -> None:
        """Record a failed attempt: the message is retried later, or becomes a dead letter."""
        channel_dir = self._channel_dir(message.channel)
        try:
            message.path = self._claims.fail(channel_dir, message.name, message.path, str(reason))
        except FileNotFoundError:
            raise _gone(message) from None

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
            held = [(codec.parse_store_name(name)[1], name) for name in names]
            unknown = sorted(wanted.difference(msg_id for msg_id, _ in held))
            if unknown:
                raise StoreError(errno.ENOENT, f"not a dead letter of {channel!r}: {', '.join(unknown)}")
            names = [name for msg_id, name in held if msg_id in wanted]
        return claims.requeue_dead(channel_dir, names)

    def count_queued(self, channel: str) -> int:
        """How many messages of ``channel`` wait in its queue (claimed and delayed ones not)."""
        channel_dir = self._channel_dir(channel)
        self._claims.sweep(channel_dir)
        return _count_dir(os.path.join(channel_dir, QUEUE))

    def counts(self, channel: str) -> dict[str, int]:
        """How many messages of ``channel`` each state holds, by the words of :data:`STATUSES`."""
        channel_dir = self._channel_dir(channel)
        self._claims.sweep(channel_dir)
        return {word: _count_dir(os.path.join(channel_dir, state)) for state, word in STATUSES.items()}

    def oldest_queued(self, channel: str) -> float | None:
        """When the oldest message waiting in ``channel``'s queue was put (seconds since the
        epoch, from its id); None when none waits. Read from the names, in C."""
        try:
            oldest = scan.oldest(os.path.join(self._channel_dir(channel), QUEUE))
        except FileNotFoundError:
            return None
        return codec.id_time_ns(oldest) / 1e9 if oldest else None

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

    def _channel_dir(self, channel: str) -> str:
        """The directory of a valid channel (whether it exists or not)."""
        path = self._channel_dirs.get(channel)
        if path is None:
            path = os.path.join(self.channels_dir, field(check_channel(channel, self.limits)))
            remember(self._channel_dirs, channel, path)
        return path

    def _message(self, channel: str, directory: str, name: str) -> Message:
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
        )


def _gone(message: Message) -> StoreError:
    return StoreError(errno.ENOENT, f"message {message.id} of {message.channel!r} is no longer held")


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
