"""The wire protocol, the one definition both ends import: part names, the manifest, the
answer (``PROTOCOL.md`` describes it for people).

Importable with nothing but msgpack: the relay, the local transport and the server use the
same statuses, names and checks. Everything a request declares is checked here before a
byte of it reaches the store; a whole-request problem is a :class:`RequestError` carrying
its HTTP status and reason, a problem of the peer's whole answer a :class:`PeerFailure`.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack

from . import names
from ._impl import codec, manifest
from .errors import InvalidMessage
from .limits import MAX_DELAY_SECONDS, Limits

STORED = "stored"
DUPLICATE = "duplicate"
REJECTED = "rejected"
RETRY = "retry"
STATUSES = frozenset((STORED, DUPLICATE, REJECTED, RETRY))
ACKNOWLEDGED = frozenset((STORED, DUPLICATE))
"""The statuses after which the sender may forget a message."""

CLIENT = "client"
MANIFEST = "manifest"
# Fields of the manifest-less form (one message, for curl and scripts).
ID = "id"
CHANNEL = "channel"
PRIORITY = "priority"
PAYLOAD = "payload"
TEXT_FIELDS = frozenset({CLIENT, MANIFEST, ID, CHANNEL, PRIORITY})

MANIFEST_TYPE = "application/msgpack"
PART_TYPE = "application/octet-stream"
MSGPACK = "application/msgpack"
JSON = "application/json"

MANIFEST_FIELDS = ("id", "channel", "priority", "part", "size", "crc32", "offset", "delay_ms")
"""The elements of a manifest entry, in order (``dropr._manifest`` writes them so); the last
:data:`OPTIONAL_FIELDS` may be left out, the later first."""
OPTIONAL_FIELDS = 2
MAX_PART_NAME = 255
MAX_DELAY_MS = MAX_DELAY_SECONDS * 1000
# A manifest entry is six small msgpack values; this bounds its bytes generously.
_ENTRY_OVERHEAD = 128

Acks = dict[str, tuple[str, str]]
"""An answer: ``{message id: (status, reason)}``."""


class RequestError(Exception):
    """A whole request refused: ``status`` is the HTTP status, the message its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PeerFailure(Exception):
    """A whole request failed at the sender's end (refused, timed out, not 200, an answer
    that is not one); the message says why, in one line. Every message stays queued."""


class Entry(NamedTuple):
    """One message announced by a manifest (or by the manifest-less form): the whole of its
    part, or with an ``offset`` the ``size`` bytes from there (several messages share a
    part so); due ``delay_ms`` after its put time (the time in its id)."""

    id: str
    channel: str
    priority: int
    part: str
    size: int
    crc: int
    offset: int = -1
    """-1: the message is its whole part."""
    delay_ms: int = 0


def bad(reason: str) -> RequestError:
    return RequestError(400, reason)


def check_name(what: str, text: str, limit: int, *, spaces: bool = True) -> str:
    """``text`` if it follows the one rule set for names (:mod:`dropr.names`); 400 if not."""
    try:
        return names.check_name(what, text, limit, spaces=spaces)
    except InvalidMessage as exc:
        raise bad(str(exc)) from None


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
    channels: set[str] = set()  # found valid: a batch repeats a few
    parts: set[str] = set()
    slow = functools.partial(_entry, limits=limits)
    entries: list[Entry] = manifest.quick_entries(raw, channels, parts, MAX_DELAY_MS, Entry, slow)
    if len({e.id for e in entries}) != len(entries):
        raise bad("manifest repeats a message id")
    _check_parts(entries)
    total = sum(e.size for e in entries)
    if total > max_total:
        raise RequestError(413, f"manifest declares {total} bytes, over the limit {max_total}")
    return entries


