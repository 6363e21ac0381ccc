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

from .._files import ARRIVING_MODE, FILE_MODE, READ_FLAGS, SHARED_MODE, remove
from .._impl import codec, moves

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
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
            fd = os.open(source, READ_FLAGS)
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


class _Share:
    """A staged file that holds several messages (see :func:`write_held`): how many of them
    have yet to be handed over or discarded, the last of which removes its staged name."""

    __slots__ = ("users",)

    def __init__(self, users: int) -> None:
        self.users = users


class StagedFile:
    """One staged payload: its ``path`` (empty once the store took it or it was removed),
    ``size`` and ``crc`` (CRC-32) of what it holds so far, and ``held``, its bytes while
    they are kept in memory (None once the file is on disk). A shared one's path is a file
    holding other messages too, which the store links under each message's name."""

    __slots__ = ("_fd", "_share", "crc", "held", "path", "size")

    def __init__(self, path: str, fd: int, held: bytearray | None = None) -> None:
        self.path = path
        self.size = 0
        self.crc = 0
        self._fd = fd
        self.held = held
        self._share: _Share | None = None

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
        fd = os.open(self.path, READ_FLAGS)
        try:
            size, crc = 0, 0
            while chunk := os.read(fd, _CHUNK):
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
            self.size, self.crc = size, crc
        finally:
            os.close(fd)

    def handed_over(self) -> None:
        """The store took (or removed) the file: ``discard`` leaves its path alone. The store
        links a shared file and removes its staged name once all its messages are in; else
        that name goes once its last message is handed over or discarded."""
        if self._share is not None:
            self._leave()
        self.path = ""

    def discard(self) -> None:
        """Close and remove the file (a shared one once no message of it is left); safe to
        call twice or after it was handed over."""
        try:
            self.close()
        finally:
            if self._share is not None:
                self._leave()
            elif self.path:
                remove(self.path)
            self.path = ""

    def _leave(self) -> None:
        share, self._share = self._share, None
        assert share is not None
        share.users -= 1
        if share.users == 0 and self.path:
            remove(self.path)


def write_held(files: list[StagedFile], queued: list[tuple[str, str, int] | None]) -> None:
    """Create the files of ``files`` still held in memory (see :meth:`Staging.hold`), in
    one call; an OSError leaves none of them held. Those given ``(id, channel, priority)``
    in ``queued`` (messages due at once), two or more of one channel and priority, go into
    one shared file instead: a batch file (the format of ``dropr._codec_py``) of mode
    :data:`~dropr._files.ARRIVING_MODE`, which the store links under each message's name,
    one file created where there were as many as messages, and then gives
    :data:`~dropr._files.SHARED_MODE`. One queue's messages share a file, next to each other
    in its order, so that a claim can take the file whole."""
    held = [
        (file, file.held, due) for file, due in zip(files, queued, strict=True) if file.held is not None and file.path
    ]
    queues: dict[tuple[str, int], list[tuple[StagedFile, bytearray, str]]] = {}
    for file, data, due in held:
        if due is not None:
            queues.setdefault(due[1:], []).append((file, data, due[0]))
    shares = [joined for joined in queues.values() if len(joined) > 1]
    if shares and not shares_files(shares[0][0][0].path):
        shares = []
    joined_files = {file for joined in shares for file, _, _ in joined}
    try:
        own = [(file, data) for file, data, _ in held if file not in joined_files]
        paths = [file.path for file, _ in own]
        contents: list[bytes | bytearray] = [data for _, data in own]
        for joined in shares:
            index = codec.batch_index([(msg_id, file.size, file.crc) for file, _, msg_id in joined])
            paths.append(joined[0][0].path)
            contents.append(b"".join([index, *(data for _, data, _ in joined)]))
        moves.write_files(paths, contents)
        for path, joined in zip(paths[len(own) :], shares, strict=True):
            os.chmod(path, ARRIVING_MODE)  # a file just made, O_EXCL: no link to follow
            share = _Share(len(joined))
            for file, _, _ in joined:
                file.path, file._share = path, share
    finally:
        for file, _, _ in held:
            file.held = None


_sharing: dict[str, bool] = {}


def shares_files(path: str) -> bool:
    """Whether the file system of the staged ``path`` keeps :data:`SHARED_MODE` (by which
    readers tell a shared file), tried once per staging directory."""
    directory = os.path.dirname(path)
    known = _sharing.get(directory)
    if known is None:
        probe = f"{path}.mode"
        os.close(os.open(probe, _CREATE, FILE_MODE))
        try:
            os.chmod(probe, SHARED_MODE)
            known = os.stat(probe).st_mode & 0o7777 == SHARED_MODE
        except OSError:
            known = False
        finally:
            remove(probe)
        _sharing[directory] = known
    return known


def remove_staged(staging_dir: str, prefix: str) -> int:
    """Remove the staged files named ``prefix``…, which a process that died left; how many."""
    removed = 0
    with os.scandir(staging_dir) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                removed += remove(entry.path)
    return removed


def shared_payload(path: str, msg_id: str) -> bytes:
    """The bytes of message ``msg_id`` in the shared staged file at ``path``."""
    with open(path, "rb") as file:
        data = file.read()
    for entry_id, offset, size, _ in codec.parse_batch_index(data):
        if entry_id == msg_id:
            return data[offset : offset + size]
    raise KeyError(f"{path} holds no message {msg_id}")
