"""inotify through ctypes (no extra dependency): being told at once what arrives in directories.

:class:`Inotify` is one non-blocking descriptor with its watches; :meth:`Inotify.events`
returns what happened since the last call, or None when the kernel's event queue overflowed
and anything may have happened. The relay watches a spool's queue with it
(:mod:`dropr.relay.inotify`), the store's waiting claims a channel's queue.
:func:`create` returns None where inotify is missing, and callers then look periodically.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
from typing import NamedTuple

from . import _libc

IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
ARRIVALS = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE
"""What a new entry in a directory (a file renamed, linked or written into it) raises."""

SHORT_OF_RESOURCES = (errno.ENOSPC, errno.ENOMEM, errno.EACCES, errno.EMFILE)
"""The errnos of a watch or descriptor the kernel refuses for want of resources: the caller
falls back to looking periodically."""

_EVENT = struct.Struct("iIII")
_READ = 65536
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()  # with the encoding, what os.fsdecode does


class Event(NamedTuple):
    """One inotify event: the watch it came from, what happened, and the entry's name."""

    wd: int
    mask: int
    name: str


_new_event = tuple.__new__  # an Event without its __new__'s call in Python


class Inotify:
    """A non-blocking inotify descriptor and its watches; close it when done."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.paths: dict[int, str] = {}
        """The directory of each watch descriptor."""

    def add(self, path: str, mask: int = ARRIVALS) -> int:
        """Watches directory ``path`` for ``mask``; the watch descriptor (OSError if refused)."""
        add_watch = _libc.function("inotify_add_watch", (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32))
        wd: int = add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot watch {path}: {os.strerror(err)}", path)
        self.paths[wd] = path
        return wd

    def remove(self, wd: int) -> None:
        """Stops watch ``wd`` (nothing if the kernel dropped it already)."""
        rm_watch = _libc.function("inotify_rm_watch", (ctypes.c_int, ctypes.c_int))
        rm_watch(self.fd, wd)
        self.paths.pop(wd, None)

    def events(self) -> list[Event] | None:
        """What happened since the last call (maybe nothing); None after an overflow."""
        found: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    self._drain()
                    return None
                name = data[offset : offset + length].rstrip(b"\0").decode(_FS_ENCODING, _FS_ERRORS)
                found.append(_new_event(Event, (wd, mask, name)))  # a relay reads one a put
                offset += length

    def wait(self, timeout: float | None) -> bool:
        """Block until an event is ready or ``timeout`` seconds passed; whether one is."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def _drain(self) -> None:
        try:
            while os.read(self.fd, _READ):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create() -> int | None:
    """A fresh non-blocking inotify descriptor; None where inotify is missing, OSError when
    the kernel refuses one."""
    init1 = _libc.function("inotify_init1", (ctypes.c_int,))
    if init1 is None or _libc.function("inotify_add_watch", (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)) is None:
        return None
    fd: int = init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def open_watch(paths: list[str], mask: int = ARRIVALS) -> Inotify | None:
    """An :class:`Inotify` watching each of ``paths`` for ``mask``; None where inotify is
    missing or short of resources. OSError (FileNotFoundError for a missing directory)
    otherwise."""
    try:
        fd = create()
    except OSError as exc:
        if exc.errno in SHORT_OF_RESOURCES:
            return None
        raise
    if fd is None:
        return None
    watch = Inotify(fd)
    try:
        for path in paths:
            watch.add(path, mask)
    except OSError as exc:
        watch.close()
        if exc.errno in SHORT_OF_RESOURCES:
            return None
        raise
    return watch
