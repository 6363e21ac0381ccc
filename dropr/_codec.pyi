"""File-name codec, compiled (``dropr._codec``); the format is documented in ``dropr._codec_py``."""

from collections.abc import Sequence
from typing import Final

ID_LEN: Final[int]
BUCKET_LEN: Final[int]
MAX_FIELD: Final[int]
SEPARATOR: Final[str]
COMPACT: Final[str]
MAX_BATCH_COUNT: Final[int]
BATCH_MAGIC: Final[bytes]

def new_ids(count: int) -> list[str]:
    """``count`` fresh consecutive ids (a batch's): one put time, ascending sequence numbers."""

def batch_ids(first_id: str, count: int) -> list[str]:
    """The ids of the ``count`` messages of a batch file whose first id is ``first_id``."""

def batch_index_size(count: int) -> int:
    """The bytes of a batch file's index for ``count`` messages: where its payloads start."""

def batch_index(entries: Sequence[tuple[str, int, int]]) -> bytes:
    """The index of a batch file holding messages ``(id, size, crc32)``, in this order."""

def parse_batch_index(data: bytes) -> list[tuple[str, int, int, int]]:
    """``(id, offset, size, crc32)`` of each message of a batch file that starts with
    ``data`` (its index at least); ValueError when that is no batch file's index."""

def new_id() -> str:
    """A fresh message id: time-ordered, unique per process without any lookup."""

def id_time_ns(msg_id: str) -> int:
    """Nanoseconds since the epoch at which the message with this id was put."""

def escape(text: str) -> str:
    """The file-name-safe form of ``text`` (its compact form when too long)."""

def compact(text: str) -> str:
    """``~`` and the BLAKE2b-128 digest of ``text``: the form of a field too long to escape."""

def unescape(field: str) -> str:
    """The text of an escaped field; a compact field is returned as it is."""

def spool_name(
    priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int, count: int = 1, delay_ms: int = 0
) -> str:
    """The spool file name of a message, or with ``count`` above 1 of a batch file, due
    ``delay_ms`` after its put time; ``peer`` and ``channel`` are already escaped.

    ValueError for a priority outside 0-9, a malformed id or a field that is not escaped.
    """

def store_name(priority: int, msg_id: str, client: str) -> str:
    """The store file name of a message; ``client`` is already escaped (ValueError as above)."""

def parse_spool_name(name: str) -> tuple[int, str, str, str, int, int, int, int]:
    """``(priority, id, peer, channel, size, crc, count, delay_ms)`` of a spool name (fields
    still escaped; ``count`` is 1 for a plain message, ``delay_ms`` 0 when due at once)."""

def parse_store_name(name: str) -> tuple[int, str, str]:
    """``(priority, id, client)`` of a store name (client still escaped)."""

def is_message_id(text: str) -> bool:
    """Whether ``text`` has the form of a message id (30 lower-case hex digits)."""
