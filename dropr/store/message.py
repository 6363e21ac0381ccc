"""A message of a store as a consumer sees it."""

from __future__ import annotations

import errno
import os

from .._files import SHARED_MODE
from .._impl import moves


class Message:
    """One stored message: its metadata comes from its file name, its payload from ``read()``.

    ``path`` follows the message as the store moves it (queue, claimed, processed, ...).
    ``group`` is the consumer group it was taken from (None: the channel's own queue).
    ``lease_ns`` is the token of a claim (the lease end, in nanoseconds since the epoch),
    None for a message that was listed rather than claimed. ``attempts`` and ``reasons`` are
    filled for dead letters.
    """

    __slots__ = (
        "attempts",
        "channel",
        "client",
        "group",
        "id",
        "lease_ns",
        "name",
        "path",
        "priority",
        "reasons",
        "time",
    )

    def __init__(
        self,
        msg_id: str,
        client: str,
        channel: str,
        priority: int,
        time: float,
        name: str,
        path: str,
        attempts: int = 0,
        reasons: tuple[str, ...] = (),
        *,
        group: str | None = None,
        lease_ns: int | None = None,
    ) -> None:
        self.id = msg_id
        self.client = client
        self.channel = channel
        self.priority = priority
        self.time = time
        self.name = name
        self.path = path
        self.attempts = attempts
        self.reasons = reasons
        self.group = group
        self.lease_ns = lease_ns

    @property
    def lease(self) -> float | None:
        """When the claim ends (seconds since the epoch); None when not claimed."""
        return None if self.lease_ns is None else self.lease_ns / 1e9

    def whole_file(self) -> bool:
        """Whether the payload is the whole file at ``path``, which may then be handed on as
        it is; not so for a message of a shared file (FileNotFoundError when it is gone)."""
        return os.lstat(self.path).st_mode & 0o7777 != SHARED_MODE

    def read(self) -> bytes:
        """The payload (FileNotFoundError when the file is gone)."""
        data: bytes | None = moves.read_files([self.path], 0)[0][0]
        if data is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
        return data

    def __repr__(self) -> str:
        group = f", group={self.group!r}" if self.group is not None else ""
        head = f"Message(id={self.id!r}, client={self.client!r}, channel={self.channel!r}{group}"
        return f"{head}, priority={self.priority})"
