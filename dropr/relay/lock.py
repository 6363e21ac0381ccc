"""One relay per spool: an exclusive ``flock`` on ``SPOOL/relay.lock`` held by the worker.

The kernel drops the lock when the holder dies, however it dies, so a crashed relay never
blocks the next one; the file records the holder's pid for the refusal message.
"""

from __future__ import annotations

import fcntl
import os


class LockHeld(Exception):
    """Another relay holds the spool's lock."""


def acquire(spool_path: str) -> int:
    """Take the spool's relay lock; returns its descriptor (closing it releases the lock)."""
    path = os.path.join(spool_path, "relay.lock")
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
