"""File-system steps the store is built from: whole-or-nothing writes and the syncs that make
them durable (one file, one directory's entries, or the whole file system)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

from .._files import DIR_MODE, FILE_MODE, publish, remove

__all__ = ["DIR_MODE", "FILE_MODE", "publish", "remove", "sync_data", "sync_directory", "sync_file_system"]


def sync_data(path: str) -> None:
    """Make the content of the file ``path`` durable (``fdatasync``; a symlink is refused)."""
    _on_fd(path, os.O_NOFOLLOW, os.fdatasync)


def sync_directory(path: str) -> None:
    """Make the entries of the directory ``path`` durable (``fsync`` of the directory)."""
    _on_fd(path, os.O_DIRECTORY, os.fsync)


def _on_fd(path: str, flags: int, sync: Callable[[int], object]) -> None:
    """Open ``path`` read-only with ``flags``, apply ``sync`` to the descriptor, close it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        sync(fd)
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
