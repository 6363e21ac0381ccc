"""File-name codec, plain-Python reference of ``dropr._codec``.

A queued message's metadata lives in its file name, so that a directory listing is the
queue and a plain byte sort of names is delivery order.

Spool names::

    {P}{ID}+{PEER}+{CHANNEL}+{SIZE}+{CRC}[+{EXTRA}]

Store names (inside a channel's directory)::

    {P}{ID}+{CLIENT}

``P`` is the priority digit (0 first), ``ID`` the 30-hex-digit message id: 16 digits of
nanoseconds since the epoch, 8 of a per-process nonce, 6 of a per-process sequence, so ids
are time-ordered and unique across threads and processes without any existence check.
``SIZE`` is the file's length and ``CRC`` its CRC-32, both lower-case hex. ``EXTRA``, absent
for a plain message (one payload, due at once), is ``.``-separated tagged values, each a
letter and lower-case hex digits without a leading zero, in this order: ``n{count}`` (2 or
more: the file is a batch of that many messages, see below), ``d{delay}`` (1 or more: the
message may be claimed that many milliseconds after its put time, not before). For example
``...+4e20+1a2b3c4d+n64.d3e8``: 100 messages, a second's delay.

Text fields are escaped: bytes of their UTF-8 outside ``[A-Za-z0-9._-]`` become ``%XX``
(upper-case hex), so a name never holds ``/``, NUL, ``+`` or a leading dot. An escaped
field longer than :data:`MAX_FIELD` is replaced by its compact form, ``~`` and the
BLAKE2b-128 hex digest of the text; the caller keeps the text under that key (the spool's
and the store's ``names/`` directory). ``~`` is never produced by escaping, so the two
forms cannot collide. Names therefore stay well under 255 bytes.

A spool's queue is split into buckets, subdirectories named by the first :data:`BUCKET_LEN`
bytes of their messages' names: the priority digit and the id's first 8 digits, which count
time in units of 2**32 ns (about 4.3 s). Bucket names sort as their messages do, so the first
messages of a deep queue are in its first buckets and are found without reading the rest.

A batch file (``put_many``) holds its messages in one file, named as above by its first
message's id, so the whole batch shows in the queue at once or not at all. Its ids are
consecutive: the i-th is the first plus i, read as a number (:func:`batch_ids`), their
sequence digits never wrapping (a name whose count would is not a spool name). The file is
an index, then the payloads back to back, all integers big-endian::

    magic      8 bytes   BATCH_MAGIC
    count      4 bytes   the number of messages, as in the name's n
    count x    42 bytes  the message's id (30 ASCII hex digits), its size (8 bytes), its
                         CRC-32 (4 bytes)
    payloads             in index order; the first starts right after the index

The relay's manifest builder reads the index (never a payload) and announces each message
with its offset into the file, which travels whole as one part of a request.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import time
from collections.abc import Sequence

ID_LEN = 30
BUCKET_LEN = 9
MAX_FIELD = 80
SEPARATOR = "+"
COMPACT = "~"
BATCH_MAGIC = b"dropr-b1"
BATCH_HEADER = struct.Struct(">8sI")
BATCH_ENTRY = struct.Struct(">30sQI")
MAX_BATCH_COUNT = 1 << 20
"""The most messages a batch file can hold, whatever the limits say (its ids share one run
of sequence numbers)."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")
_HEX = frozenset("0123456789abcdef")

_SEQUENCE_SPAN = 1 << 24  # an id's last 6 hex digits
_EXTRA_TAGS = {"n": 6, "d": 16}  # each tag in its order, with the most hex digits it takes

_nonce = 0
_sequence = 0
_sequence_lock = threading.Lock()


def _new_nonce() -> None:
    global _nonce, _sequence, _sequence_lock
    _nonce = int.from_bytes(os.urandom(4), "big")
    _sequence = 0
    _sequence_lock = threading.Lock()


_new_nonce()
os.register_at_fork(after_in_child=_new_nonce)


def _reserve(count: int) -> int:
    """The first of ``count`` consecutive sequence numbers, none reused until the sequence
    wraps (a block never straddles the wrap, so its ids ascend)."""
    global _sequence
    with _sequence_lock:
        first = _sequence % _SEQUENCE_SPAN
        if first + count > _SEQUENCE_SPAN:
            _sequence += _SEQUENCE_SPAN - first
            first = 0
        _sequence += count
    return first


