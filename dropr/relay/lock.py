"""One relay per spool: an exclusive ``flock`` on ``SPOOL/relay.lock`` held by the worker.

The kernel drops the lock when the holder dies, however it dies, so a crashed relay never
blocks the next one; the file records the holder's pid for the refusal message. Whether a
relay runs is read from the kernel's table of locks (``/proc/locks``) rather than by trying
the lock, which would make a relay starting at that moment refuse to run.
"""

from __future__ import annotations

import fcntl
import os

FILE = "relay.lock"
PROC_LOCKS = "/proc/locks"


class LockHeld(Exception):
    """Another relay holds the spool's lock."""


def acquire(spool_path: str) -> int:
    """Take the spool's relay lock; returns its descriptor (closing it releases the lock)."""
    path = os.path.join(spool_path, FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise LockHeld(f"another relay is running for {spool_path} (pid {holder})") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def holder(spool_path: str) -> int | None:
    """The pid of the relay holding the spool's lock (0 when unknown); None when none does."""
    path = os.path.join(spool_path, FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    held = _held(stat.st_dev, stat.st_ino)
    if held is None:  # no lock table to read: the recorded pid, if that process lives
        held = pid.isdigit() and _alive(int(pid))
    return (int(pid) if pid.isdigit() else 0) if held else None


def _held(device: int, inode: int) -> bool | None:
    """Whether a flock is held on the file (``device``, ``inode``); None if the table cannot be read."""
    try:
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2148437 0 EOF"; waiters show "->" after the number.
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, number = (fields[5].split(":") + ["", "", ""])[:3]
        try:
            if os.makedev(int(major, 16), int(minor, 16)) == device and int(number) == inode:
                return True
        except ValueError:
            continue
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True
