"""Cutting the scanned names of one peer into requests.

A scan returns names in delivery order; each peer's share is cut, in that order, into
batches of at most ``count`` messages and ``max_bytes`` payload bytes (a file larger than
either travels alone), so a request has a bounded size and the server stores each batch
with one flush. A batch file is never split: it counts as the messages it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Entry(NamedTuple):
    """One queued file as the relay handles it (fields as in the file name): a message, or a
    batch file of that many ``messages`` whose first id is ``id``."""

    name: str
    id: str
    priority: int
    channel: str
    size: int
    crc: int
    messages: int = 1
    delay_ms: int = 0


def cut(entries: Iterable[Entry], count: int, max_bytes: int) -> Iterator[list[Entry]]:
    """Consecutive batches of ``entries`` within ``count`` messages and ``max_bytes``."""
    batch: list[Entry] = []
    messages = size = 0
    for entry in entries:
        if batch and (messages + entry.messages > count or size + entry.size > max_bytes):
            yield batch
            batch, messages, size = [], 0, 0
        batch.append(entry)
        messages += entry.messages
        size += entry.size
    if batch:
        yield batch
