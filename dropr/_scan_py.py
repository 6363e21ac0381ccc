"""Directory scanning, plain-Python reference of ``dropr._scan``.

A queue directory is its own index: the first ``limit`` message names in byte order are the
next messages to deliver. A message name is one that starts as every spool and store name
does — a priority digit, the 30-hex-digit id and ``+`` — so hidden files, temporary files and
anything else a person drops there are ignored rather than delivered. Names are compared as
the bytes the file system holds (``os.fsencode``), so the order never depends on how a name
decodes.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Collection

_HEAD = re.compile(rb"[0-9][0-9a-f]{30}\+")


def scan(path: str, limit: int, skip: Collection[str] = ()) -> list[str]:
    """The first ``limit`` message names of directory ``path`` in delivery order, leaving out
    names whose field after the first ``+`` (a spool name's peer) is in ``skip``."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    skipped = {os.fsencode(field) for field in skip}
    names = (
        name
        for name in _listdir(path)
        if _HEAD.match(name) and (not skipped or name[32:].split(b"+", 1)[0] not in skipped)
    )
    return [os.fsdecode(name) for name in heapq.nsmallest(limit, names)]


def count(path: str) -> int:
    """The number of entries of directory ``path`` whose name does not start with ``.``."""
    return sum(1 for name in _listdir(path) if not name.startswith(b"."))


def _listdir(path: str) -> list[bytes]:
    try:
        return os.listdir(os.fsencode(path))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
