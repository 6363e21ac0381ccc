"""Being told at once when a producer puts: inotify on the spool's queue and its buckets.

ctypes on the C library, no extra dependency. :meth:`Watch.read` returns the names that
arrived since the last read (the relay learns which peers have news without listing the
queue), or None when the kernel's event queue overflowed and anything may have arrived.
``queue/`` itself is watched for new buckets; each bucket gets a watch of its own as it
appears, and what it already holds by then is reported as arrived, so a put that beat the
watch is not missed. Where inotify is missing, :func:`watch_queue` returns None and the relay
relies on its periodic rescan alone. :func:`watch` watches one plain directory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from typing import Any

from .. import _libc
from .._impl import codec, scan

IN_CREATE = 0x100
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")
ARRIVALS = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE

log = logging.getLogger("dropr.relay")


class Watch:
    """An inotify descriptor watching directories for arrivals; for a spool's ``queue/``
    (``queue_dir``), its buckets too, each watched as it appears."""

    def __init__(self, fd: int, add_watch: Any, queue_dir: str | None = None) -> None:
        self.fd = fd
        self._add_watch = add_watch
        self._queue_dir = queue_dir
        self._root = -1

    def add(self, path: str, mask: int = ARRIVALS) -> int:
        """Watches ``path`` too; returns the watch descriptor (OSError when it cannot)."""
        wd: int = self._add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot watch {path}: {os.strerror(err)}")
        return wd

    def _start(self, queue_dir: str) -> None:
        self._root = self.add(queue_dir)
        for bucket in scan.buckets(queue_dir):
            self._add_bucket(queue_dir, bucket)

    def _add_bucket(self, queue_dir: str, bucket: str) -> list[str]:
        """Watches a new bucket; returns what it holds already."""
        path = os.path.join(queue_dir, bucket)
        try:
            self.add(path)
            return os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise
            log.warning("%s: rescanning periodically", exc)
            return []

    def read(self) -> list[str] | None:
        """Names that arrived since the last call (maybe none); None after an overflow."""
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    self._drain()
                    return None
                name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
                offset += length
                if not name:
                    continue
                if wd == self._root and self._queue_dir is not None:
                    if mask & IN_ISDIR and len(name) == codec.BUCKET_LEN:
                        names += self._add_bucket(self._queue_dir, name)
                else:
                    names.append(name)

    def _drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def watch(path: str, mask: int = ARRIVALS) -> Watch | None:
    """A non-blocking Watch of directory ``path`` for ``mask`` events; None where inotify is
    missing or the watch limit is reached."""
    made = _init()
    if made is None:
        return None
    watch = Watch(*made)
    try:
        watch.add(path, mask)
    except OSError as exc:
        _refused(watch, exc)
        return None
    return watch


def watch_queue(queue_dir: str) -> Watch | None:
    """A non-blocking Watch of a spool's ``queue/`` and its buckets; None where inotify is
    missing or the watch limit is reached."""
    made = _init()
    if made is None:
        return None
    watch = Watch(*made, queue_dir)
    try:
        watch._start(queue_dir)
    except OSError as exc:
        _refused(watch, exc)
        return None
    return watch


def _init() -> tuple[int, Any] | None:
    init1 = _libc.function("inotify_init1", (ctypes.c_int,))
    add_watch = _libc.function("inotify_add_watch", (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32))
    if init1 is None or add_watch is None:
        log.info("inotify is not available: rescanning the queue periodically")
        return None
    fd = init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        log.warning("inotify_init1 failed (%s): rescanning periodically", os.strerror(err))
        return None
    return fd, add_watch


def _refused(watch: Watch, exc: OSError) -> None:
    """Closes ``watch`` and logs, when the kernel refused for want of resources; else raises."""
    watch.close()
    if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EACCES):
        raise exc
    log.warning("%s: rescanning periodically", exc)
