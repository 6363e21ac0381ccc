"""A message of a store as a consumer sees it."""

from __future__ import annotations

import errno
import os

from .._files import READ_FLAGS, is_shared
from .._impl import codec, moves


class ClaimReads:
    """The payloads of one claim's messages that share files, read a file at a time.

    A claim takes the messages of a shared file together, and reading each alone means
    opening the file and finding it in the index again, message by message. Instead the
    first ``read()`` of one of them reads the file once and keeps the payloads of the
    claim's other messages in it, which their own ``read()`` then finds by the file's
    identity (one ``lstat``) and hands over, once each.
    """

    __slots__ = ("_payloads", "ids")

    def __init__(self) -> None:
        self.ids: set[str] = set()  # of the claim's messages: no other payload is kept
        self._payloads: dict[tuple[int, int, str], bytes] = {}

    def read(self, path: str, msg_id: str) -> bytes | None:
        """The payload of message ``msg_id`` at ``path``; None when that is not a shared
        file, or the file is not what its index says (read it alone, as any other)."""
        info = os.lstat(path)
        if not is_shared(info.st_mode):
            return None
        file = (info.st_dev, info.st_ino)
        data = self._payloads.pop((*file, msg_id), None)
        if data is not None:
            return data
        fd = os.open(path, READ_FLAGS)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != file:
                return None
            whole = os.pread(fd, opened.st_size, 0)
        finally:
            os.close(fd)
        try:
            entries = codec.parse_batch_index(whole)
        except ValueError:
            return None
        for entry_id, offset, size, _ in entries:
            if entry_id in self.ids and offset + size <= len(whole):
                self._payloads[(*file, entry_id)] = whole[offset : offset + size]
        return self._payloads.pop((*file, msg_id), None)


class Message:
    """One stored message: its metadata comes from its file name, its payload from ``read()``.

    ``path`` follows the message as the store moves it (queue, claimed, processed, ...).
    ``group`` is the consumer group it was taken from (None: the channel's own queue).
    ``lease_ns`` is the token of a claim (the lease end, in nanoseconds since the epoch),
    None for a message that was listed rather than claimed. ``attempts`` and ``reasons`` are
    filled for dead letters. The messages of one claim share their ``reads`` (see
    :class:`ClaimReads`).
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
        "_reads",
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
        reads: ClaimReads | None = None,
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
        self._reads = reads
        if reads is not None:
            reads.ids.add(msg_id)

    @property
    def lease(self) -> float | None:
        """When the claim ends (seconds since the epoch); None when not claimed."""
        return None if self.lease_ns is None else self.lease_ns / 1e9

    def whole_file(self) -> bool:
        """Whether the payload is the whole file at ``path``, which may then be handed on as
        it is; not so for a message of a shared file (FileNotFoundError when it is gone)."""
        return not is_shared(os.lstat(self.path).st_mode)

    def read(self) -> bytes:
        """The payload (FileNotFoundError when the file is gone)."""
        data = self._reads.read(self.path, self.id) if self._reads is not None else None
        if data is None:
            data = moves.read_files([self.path], 0)[0][0]
        if data is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
        return data

    def __repr__(self) -> str:
        group = f", group={self.group!r}" if self.group is not None else ""
        head = f"Message(id={self.id!r}, client={self.client!r}, channel={self.channel!r}{group}"
        return f"{head}, priority={self.priority})"
