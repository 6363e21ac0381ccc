"""Staged files: a payload under a fresh name in the store's ``tmp/``, measured on the way in.

A staged file is written as a request streams in (:meth:`Staging.open`, then ``write``
chunks; or :meth:`Staging.hold`, whose bytes stay in memory until :func:`write_held` creates
the complete ones of a request together, without the GIL), given the data of a file already
on this host (:meth:`Staging.link`: a hard link, or a copy where links are refused), or of a
part of one (:meth:`Staging.extract`, a message of a batch file); either way its size and
CRC-32 are known once it is complete, for the ingest path to check against what the sender
declared. Names are fresh (``O_EXCL``, no symlink followed), so nothing a sender says can
aim a write at an existing path; the names of one request or one relay share a random prefix
and differ by a counter: unpredictable, yet no random bytes are drawn per file. A staged
file ends in the store or is removed; what a process that died left behind is found by its
prefix.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import zlib

from .._files import FILE_MODE, remove
from .._impl import moves

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_CHUNK = 1 << 20
HOLD_BYTES = 1 << 16
"""The bytes of a staged file that :meth:`Staging.hold` keeps in memory."""
_COPY_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)
"""Why a hard link may be refused where a copy works: another file system, no links there."""


class Staging:
    """Fresh staged files in ``staging_dir``, named ``prefix`` and a random part."""

    __slots__ = ("_count", "_prefix")

    def __init__(self, staging_dir: str, prefix: str) -> None:
        self._prefix = os.path.join(staging_dir, f"{prefix}{secrets.token_hex(8)}-")
        self._count = itertools.count()

    def open(self) -> StagedFile:
        """An empty staged file to ``write`` into (three system calls: open, write, close)."""
        path = self._name()
        return StagedFile(path, os.open(path, _CREATE, FILE_MODE))

    def hold(self) -> StagedFile:
        """An empty staged file to ``write`` into, kept in memory up to :data:`HOLD_BYTES`
        (created once it grows past them); :func:`write_held` creates the held ones of a
        request together, in one call without the GIL."""
        return StagedFile(self._name(), -1, bytearray())

    def link(self, source: str) -> StagedFile:
        """The data of the file ``source`` as a complete staged file: a hard link read once
        for its CRC-32, or where links are refused a copy measured as it is written."""
        path = self._name()
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _COPY_ERRNOS:
                raise
            return self._copy(source)
        staged = StagedFile(path, -1)
        try:
            staged.measure()
        except BaseException:
            staged.discard()
            raise
        return staged

    def extract(self, source_fd: int, offset: int, size: int) -> StagedFile:
        """The ``size`` bytes at ``offset`` of the open file ``source_fd`` (one message of a
        batch file) as a complete staged file, measured as it is written; a source shorter
        than that gives a shorter file, which the ingest path refuses as not declared."""
        staged = self.open()
        try:
            while size > 0:
                chunk = os.pread(source_fd, min(size, _CHUNK), offset)
                if not chunk:
                    break
                staged.write(chunk)
                offset += len(chunk)
                size -= len(chunk)
            staged.close()
        except BaseException:
            staged.discard()
            raise
        return staged

    def _copy(self, source: str) -> StagedFile:
        staged = self.open()
        try:
            fd = os.open(source, _READ)
            try:
                while chunk := os.read(fd, _CHUNK):
                    staged.write(chunk)
            finally:
                os.close(fd)
            staged.close()
        except BaseException:
            staged.discard()
            raise
        return staged

    def _name(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


class StagedFile:
    """One staged payload: its ``path`` (empty once the store took it or it was removed),
    ``size`` and ``crc`` (CRC-32) of what it holds so far, and ``held``, its bytes while
    they are kept in memory (None once the file is on disk)."""

    __slots__ = ("_fd", "crc", "held", "path", "size")

    def __init__(self, path: str, fd: int, held: bytearray | None = None) -> None:
        self.path = path
        self.size = 0
        self.crc = 0
        self._fd = fd
        self.held = held

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        held = self.held
        if held is not None:
            if self.size <= HOLD_BYTES:
                held += chunk
                return
            self._fd = os.open(self.path, _CREATE, FILE_MODE)
            self.held = None
            self._write(held)
        self._write(chunk)

    def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        written = os.write(self._fd, chunk)
        if written < len(chunk):
            view = memoryview(chunk)[written:]
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def measure(self) -> None:
        """Read the file for its size and CRC-32 (one written elsewhere)."""
        fd = os.open(self.path, _READ)
        try:
            size, crc = 0, 0
            while chunk := os.read(fd, _CHUNK):
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
            self.size, self.crc = size, crc
        finally:
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


def write_held(files: list[StagedFile]) -> None:
    """Create the files of ``files`` still held in memory (see :meth:`Staging.hold`), in
    one call; an OSError leaves none of them held."""
    held = [(file, file.held) for file in files if file.held is not None and file.path]
    try:
        moves.write_files([file.path for file, _ in held], [data for _, data in held])
    finally:
        for file, _ in held:
            file.held = None


def remove_staged(staging_dir: str, prefix: str) -> int:
    """Remove the staged files named ``prefix``…, which a process that died left; how many."""
    removed = 0
    with os.scandir(staging_dir) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                removed += remove(entry.path)
    return removed