def new_id() -> str:
    """A fresh message id: time-ordered, unique per process without any lookup."""
    return f"{time.time_ns():016x}{_nonce:08x}{_reserve(1):06x}"


def new_ids(count: int) -> list[str]:
    """``count`` fresh consecutive ids (a batch's): one put time, ascending sequence numbers."""
    _check_batch_count(count, 1)
    head = f"{time.time_ns():016x}{_nonce:08x}"
    first = _reserve(count)
    return [f"{head}{first + i:06x}" for i in range(count)]


def batch_ids(first_id: str, count: int) -> list[str]:
    """The ids of the ``count`` messages of a batch file whose first id is ``first_id``."""
    _check_batch_count(count, 1)
    if not is_message_id(first_id) or not _holds(first_id, count):
        raise ValueError(f"not the first id of a batch of {count}: {first_id!r}")
    head, first = first_id[:24], int(first_id[24:], 16)
    return [f"{head}{first + i:06x}" for i in range(count)]


def id_time_ns(msg_id: str) -> int:
    """Nanoseconds since the epoch at which the message with this id was put."""
    return int(msg_id[:16], 16)


def escape(text: str) -> str:
    """The file-name-safe form of ``text`` (its compact form when too long)."""
    raw = text.encode("utf-8")
    out = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)
    if len(out) > MAX_FIELD:
        return compact(text)
    return out


