"""Being told at once when a producer puts: inotify on the spool's queue directory.

ctypes on the C library, no extra dependency. :meth:`Watch.read` returns the names that
arrived since the last read (the relay learns which peers have news without listing the
directory), or None when the kernel's event queue overflowed and anything may have
arrived. Where inotify is missing, :func:`watch` returns None and the relay relies on its
periodic rescan alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct

IN_CREATE = 0x100
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")
ARRIVALS = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE

log = logging.getLogger("dropr.relay")


class Watch:
    """An inotify descriptor watching one directory for arrivals."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

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
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    self._drain()
                    return None
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if name:
                    names.append(os.fsdecode(name))

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
    """A non-blocking Watch of ``path`` for ``mask`` events; None where inotify is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        init1 = libc.inotify_init1
        add_watch = libc.inotify_add_watch
    except (OSError, AttributeError):
        log.info("inotify is not available: rescanning the queue periodically")
        return None
    add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    fd = init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        log.warning("inotify_init1 failed (%s): rescanning periodically", os.strerror(err))
        return None
    if add_watch(fd, os.fsencode(path), mask) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        if err in (errno.ENOSPC, errno.ENOMEM, errno.EACCES):
            log.warning("cannot watch %s (%s): rescanning periodically", path, os.strerror(err))
            return None
        raise OSError(err, f"cannot watch {path}: {os.strerror(err)}")
    return Watch(fd)
