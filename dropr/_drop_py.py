"""The put path, plain-Python twin of ``dropr._drop``.

A message is written under its id in the spool's ``tmp/`` and renamed into its queue bucket,
``queue/BUCKET/NAME``, under its full spool name only once complete, so the queue never shows
a partial file. A missing bucket is made on the way (it is new, or the relay removed it as
empty meanwhile) and the rename tried again. A batch of messages is one file the same way, a
batch file (its format is in ``dropr._codec_py``), so it shows whole or not at all; a batch
of one is a plain message.

A file the relay is done with may be written again: it renames small acknowledged files into
the spool's ``free/`` and a put given one of those names (``reuse``) renames it to ``tmp/ID``
and writes over it, cutting it to its new length, instead of making a file. On a file system
without a journal a new inode costs 300-700 µs of kernel time right after many deletes
(the kernel passes over recently freed inodes), a rename 2-5 µs; the file is new or reused
before it enters the queue, so the queue still never shows a partial file. When another
producer took the name first, the put makes a new file.

With ``sync``, the file's data, then its bucket, then the bucket's entry in ``queue/`` are
flushed before the put returns. The last flush is skipped when this process already flushed
``queue/`` for this bucket, unless the put is stale (its id made more than
:data:`STALE_PUT_NS` ago): the relay removes an empty bucket only once its time slice ended
longer ago than that, so a bucket cannot have been removed and made anew under a put that is
not stale.

The front that calls it, ``Putter`` and ``Spools``, is ``dropr._putter_py``.
"""

from __future__ import annotations

import errno
import os
from time import time_ns
from zlib import crc32

from ._codec_py import BUCKET_LEN, batch_index, new_id, new_ids, spool_name
from ._files import DIR_FLAGS, DIR_MODE, FILE_MODE, write_and_close

STALE_PUT_NS = 1_000_000_000
BUCKET_ATTEMPTS = 8

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_synced_slot = [0] * 10


def put(
    tmp_fd: int,
    queue_fd: int,
    peer_field: str,
    channel_field: str,
    priority: int,
    payload: bytes,
    sync: bool,
    delay_ms: int = 0,
    free_fd: int = -1,
    reuse: str | None = None,
) -> str:
    """Write ``payload`` as a new queued message, due ``delay_ms`` after its put time, and
    return its id.

    ``peer_field`` and ``channel_field`` are already escaped. With ``sync`` the file data,
    its bucket and the bucket's entry in ``queue/`` are flushed to disk before returning. On
    failure nothing is left in ``tmp/`` or ``queue/`` and the ``OSError`` is raised with its
    errno; a field, priority or delay outside the name format raises ValueError before
    anything is written.
    """
    msg_id = new_id()
    data = memoryview(payload).cast("B")
    name = _name(priority, msg_id, peer_field, channel_field, len(data), crc32(data), 1, delay_ms)
    _publish(tmp_fd, queue_fd, msg_id, name, data, sync, free_fd, reuse)
    return msg_id


def put_many(
    tmp_fd: int,
    queue_fd: int,
    peer_field: str,
    channel_field: str,
    priority: int,
    payloads: list[bytes],
    sync: bool,
    delay_ms: int = 0,
    free_fd: int = -1,
    reuse: str | None = None,
) -> list[str]:
    """Write ``payloads`` as one batch file of new queued messages and return their ids, as
    :func:`put` does for one (and with ``sync`` with the same flushes, one for the batch)."""
    if len(payloads) <= 1:
        return [
            put(tmp_fd, queue_fd, peer_field, channel_field, priority, p, sync, delay_ms, free_fd, reuse)
            for p in payloads
        ]
    ids = new_ids(len(payloads))
    views = [memoryview(payload).cast("B") for payload in payloads]
    data = b"".join([batch_index([(i, len(v), crc32(v)) for i, v in zip(ids, views, strict=True)]), *views])
    name = _name(priority, ids[0], peer_field, channel_field, len(data), crc32(data), len(ids), delay_ms)
    _publish(tmp_fd, queue_fd, ids[0], name, data, sync, free_fd, reuse)
    return ids


def _name(priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int, count: int, delay_ms: int) -> str:
    try:
        return spool_name(priority, msg_id, peer, channel, size, crc, count, delay_ms)
    except ValueError:
        raise ValueError(
            f"not a spool name: priority {priority!r}, fields {peer!r}, {channel!r}, delay {delay_ms!r} ms"
        ) from None


def _publish(
    tmp_fd: int,
    queue_fd: int,
    msg_id: str,
    name: str,
    data: bytes | memoryview,
    sync: bool,
    free_fd: int,
    reuse: str | None,
) -> None:
    """Write ``data`` as ``tmp/ID``, then rename it to ``queue/BUCKET/NAME``; with ``sync``
    flush it there; nothing left of it on failure."""
    bucket = name[:BUCKET_LEN]
    path = f"{bucket}/{name}"
    fd, reused = _open_tmp(tmp_fd, msg_id, free_fd, reuse)
    try:
        if reused:
            os.ftruncate(fd, len(data))  # before the write: no byte of the old file past the new end
        write_and_close(fd, data, sync)
        made = _enter(tmp_fd, queue_fd, msg_id, bucket, path)
    except BaseException:
        _unlink(msg_id, tmp_fd)
        raise
    if sync:
        try:
            _sync_entry(queue_fd, bucket, msg_id, int(name[0]), made)
        except BaseException:
            _unlink(path, queue_fd)
            raise


def _open_tmp(tmp_fd: int, msg_id: str, free_fd: int, reuse: str | None) -> tuple[int, bool]:
    """``tmp/ID`` open to write, and whether it is ``free/REUSE`` renamed there (see above)."""
    if reuse is not None:
        try:
            os.rename(reuse, msg_id, src_dir_fd=free_fd, dst_dir_fd=tmp_fd)
        except OSError:
            pass
        else:
            try:
                return os.open(msg_id, os.O_WRONLY | os.O_CLOEXEC, dir_fd=tmp_fd), True
            except OSError:
                _unlink(msg_id, tmp_fd)
    return os.open(msg_id, _CREATE, FILE_MODE, dir_fd=tmp_fd), False


def _enter(tmp_fd: int, queue_fd: int, msg_id: str, bucket: str, path: str) -> bool:
    """Renames ``tmp/ID`` to ``queue/BUCKET/NAME``; returns whether it made the bucket."""
    made = False
    for _ in range(BUCKET_ATTEMPTS):
        try:
            os.rename(msg_id, path, src_dir_fd=tmp_fd, dst_dir_fd=queue_fd)
            return made
        except FileNotFoundError:
            pass
        try:
            os.mkdir(bucket, DIR_MODE, dir_fd=queue_fd)
            made = True
        except FileExistsError:
            pass
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _sync_entry(queue_fd: int, bucket: str, msg_id: str, priority: int, made: bool) -> None:
    fd = os.open(bucket, DIR_FLAGS, dir_fd=queue_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    slot = int(msg_id[:8], 16)
    stale = time_ns() - int(msg_id[:16], 16) > STALE_PUT_NS
    if made or stale or _synced_slot[priority] != slot:
        os.fsync(queue_fd)
        _synced_slot[priority] = slot


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
