"""The put system-call path (compiled); ``dropr._drop_py`` is its plain-Python twin."""

from collections.abc import Callable
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

DEFAULT_CHANNEL: Final[str]
DEFAULT_PRIORITY: Final[int]
FIELDS_CACHE: Final[int]

class Putter:
    """One spool's put path, held open; the callbacks are described in ``dropr._drop_py.Putter``."""

    def __init__(
        self,
        tmp_fd: int,
        queue_fd: int,
        max_payload: int,
        fields: Callable[[object, object], tuple[str, str]],
        coerce: Callable[[object, object, int], tuple[bytes | memoryview, int]],
        failed: Callable[[OSError], BaseException],
    ) -> None: ...
    def close(self) -> None:
        """Close the spool's directories; further puts fail."""
    def put(self, payload: object, peer: object, channel: object, priority: object, sync: bool) -> str:
        """Queue ``payload`` for ``peer`` in ``channel``; returns the message id."""

class Spools:
    """The spools of ``fastput``: ``putters`` maps each ``spool`` argument seen to its
    Putter, made by ``open(spool)`` on first use."""

    putters: dict[object, Putter]
    def __init__(self, open: Callable[[object], Putter]) -> None: ...
    def fastput(
        self,
        payload: object,
        peer: object,
        channel: object = ...,
        priority: object = ...,
        *,
        spool: object = None,
        sync: bool = False,
    ) -> str:
        """Queue ``payload`` for ``peer`` in ``spool`` and return the message id."""
