"""File-name codec, compiled (``dropr._codec``); the format is documented in ``dropr._codec_py``."""

from typing import Final

ID_LEN: Final[int]
BUCKET_LEN: Final[int]
MAX_FIELD: Final[int]
SEPARATOR: Final[str]
COMPACT: Final[str]

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

def spool_name(priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int) -> str:
    """The spool file name of a message; ``peer`` and ``channel`` are already escaped.

    ValueError for a priority outside 0-9, a malformed id or a field that is not escaped.
    """

def store_name(priority: int, msg_id: str, client: str) -> str:
    """The store file name of a message; ``client`` is already escaped (ValueError as above)."""

def parse_spool_name(name: str) -> tuple[int, str, str, str, int, int]:
    """``(priority, id, peer, channel, size, crc)`` of a spool name (fields still escaped)."""

def parse_store_name(name: str) -> tuple[int, str, str]:
    """``(priority, id, client)`` of a store name (client still escaped)."""

def is_message_id(text: str) -> bool:
    """Whether ``text`` has the form of a message id (30 lower-case hex digits)."""
