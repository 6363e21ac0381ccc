"""The put path (compiled); ``dropr._drop_py`` is its plain-Python twin."""

from typing import Final

STALE_PUT_NS: Final[int]
BUCKET_ATTEMPTS: Final[int]

def put(
    tmp_fd: int,
    queue_fd: int,
    peer_field: str,
    channel_field: str,
    priority: int,
    payload: bytes | bytearray | memoryview,
    sync: bool,
    delay_ms: int = 0,
    free_fd: int = -1,
    reuse: str | None = None,
) -> str:
    """Write ``payload`` as a new queued message, due ``delay_ms`` after its put time, in the
    spool whose ``tmp/`` and ``queue/`` directories are open as ``tmp_fd`` and ``queue_fd``;
    return its id.

    ``peer_field`` and ``channel_field`` are already escaped; the message goes into its
    bucket, ``queue/BUCKET/NAME``, made when missing. With ``sync`` the file data, its bucket
    and the bucket's entry in ``queue/`` are flushed to disk before returning. On failure
    nothing is left in ``tmp/`` or ``queue/`` and ``OSError`` is raised with its errno; a
    field, priority or delay outside the name format raises ValueError before anything is
    written.

    ``reuse``, a name in the spool's ``free/`` (open as ``free_fd``), is an acknowledged file
    to write the message into, sparing the file system a new inode; a new file is made when
    another producer took it first.
    """

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
