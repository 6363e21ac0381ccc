"""Directory scanning, plain-Python reference of ``dropr._scan``.

A queue directory is its own index: the first ``limit`` message names in byte order are the
next messages to deliver. A message name is one that starts as every spool and store name
does — a priority digit, the 30-hex-digit id and ``+`` — so hidden files, temporary files and
anything else a person drops there are ignored rather than delivered. Names are compared as
the bytes the file system holds (``os.fsencode``), so the order never depends on how a name
decodes.

A spool's ``queue/`` holds buckets (see ``dropr._codec_py``) rather than messages: the
``*_queue`` functions read its buckets in order and stop at the first bucket after which
``limit`` names are found, since every later bucket's names sort after them. A bucket that
vanishes while being read (the relay removes empty ones) is passed over; a name in a bucket
that is not its own is ignored. Counting a spool's queue counts messages: a batch file as the
messages its name says it holds.

:func:`tally_queue` sums a spool's queue per peer field: the messages, the bytes their names
give (the ``SIZE`` field, summed up to 2**64 - 1) and the oldest id, for names with a peer,
a channel and a size of at most 64 bits; others are passed over.
"""

from __future__ import annotations

import errno
import heapq
import os
import re
from collections.abc import Collection, Iterable

from ._codec_py import BUCKET_LEN, MAX_BATCH_COUNT, MAX_FIELD

_HEAD = re.compile(rb"[0-9][0-9a-f]{30}\+")
_BUCKET = re.compile(rf"[0-9][0-9a-f]{{{BUCKET_LEN - 1}}}")
_ID = re.compile(r"[0-9a-f]{30}")
_BATCH = re.compile(rb"[0-9][0-9a-f]{30}\+(?:[^+]*\+){4}n([1-9a-f][0-9a-f]{0,5})(?:\.|\Z)")
_TOP = (1 << 64) - 1
"""Where a tally's sum of sizes stops (as the compiled twin's 64-bit one does)."""
_TALLIED = re.compile(rb"[0-9]([0-9a-f]{30})\+([^+]{1,%d})\+[^+]*\+([0-9a-f]+)\+" % MAX_FIELD)


def scan(path: str, limit: int, skip: Collection[str] = ()) -> list[str]:
    """The first ``limit`` message names of directory ``path`` in delivery order, leaving out
    names whose field after the first ``+`` (a spool name's peer) is in ``skip``."""
    return _select(_listdir(path), limit, skip)


def scan_queue(path: str, limit: int, skip: Collection[str] = (), listed: list[str] | None = None) -> list[str]:
    """As :func:`scan` for a spool's bucketed ``queue/``: buckets are read in order until
    ``limit`` names are found, so a deep queue costs what its first buckets hold."""
    _check(limit)
    selected: list[str] = []
    for bucket in buckets(path) if listed is None else listed:
        if len(selected) >= limit:
            break
        prefix = bucket.encode("ascii")
        names = [name for name in _listdir(os.path.join(path, bucket), gone_ok=True) if name.startswith(prefix)]
        selected += _select(names, limit - len(selected), skip)
    return selected


def buckets(path: str) -> list[str]:
    """The bucket names of a spool's ``queue/`` directory ``path``, in order."""
    return sorted(name for name in map(os.fsdecode, _listdir(path)) if _BUCKET.fullmatch(name))


def count(path: str) -> int:
    """The number of entries of directory ``path`` whose name does not start with ``.``."""
    return sum(1 for name in _listdir(path) if not name.startswith(b"."))


def count_queue(path: str) -> int:
    """The messages in the buckets of a spool's ``queue/`` directory ``path``: as :func:`count`
    does, but a batch file counts as the messages it holds."""
    return sum(
        _messages(name)
        for bucket in buckets(path)
        for name in _listdir(os.path.join(path, bucket), gone_ok=True)
        if name[:1] != b"."
    )


def _messages(name: bytes) -> int:
    """How many messages a queued file holds: a batch file's count (its name's ``n``), else 1."""
    batch = _BATCH.match(name)
    count = int(batch.group(1), 16) if batch else 1
    return count if 2 <= count <= MAX_BATCH_COUNT else 1


def oldest(path: str) -> str:
    """The smallest (earliest) id among the message names of directory ``path``; "" if none."""
    return min((name[1:31].decode("ascii") for name in _listdir(path) if _HEAD.match(name)), default="")


def tally_queue(path: str) -> dict[str, tuple[int, int, str]]:
    """Per peer field of the messages in a spool's ``queue/`` directory ``path``: how many (a
    batch file as the messages it holds), their bytes (the sizes their names give) and the
    oldest id."""
    found: dict[bytes, tuple[int, int, bytes]] = {}
    for bucket in buckets(path):
        prefix = bucket.encode("ascii")
        for name in _listdir(os.path.join(path, bucket), gone_ok=True):
            match = _TALLIED.match(name)
            if match is None or not name.startswith(prefix):
                continue
            msg_id, field, size_text = match.groups()
            size = int(size_text, 16)
            if size >> 64:
                continue
            messages, total, oldest = found.get(field, (0, 0, msg_id))
            found[field] = (messages + _messages(name), min(total + size, _TOP), min(oldest, msg_id))
    return {os.fsdecode(field): (n, size, oldest.decode("ascii")) for field, (n, size, oldest) in found.items()}


def _check(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")


def _select(names: Iterable[bytes], limit: int, skip: Collection[str]) -> list[str]:
    _check(limit)
    skipped = {os.fsencode(field) for field in skip}
    messages = (
        name for name in names if _HEAD.match(name) and (not skipped or name[32:].split(b"+", 1)[0] not in skipped)
    )
    return [os.fsdecode(name) for name in heapq.nsmallest(limit, messages)]


def _listdir(path: str, gone_ok: bool = False) -> list[bytes]:
    """The entries of ``path``; none when ``gone_ok`` and it does not exist."""
    try:
        return os.listdir(os.fsencode(path))
    except OSError as exc:
        if gone_ok and exc.errno == errno.ENOENT:
            return []
        raise OSError(exc.errno, exc.strerror, path) from None


def find(path: str, msg_id: str) -> list[str]:
    """The message names of directory ``path`` whose id is ``msg_id``, in byte order (one
    per client that sent that id); ValueError when ``msg_id`` is not a message id."""
    if not (isinstance(msg_id, str) and _ID.fullmatch(msg_id)):
        raise ValueError(f"not a message id: {msg_id!r}")
    wanted = msg_id.encode("ascii")
    return [os.fsdecode(name) for name in sorted(n for n in _listdir(path) if _HEAD.match(n) and n[1:31] == wanted)]
