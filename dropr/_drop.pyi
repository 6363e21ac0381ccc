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
) -> str:
    """Write ``payload`` as a new queued message in the spool whose ``tmp/`` and ``queue/``
    directories are open as ``tmp_fd`` and ``queue_fd``; return its id.

    ``peer_field`` and ``channel_field`` are already escaped; the message goes into its
    bucket, ``queue/BUCKET/NAME``, made when missing. With ``sync`` the file data, its bucket
    and the bucket's entry in ``queue/`` are flushed to disk before returning. On failure
    nothing is left in ``tmp/`` or ``queue/`` and ``OSError`` is raised with its errno; a
    field or priority outside the name format raises ValueError before anything is written.
    """
