"""Upload files in the store's staging directory, written as the request streams in.

Each part goes to a file of its own under a fresh name (``O_EXCL``, no symlink followed),
so no request can aim a write at an existing path. A request's names share a random
prefix and differ by a counter: unpredictable, yet no random bytes are drawn per part.
Size and CRC-32 are computed on the way, and the file is removed on any path that does
not end in the store. A part costs three system calls: open, write, close.
"""

from __future__ import annotations

import itertools
import os
import secrets
import zlib

from .._files import remove

PREFIX = "upload-"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class Staging:
    """Opens the staged files of one request in ``staging_dir``."""

    __slots__ = ("_count", "_prefix")

    def __init__(self, staging_dir: str) -> None:
        self._prefix = os.path.join(staging_dir, f"{PREFIX}{secrets.token_hex(8)}-")
        self._count = itertools.count()

    def open(self) -> StagedFile:
        return StagedFile(f"{self._prefix}{next(self._count):x}")


class StagedFile:
    """A part being received: ``write`` chunks, then ``close``; ``discard`` removes it."""

    __slots__ = ("_fd", "crc", "path", "size")

    def __init__(self, path: str) -> None:
        self.size = 0
        self.crc = 0
        self._fd = os.open(path, _FLAGS, 0o640)
        self.path = path

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        written = os.write(self._fd, chunk)
        if written < len(chunk):
            view = memoryview(chunk)[written:]
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def handed_over(self) -> None:
        """The store took (or removed) the file: ``discard`` leaves its path alone."""
        self.path = ""

    def discard(self) -> None:
        """Close and remove the file; safe to call twice or after it was handed over."""
        try:
            self.close()
        finally:
            if self.path:
                remove(self.path)
                self.path = ""


def remove_leftovers(staging_dir: str) -> int:
    """Remove upload files a previous server process left behind; returns how many."""
    removed = 0
    with os.scandir(staging_dir) as entries:
        for entry in entries:
            if entry.name.startswith(PREFIX) and entry.is_file(follow_symlinks=False):
                removed += remove(entry.path)
    return removed