def _entry(index: int, item: Any, channels: set[str], parts: set[str], *, limits: Limits) -> Entry:
    """One manifest entry, checked field by field, with the reason of the first that is
    wrong; ``channels`` and ``parts`` hold those found valid so far, and get this one's. A
    part named by its message id is valid once the id is. (The entries of known channels
    and parts take the quick check of ``manifest.quick_entries``.)"""
    if not isinstance(item, list) or not len(MANIFEST_FIELDS) - OPTIONAL_FIELDS <= len(item) <= len(MANIFEST_FIELDS):
        raise bad(f"manifest entry {index} is not [{', '.join(MANIFEST_FIELDS)}] (the last two optional)")
    msg_id, channel, priority, part, size, crc = item[:6]
    if not (isinstance(msg_id, str) and codec.is_message_id(msg_id)):
        raise bad(f"manifest entry {index}: id is not 30 lower-case hex digits")
    if not isinstance(channel, str):
        raise bad(f"manifest entry {index}: channel is not text")
    if channel not in channels:
        check_name(f"manifest entry {index}: channel", channel, limits.max_channel)
        channels.add(channel)
    if not _is_int(priority) or not 0 <= priority <= 9:
        raise bad(f"manifest entry {index}: priority is not a whole number from 0 to 9")
    if part != msg_id:
        if not isinstance(part, str):
            raise bad(f"manifest entry {index}: part name is not text")
        if part not in parts:
            _check_part(index, part)
            parts.add(part)
    if not _is_int(size) or size < 0:
        raise bad(f"manifest entry {index}: size is not a whole number of bytes")
    if not _is_int(crc) or not 0 <= crc <= 0xFFFFFFFF:
        raise bad(f"manifest entry {index}: crc32 is not a 32-bit unsigned number")
    offset = item[6] if len(item) > 6 else -1
    delay_ms = item[7] if len(item) > 7 else 0
    if len(item) > 6 and (not _is_int(offset) or offset < 0):
        raise bad(f"manifest entry {index}: offset is not a whole number of bytes")
    if not _is_int(delay_ms) or not 0 <= delay_ms <= MAX_DELAY_MS:
        raise bad(f"manifest entry {index}: delay_ms is not a whole number of milliseconds up to {MAX_DELAY_MS}")
    return Entry(msg_id, channel, priority, part, size, crc, offset, delay_ms)


_BYTE_ORDER = operator.attrgetter("offset", "size")


def part_ranges(entries: list[Entry]) -> dict[str, list[Entry]]:
    """The entries of each part, in the order of their bytes in it (an empty one first)."""
    ranges: dict[str, list[Entry]] = {}
    for entry in entries:
        ranges.setdefault(entry.part, []).append(entry)
    for shared in ranges.values():
        if len(shared) > 1:
            shared.sort(key=_BYTE_ORDER)
    return ranges


def _check_parts(entries: list[Entry]) -> None:
    """A part is one message's whole, or holds messages at offsets whose bytes do not overlap."""
    for part, shared in part_ranges(entries).items():
        if len(shared) > 1 and shared[0].offset < 0:
            raise bad(f"manifest repeats part {part!r} without an offset for each message in it")
        for before, after in zip(shared, shared[1:]):  # noqa: B905 (one shorter by design)
            if before.offset + before.size > after.offset:
                raise bad(f"manifest gives messages {before.id} and {after.id} overlapping bytes of part {part!r}")


def _check_part(index: int, part: str) -> None:
    check_name(f"manifest entry {index}: part name", part, MAX_PART_NAME)
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


def mismatch(declared_size: int, declared_crc: int, size: int, crc: int) -> str:
    """Why a received payload is not the one declared, or "" when it is (the one check of a
    payload, over HTTP and the local transport alike)."""
    if size != declared_size:
        return f"size mismatch: declared {declared_size} bytes, received {size}"
    if crc != declared_crc:
        return f"checksum mismatch: declared crc32 {declared_crc:08x}, received {crc:08x}"
    return ""


def encode_acks(acks: Mapping[str, tuple[str, str]], as_json: bool = False) -> bytes:
    """The 200 answer's body: msgpack ``{id: [status, reason]}`` (JSON when asked for)."""
    if as_json:
        return json.dumps(acks).encode()  # a tuple is written as an array, in both
    packed: bytes = msgpack.packb(acks, use_bin_type=True)
    return packed


def decode_acks(data: bytes) -> Acks:
    """The answer map a sender received, checked; PeerFailure when it is not one."""
    try:
        answer = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise PeerFailure("the answer is not msgpack") from None
    return parse_acks(answer)


def parse_acks(answer: Any) -> Acks:
    """The answer map, checked; PeerFailure when it is not one."""
    if not isinstance(answer, dict):
        raise PeerFailure("the answer is not a map of message ids")
    acks: Acks = {}
    for msg_id, value in answer.items():
        if not isinstance(msg_id, str) or not isinstance(value, (list, tuple)) or not value or value[0] not in STATUSES:
            raise PeerFailure(f"the answer holds a bad entry for {msg_id!r}")
        reason = value[1] if len(value) > 1 and isinstance(value[1], str) else ""
        acks[msg_id] = (value[0], reason)
    return acks
