"""File-system steps the store is built from: whole-or-nothing writes and the syncs that make
them durable (one file, one directory's entries, or the whole file system)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

FILE_MODE = 0o640
DIR_MODE = 0o750


def publish(path: str, data: bytes, *, replace: bool, sync: bool = False) -> None:
    """Write ``path`` whole or not at all; without ``replace`` an existing file is kept.

    With ``sync`` the data is on disk before the name appears, so a crash never leaves the
    name with empty content (the name itself is made durable by whoever syncs its directory).
    """
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
    finally:
        remove(tmp)


def remove(path: str) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def sync_data(path: str) -> None:
    """Make the content of the file ``path`` durable (``fdatasync``; a symlink is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def sync_directory(path: str) -> None:
    """Make the entries of the directory ``path`` durable (``fsync`` of the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_syncfs = _load_syncfs()


def sync_file_system(path: str) -> None:
    """Make everything written on the file system holding ``path`` durable.

    One ``syncfs`` covers every file and directory entry written by any process since the
    last one, which is what a batch acknowledgement needs; ``os.sync`` where it is missing.
    """
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", path)
    finally:
        os.close(fd)
