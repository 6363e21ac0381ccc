"""A message of a store as a consumer sees it."""

from __future__ import annotations

import os

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC


class Message:
    """One stored message: its metadata comes from its file name, its payload from ``read()``.

    ``path`` follows the message as the store moves it (queue, claimed, processed, ...).
    ``attempts`` and ``reasons`` are filled for dead letters.
    """

    __slots__ = (
        "attempts",
        "channel",
        "client",
        "id",
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

    def read(self) -> bytes:
        """The payload."""
        fd = os.open(self.path, _READ_FLAGS)
        try:
            data = os.read(fd, os.fstat(fd).st_size + 1)
            while chunk := os.read(fd, 1 << 16):
                data += chunk
            return data
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, client={self.client!r}, channel={self.channel!r}, priority={self.priority})"
