"""The wire protocol's rules, apart from any HTTP library: fields, manifest, acks.

Everything a request declares is checked here before a byte of it reaches the store;
a whole-request problem is a :class:`RequestError` carrying its HTTP status and reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack

from .._impl import codec
from ..limits import Limits

STORED = "stored"
DUPLICATE = "duplicate"
REJECTED = "rejected"
RETRY = "retry"

CLIENT = "client"
MANIFEST = "manifest"
# Fields of the manifest-less form (one message, for curl and scripts).
ID = "id"
CHANNEL = "channel"
PRIORITY = "priority"
PAYLOAD = "payload"
TEXT_FIELDS = frozenset({CLIENT, MANIFEST, ID, CHANNEL, PRIORITY})

DEFAULT_CHANNEL = "common"
DEFAULT_PRIORITY = 9
MAX_PART_NAME = 255
# A manifest entry is six small msgpack values; this bounds its bytes generously.
_ENTRY_OVERHEAD = 128

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Acks = dict[str, tuple[str, str]]


class RequestError(Exception):
    """A whole request refused: ``status`` is the HTTP status, the message its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Entry(NamedTuple):
    """One message announced by a manifest (or by the manifest-less form)."""

    id: str
    channel: str
    priority: int
    part: str
    size: int
    crc: int


def bad(reason: str) -> RequestError:
    return RequestError(400, reason)


def check_text(what: str, text: str, limit: int) -> str:
    """``text`` if it is non-empty, at most ``limit`` UTF-8 bytes and free of control chars."""
    if not text:
        raise bad(f"{what} is empty")
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise bad(f"{what} is longer than {limit} bytes")
    if _CONTROL.search(text):
        raise bad(f"{what} contains a control character")
    return text


def decode_text(what: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad(f"{what} is not UTF-8") from None


def manifest_limit(limits: Limits) -> int:
    """The most bytes a valid manifest can take, so reading one is bounded."""
    return 16 + limits.batch_count * (_ENTRY_OVERHEAD + limits.max_channel + MAX_PART_NAME)


def parse_manifest(data: bytes, limits: Limits, max_total: int) -> list[Entry]:
    """The entries of a msgpack manifest, each checked; 400 (or 413 for sheer size) otherwise."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise bad(f"manifest is not msgpack: {exc}") from None
    if not isinstance(raw, list):
        raise bad("manifest is not a msgpack array")
    if len(raw) > limits.batch_count:
        raise RequestError(413, f"manifest has {len(raw)} entries, over the limit {limits.batch_count}")
    channels: set[str] = set()  # checked already: a batch mostly repeats a few
    entries = [_entry(i, item, limits, channels) for i, item in enumerate(raw)]
    if len({e.id for e in entries}) != len(entries):
        raise bad("manifest repeats a message id")
    if len({e.part for e in entries}) != len(entries):
        raise bad("manifest repeats a part name")
    total = sum(e.size for e in entries)
    if total > max_total:
        raise RequestError(413, f"manifest declares {total} bytes, over the limit {max_total}")
    return entries


def _entry(index: int, item: Any, limits: Limits, channels: set[str]) -> Entry:
    """One manifest entry, checked; ``channels`` holds the channels found valid so far.

    A part named by its message id (as dropr's relay names them) is valid once the id is.
    """
    if not isinstance(item, list) or len(item) != 6:
        raise bad(f"manifest entry {index} is not [id, channel, priority, part, size, crc32]")
    msg_id, channel, priority, part, size, crc = item
    if not (isinstance(msg_id, str) and codec.is_message_id(msg_id)):
        raise bad(f"manifest entry {index}: id is not 30 lower-case hex digits")
    if not isinstance(channel, str):
        raise bad(f"manifest entry {index}: channel is not text")
    if channel not in channels:
        check_text(f"manifest entry {index}: channel", channel, limits.max_channel)
        channels.add(channel)
    if not _is_int(priority) or not 0 <= priority <= 9:
        raise bad(f"manifest entry {index}: priority is not a whole number from 0 to 9")
    if part != msg_id:
        _check_part(index, part)
    if not _is_int(size) or size < 0:
        raise bad(f"manifest entry {index}: size is not a whole number of bytes")
    if not _is_int(crc) or not 0 <= crc <= 0xFFFFFFFF:
        raise bad(f"manifest entry {index}: crc32 is not a 32-bit unsigned number")
    return Entry(msg_id, channel, priority, part, size, crc)


def _check_part(index: int, part: Any) -> None:
    if not isinstance(part, str):
        raise bad(f"manifest entry {index}: part name is not text")
    check_text(f"manifest entry {index}: part name", part, MAX_PART_NAME)
    if part in TEXT_FIELDS or part == PAYLOAD:
        raise bad(f"manifest entry {index}: part name {part!r} is reserved")


def _is_int(value: Any) -> bool:
    return type(value) is int


def parse_priority(text: str) -> int:
    """The priority of the manifest-less form: one digit, 0 to 9."""
    if len(text) != 1 or text not in "0123456789":
        raise bad("priority is not a whole number from 0 to 9")
    return int(text)


def parse_id(text: str) -> str:
    if not codec.is_message_id(text):
        raise bad("id is not 30 lower-case hex digits")
    return text


def encode_acks(acks: Mapping[str, tuple[str, str]], as_json: bool) -> bytes:
    """The 200 answer's body: msgpack ``{id: [status, reason]}`` (JSON when asked for)."""
    if as_json:
        return json.dumps({k: list(v) for k, v in acks.items()}).encode()
    packed: bytes = msgpack.packb({k: list(v) for k, v in acks.items()}, use_bin_type=True)
    return packed
