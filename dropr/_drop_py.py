"""The put system-call path, plain-Python twin of ``dropr._drop``.

A message is written under its id in the spool's ``tmp/`` and renamed into ``queue/``
under its full spool name only once complete, so the queue never shows a partial file.
"""

from __future__ import annotations

import os
from zlib import crc32

from ._codec_py import new_id, spool_name

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def put(
    tmp_fd: int,
    queue_fd: int,
    peer_field: str,
    channel_field: str,
    priority: int,
    payload: bytes,
    sync: bool,
) -> str:
    """Write ``payload`` as a new queued message and return its id.

    ``peer_field`` and ``channel_field`` are already escaped. With ``sync`` the file data
    and then the queue directory are flushed to disk before returning. On failure nothing
    is left in ``tmp/`` or ``queue/`` and the ``OSError`` is raised with its errno; a field
    or priority outside the name format raises ValueError before anything is written.
    """
    msg_id = new_id()
    data = memoryview(payload).cast("B")
    try:
        name = spool_name(priority, msg_id, peer_field, channel_field, len(data), crc32(data))
    except ValueError:
        raise ValueError(f"not a spool name: priority {priority!r}, fields {peer_field!r}, {channel_field!r}") from None
    fd = os.open(msg_id, _CREATE, 0o640, dir_fd=tmp_fd)
    try:
        try:
            while data:
                data = data[os.write(fd, data) :]
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(msg_id, name, src_dir_fd=tmp_fd, dst_dir_fd=queue_fd)
    except BaseException:
        _unlink(msg_id, tmp_fd)
        raise
    if sync:
        try:
            os.fsync(queue_fd)
        except BaseException:
            _unlink(name, queue_fd)
            raise
    return msg_id


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
