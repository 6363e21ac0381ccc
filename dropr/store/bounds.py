"""The highest message id of each client a store ever took in, so that ingest knows a fresh
id without looking for it in every state directory.

Ingest refuses a message held already, by client and id, in any state; looking costs a
lookup per message per state directory (a few microseconds each, most of the server's time
per message once ``processed/`` is large). Ids are time-ordered, so a client's new messages
mostly have ids above all it sent before: an id above the highest one of its client ever
stored cannot be held, and is not looked for.

One file a client in ``STORE/ingested/``, named by its client field, holds one record:
``high`` (that highest id), ``ceiling`` (an id no stored id of the client exceeds, made
durable before any id above it is stored) and the boot it was written in. The file's lock
(``flock``) is held from reading the record until the batch's messages are in, so processes
sharing the store see each other's ids. ``high`` is written before the messages are moved
in but never synced: ``kill -9`` cannot lose it, a power failure can, so the record of
another boot is trusted only up to its ``ceiling``. The ceiling is raised
:data:`CEILING_AHEAD_NS` of put time past the id that needs it, so it is synced once every
few seconds of put time, not once per batch.

A store made before this directory existed has none: there every id is looked for, as is
every id at or below its client's ``high`` (a late message, or one put with a clock behind).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from .. import _files
from .._impl import codec

CEILING_AHEAD_NS = 10 * 10**9
"""How far past the id that needs it (in put time) the ceiling is raised, at one sync."""
_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_RECORD_BYTES = 128
_OPEN_RECORDS = 256  # clients whose record stays open
_TOP_TAIL = "f" * 14  # the nonce and sequence digits of the highest id of a put time
_HIGHEST = "f" * 30
_LAST_TIME = (1 << 64) - 1


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""  # unknown: every record is read as another boot's


class Bounds:
    """The records of the store directory ``ingested`` (see the module's docstring); when
    it does not exist, no bounds (every id is looked for)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._enabled = os.path.isdir(directory)
        self._boot = _boot_id()
        self._fds: dict[str, int] = {}

    @contextlib.contextmanager
    def holding(self, client_field: str, ids: list[str]) -> Iterator[str | None]:
        """Hold the record of ``client_field`` while the messages ``ids`` are moved in, and
        raise it to them first; yields the id above which none of its messages was ever
        stored ("": none at all), or None when every id must be looked for. The lock is
        between processes: the threads of one must hold another lock around this."""
        if not self._enabled or not ids:
            yield None
            return
        fd = self._open(client_field)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            high, ceiling = self._read(fd)
            top = max(ids)
            if top > high:
                raised = top > ceiling
                if raised:
                    ceiling = f"{min(int(top[:16], 16) + CEILING_AHEAD_NS, _LAST_TIME):016x}{_TOP_TAIL}"
                os.pwrite(fd, f"{top} {ceiling} {self._boot}".ljust(_RECORD_BYTES).encode("ascii"), 0)
                if raised:
                    os.fdatasync(fd)
            yield high
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _read(self, fd: int) -> tuple[str, str]:
        """``(high, ceiling)`` of a record; ``high`` is the ceiling when the record is of
        another boot, and both are the highest id when it is not a record (nothing is fresh)."""
        fields = os.pread(fd, _RECORD_BYTES, 0).decode("ascii", "replace").split()
        if not fields:
            return "", ""  # a new record: nothing stored yet
        high, ceiling, boot = (*fields, "", "")[:3]
        if not (codec.is_message_id(high) and codec.is_message_id(ceiling) and high <= ceiling):
            return _HIGHEST, _HIGHEST
        return (high if boot == self._boot and self._boot else ceiling), ceiling

    def close(self) -> None:
        fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)

    def _open(self, client_field: str) -> int:
        fd = self._fds.get(client_field)
        if fd is None:
            path = os.path.join(self._directory, client_field)
            try:
                fd = os.open(path, _FLAGS)
            except FileNotFoundError:
                fd = os.open(path, _FLAGS | os.O_CREAT, _files.FILE_MODE)
                os.fsync(fd)
                _files.sync_directory(self._directory)  # its entry durable before any id it covers
            if len(self._fds) >= _OPEN_RECORDS:
                self.close()
            self._fds[client_field] = fd
        return fd
