"""File-name codec, plain-Python reference of ``dropr._codec``.

A queued message's metadata lives in its file name, so that a directory listing is the
queue and a plain byte sort of names is delivery order.

Spool names::

    {P}{ID}+{PEER}+{CHANNEL}+{SIZE}+{CRC}

Store names (inside a channel's directory)::

    {P}{ID}+{CLIENT}

``P`` is the priority digit (0 first), ``ID`` the 30-hex-digit message id: 16 digits of
nanoseconds since the epoch, 8 of a per-process nonce, 6 of a per-process sequence, so ids
are time-ordered and unique across threads and processes without any existence check.
``SIZE`` is the payload length and ``CRC`` its CRC-32, both lower-case hex.

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
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time

ID_LEN = 30
BUCKET_LEN = 9
MAX_FIELD = 80
SEPARATOR = "+"
COMPACT = "~"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")
_HEX = frozenset("0123456789abcdef")

_nonce = 0
_sequence = itertools.count()


def _new_nonce() -> None:
    global _nonce, _sequence
    _nonce = int.from_bytes(os.urandom(4), "big")
    _sequence = itertools.count()


_new_nonce()
os.register_at_fork(after_in_child=_new_nonce)


def new_id() -> str:
    """A fresh message id: time-ordered, unique per process without any lookup."""
    return f"{time.time_ns():016x}{_nonce:08x}{next(_sequence) & 0xFFFFFF:06x}"


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


def spool_name(priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int) -> str:
    """The spool file name of a message; ``peer`` and ``channel`` are already escaped."""
    if not (_is_head(priority, msg_id) and _is_field(peer) and _is_field(channel)):
        raise ValueError(
            f"cannot name a message with priority {priority!r}, peer field {peer!r}, channel field {channel!r}"
        )
    return f"{priority}{msg_id}+{peer}+{channel}+{size:x}+{crc:08x}"


def parse_spool_name(name: str) -> tuple[int, str, str, str, int, int]:
    """``(priority, id, peer, channel, size, crc)`` of a spool name (fields still escaped)."""
    fields = name.split(SEPARATOR)
    if len(fields) != 5:
        raise ValueError(f"not a spool message name: {name!r}")
    head, peer, channel, size, crc = fields
    priority, msg_id = _parse_head(head, name)
    if not (peer and channel and _is_hex(size) and len(crc) == 8 and _is_hex(crc)):
        raise ValueError(f"not a spool message name: {name!r}")
    return priority, msg_id, peer, channel, int(size, 16), int(crc, 16)


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


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in _HEX for c in text)
