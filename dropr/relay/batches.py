"""Cutting the scanned names of one peer into requests.

A scan returns names in delivery order; each peer's share is cut, in that order, into
batches of at most ``count`` messages and ``max_bytes`` payload bytes (a message larger
than ``max_bytes`` travels alone), so a request has a bounded size and the server stores
each batch with one flush.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Entry(NamedTuple):
    """One queued message as the relay handles it (fields as in the file name)."""

    name: str
    id: str
    priority: int
    channel: str
    size: int
    crc: int


def cut(entries: Iterable[Entry], count: int, max_bytes: int) -> Iterator[list[Entry]]:
    """Consecutive batches of ``entries`` within ``count`` messages and ``max_bytes``."""
    batch: list[Entry] = []
    size = 0
    for entry in entries:
        if batch and (len(batch) >= count or size + entry.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch
