"""File-system steps shared by the spool and the store: whole-or-nothing writes, removals,
and the syncs that make writes durable (one file, one directory's entries, or the whole file
system)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

FILE_MODE = 0o640
SHARED_MODE = 0o540
"""The mode of a store file shared by several messages, a hard link each (a batch file, see
``dropr._codec_py``), once all its names are in; a message's own file never has the
owner's execute bit, :data:`SHARED_BIT`, which both modes of a shared file have."""
ARRIVING_MODE = 0o550
"""The mode of a shared file while ingest is still linking its names in: a claim leaves its
names for a moment, rather than take some and copy them out (their leases would share one
mtime with the names to come)."""
SHARED_BIT = 0o100
DIR_MODE = 0o750
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
"""How a directory is opened to hold it, sync it or work relative to it."""
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
"""How a store file is opened to read it: never through a symbolic link."""
REMOVE_THREADS = 4


def is_shared(mode: int) -> bool:
    """Whether ``mode`` (an ``st_mode``) is that of a shared file."""
    return stat.S_ISREG(mode) and bool(mode & SHARED_BIT)


def publish(path: str, data: bytes, *, replace: bool, sync: bool = False) -> None:
    """Write ``path`` whole or not at all; without ``replace`` an existing file is kept.

    With ``sync`` the data is on disk before the name appears, so a crash never leaves the
    name with empty content (the name itself is made durable by whoever syncs its directory).
    """
    tmp = _hidden(path)
    try:
        write_and_close(_create(tmp), data, sync)
        if replace:
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
    finally:
        remove(tmp)


def replace_all(paths: list[str], contents: list[bytes]) -> None:
    """Replace each file of ``paths`` by its ``contents``, whole or not at all, the data on
    disk before the name shows it (see :func:`publish`): written under hidden names, made
    durable together — one ``fdatasync`` for one file, one flush of the file system for more
    (what a flush each would cost, each of them) — then renamed over."""
    copies: list[str] = []
    try:
        for path, data in zip(paths, contents, strict=True):
            copies.append(_hidden(path))
            write_and_close(_create(copies[-1]), data, sync=len(paths) == 1)
        if len(paths) > 1:
            sync_file_system(os.path.dirname(paths[0]))
        for copy, path in zip(copies, paths, strict=True):
            os.rename(copy, path)
    finally:
        for copy in copies:
            remove(copy)


def _hidden(path: str) -> str:
    """A fresh hidden name beside ``path`` for its new content, by which a process that
    died writing it can be told."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{os.getpid()}.{os.urandom(4).hex()}")


def _create(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)


def write_and_close(fd: int, data: bytes | memoryview, sync: bool) -> None:
    """Write all of ``data`` to ``fd``, with ``sync`` flush it to disk; ``fd`` is closed either way."""
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def remove(path: str) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_all(paths: list[str], threads: int = REMOVE_THREADS) -> int:
    """Unlink ``paths`` on ``threads`` threads at once; returns how many were there.

    An unlink mostly waits for the disk (a file system that discards freed blocks at once
    holds each one a fifth of a millisecond), and waits overlap: four threads remove three
    to four times as many files a second as one.
    """
    if len(paths) < 2 * threads:
        return sum(map(remove, paths))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="dropr-remove") as pool:
        return sum(pool.map(_remove_share, (paths[i::threads] for i in range(threads))))


def _remove_share(paths: list[str]) -> int:
    return sum(map(remove, paths))


def sync_data(path: str) -> None:
    """Make the content of the file ``path`` durable (``fdatasync``; a symlink is refused)."""
    _on_fd(path, READ_FLAGS, os.fdatasync)


def sync_directory(path: str) -> None:
    """Make the entries of the directory ``path`` durable (``fsync`` of the directory)."""
    _on_fd(path, DIR_FLAGS, os.fsync)


def _on_fd(path: str, flags: int, sync: Callable[[int], object]) -> None:
    fd = os.open(path, flags)
    try:
        sync(fd)
    finally:
        os.close(fd)


def sync_file_system(path: str) -> None:
    """Make everything written on the file system holding ``path`` durable.

    One ``syncfs`` covers every file and directory entry written by any process since the
    last one, which is what a batch acknowledgement needs; ``os.sync`` where it is missing.
    """
    import ctypes

    from . import _libc

    syncfs = _libc.function("syncfs", (ctypes.c_int,))
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, DIR_FLAGS)
    try:
        if syncfs(fd) != 0:
            raise _libc.errno_error("syncfs", path)
    finally:
        os.close(fd)