def compact(text: str) -> str:
    """``~`` and the BLAKE2b-128 digest of ``text``: the form of a field too long to escape."""
    return COMPACT + hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def unescape(field: str) -> str:
    """The text of an escaped field; a compact field is returned as it is."""
    if field.startswith(COMPACT):
        return field
    if "%" not in field:
        return field
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(field):
        raw += field[pos : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += field[pos:].encode("ascii")
    return raw.decode("utf-8")


def spool_name(
    priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int, count: int = 1, delay_ms: int = 0
) -> str:
    """The spool file name of a message, or with ``count`` above 1 of a batch file, due
    ``delay_ms`` after its put time; ``peer`` and ``channel`` are already escaped."""
    if not (
        _is_head(priority, msg_id)
        and _is_field(peer)
        and _is_field(channel)
        and type(count) is int
        and 1 <= count <= MAX_BATCH_COUNT
        and _holds(msg_id, count)
        and type(delay_ms) is int
        and 0 <= delay_ms < 1 << 64
    ):
        raise ValueError(
            f"cannot name a message with priority {priority!r}, peer field {peer!r}, channel field {channel!r}, "
            f"count {count!r}, delay {delay_ms!r} ms"
        )
    extra = ".".join(([f"n{count:x}"] if count > 1 else []) + ([f"d{delay_ms:x}"] if delay_ms else []))
    return f"{priority}{msg_id}+{peer}+{channel}+{size:x}+{crc:08x}" + (f"+{extra}" if extra else "")


def parse_spool_name(name: str) -> tuple[int, str, str, str, int, int, int, int]:
    """``(priority, id, peer, channel, size, crc, count, delay_ms)`` of a spool name (fields
    still escaped; ``count`` is 1 for a plain message, ``delay_ms`` 0 when due at once)."""
    fields = name.split(SEPARATOR)
    if len(fields) not in (5, 6):
        raise ValueError(f"not a spool message name: {name!r}")
    head, peer, channel, size, crc = fields[:5]
    priority, msg_id = _parse_head(head, name)
    if not (peer and channel and _is_hex(size) and len(crc) == 8 and _is_hex(crc)):
        raise ValueError(f"not a spool message name: {name!r}")
    extra = _parse_extra(fields[5]) if len(fields) == 6 else {}
    if extra is None or not 2 <= extra.get("n", 2) <= MAX_BATCH_COUNT or not _holds(msg_id, extra.get("n", 1)):
        raise ValueError(f"not a spool message name: {name!r}")
    return priority, msg_id, peer, channel, int(size, 16), int(crc, 16), extra.get("n", 1), extra.get("d", 0)


def _parse_extra(extra: str) -> dict[str, int] | None:
    """The tagged values of a name's EXTRA field, None when it is not one."""
    values: dict[str, int] = {}
    tags = list(_EXTRA_TAGS)
    for item in extra.split("."):
        tag, digits = item[:1], item[1:]
        if tag not in tags or not 0 < len(digits) <= _EXTRA_TAGS[tag] or digits[0] == "0" or not _is_hex(digits):
            return None
        del tags[: tags.index(tag) + 1]
        values[tag] = int(digits, 16)
    return values


def batch_index(entries: Sequence[tuple[str, int, int]]) -> bytes:
    """The index of a batch file holding messages ``(id, size, crc32)``, in this order."""
    _check_batch_count(len(entries), 2)
    parts = [BATCH_HEADER.pack(BATCH_MAGIC, len(entries))]
    for msg_id, size, crc in entries:
        if not is_message_id(msg_id):
            raise ValueError(f"not a message id: {msg_id!r}")
        parts.append(BATCH_ENTRY.pack(msg_id.encode("ascii"), size, crc))
    return b"".join(parts)


def batch_index_size(count: int) -> int:
    """The bytes of a batch file's index for ``count`` messages: where its payloads start."""
    return BATCH_HEADER.size + count * BATCH_ENTRY.size


def parse_batch_index(data: bytes) -> list[tuple[str, int, int, int]]:
    """``(id, offset, size, crc32)`` of each message of a batch file that starts with
    ``data`` (its index at least); ValueError when that is no batch file's index."""
    if len(data) < BATCH_HEADER.size:
        raise ValueError("too short for a batch file")
    magic, count = BATCH_HEADER.unpack_from(data)
    if magic != BATCH_MAGIC:
        raise ValueError("not a batch file (bad magic)")
    if not 2 <= count <= MAX_BATCH_COUNT:
        raise ValueError(f"batch file of {count} messages")
    offset = batch_index_size(count)
    if len(data) < offset:
        raise ValueError(f"batch file index cut short: {len(data)} of {offset} bytes")
    entries = []
    for position in range(BATCH_HEADER.size, offset, BATCH_ENTRY.size):
        raw_id, size, crc = BATCH_ENTRY.unpack_from(data, position)
        msg_id = raw_id.decode("ascii", "replace")
        if not is_message_id(msg_id):
            raise ValueError(f"batch file index holds a bad id: {raw_id!r}")
        if offset + size >= 1 << 64:
            raise ValueError("batch file index: sizes add up to more than 64 bits")
        entries.append((msg_id, offset, size, crc))
        offset += size
    return entries


def store_name(priority: int, msg_id: str, client: str) -> str:
    """The store file name of a message; ``client`` is already escaped."""
    if not (_is_head(priority, msg_id) and _is_field(client)):
        raise ValueError(f"cannot name a message with priority {priority!r}, client field {client!r}")
    return f"{priority}{msg_id}+{client}"


def parse_store_name(name: str) -> tuple[int, str, str]:
    """``(priority, id, client)`` of a store name (client still escaped)."""
    head, sep, client = name.partition(SEPARATOR)
    if not sep or not client or SEPARATOR in client:
        raise ValueError(f"not a store message name: {name!r}")
    priority, msg_id = _parse_head(head, name)
    return priority, msg_id, client


def is_message_id(text: str) -> bool:
    """Whether ``text`` has the form of a message id (30 lower-case hex digits)."""
    return len(text) == ID_LEN and _is_hex(text)


def _is_head(priority: int, msg_id: str) -> bool:
    return type(priority) is int and 0 <= priority <= 9 and is_message_id(msg_id)


def _is_field(field: str) -> bool:
    if field.startswith(COMPACT):
        return len(field) == len(COMPACT) + 32 and _is_hex(field[1:])
    return 0 < len(field) <= MAX_FIELD and all(c == "%" or ord(c) in _SAFE for c in field)


def _parse_head(head: str, name: str) -> tuple[int, str]:
    if len(head) != ID_LEN + 1 or head[0] not in "0123456789" or not _is_hex(head[1:]):
        raise ValueError(f"not a message name: {name!r}")
    return ord(head[0]) - 48, head[1:]


def _holds(first_id: str, count: int) -> bool:
    """Whether a batch of ``count`` can start at ``first_id``: its sequence numbers run
    without wrapping."""
    return int(first_id[24:], 16) + count <= _SEQUENCE_SPAN


def _check_batch_count(count: int, least: int) -> None:
    if type(count) is not int or not least <= count <= MAX_BATCH_COUNT:
        raise ValueError(f"a batch holds {least} to {MAX_BATCH_COUNT} messages, not {count!r}")


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in _HEX for c in text)
