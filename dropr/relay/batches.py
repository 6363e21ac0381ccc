"""Cutting the scanned names of one peer into requests.

A scan returns names in delivery order; each peer's share is cut, in that order, into
batches of at most ``count`` messages and ``max_bytes`` payload bytes (a file larger than
either travels alone), so a request has a bounded size and the server stores each batch
with one flush. A batch file is never split: it counts as the messages it holds, travels as
one part, and leaves the queue once each of its messages is acknowledged.

Then, for every transport alike: what it needs of the spool (:class:`SpoolFiles`), the
request's manifest (:func:`announce`) and what the peer's answer, per message, means for each
queued file (:func:`verdict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import msgpack

from .. import protocol
from .._impl import codec, manifest
from ..protocol import Acks

MISSING = (protocol.RETRY, "missing from the answer")
"""The verdict on a message the peer's answer leaves out."""


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


JOINED_PART = "joined"
"""The part of a request that holds its joined messages (:func:`announce`), one after another."""


class Announcement(NamedTuple):
    """A request to send: its ``manifest``, the ``files`` it announces (in order), and the
    messages of the files left out because their index cannot be read (``refused``). The
    first ``joined`` files are plain messages that travel in the part :data:`JOINED_PART`."""

    manifest: bytes
    files: list[Entry]
    refused: Acks
    joined: int = 0

    def messages(self) -> list[protocol.Entry]:
        """The messages the manifest announces, in order (a batch file's one by one)."""
        return [protocol.Entry(*item) for item in msgpack.unpackb(self.manifest)]


class SpoolFiles(NamedTuple):
    """What a transport needs of the spool it sends from: its ``client`` id, its
    ``queue_dir`` (batch files are read there for their index), the path of a queued name
    (``locate``) and the text of a name's field (``resolve``)."""

    client: str
    queue_dir: str
    locate: Callable[[str], str]
    resolve: Callable[[str], str]

    def announce(self, batch: list[Entry], join_below: int = 0) -> Announcement:
        return announce(batch, self.resolve, self.queue_dir, join_below)

    def paths(self, request: Announcement) -> dict[str, str]:
        """The path of each file of ``request``, by its part name (its first id)."""
        return {entry.id: self.locate(entry.name) for entry in request.files}


def announce(batch: list[Entry], resolve: Callable[[str], str], queue_dir: str, join_below: int = 0) -> Announcement:
    """The manifest of ``batch``, queued in ``queue_dir``, channels ``resolve``d to their
    texts. A file whose channel text is lost, or a batch file whose index does not match its
    name (it is read for its manifest), is left out, its messages rejected. Plain messages
    of fewer than ``join_below`` bytes come first, joined (see :class:`Announcement`)."""
    if join_below:
        joined = [entry for entry in batch if entry.messages == 1 and entry.size < join_below]
        if joined:
            own = [entry for entry in batch if entry.messages > 1 or entry.size >= join_below]
            return _announce(joined + own, resolve, queue_dir, len(joined))
    return _announce(batch, resolve, queue_dir, 0)


def _announce(batch: list[Entry], resolve: Callable[[str], str], queue_dir: str, joined: int) -> Announcement:
    """:func:`announce` of ``batch``, its first ``joined`` files joined."""
    texts: dict[str, str] = {}
    lost: dict[str, str] = {}
    files: list[Entry] = []
    refused: Acks = {}
    kept_joined = 0
    for index, entry in enumerate(batch):
        channel = entry.channel
        if channel[0] == "~" and channel not in texts and channel not in lost:
            try:
                texts[channel] = resolve(channel)
            except (OSError, ValueError) as exc:
                lost[channel] = f"the text of channel {channel} is missing: {exc}"
        if channel in lost:
            refused.update(dict.fromkeys(ids(entry), (protocol.REJECTED, lost[channel])))
        else:
            files.append(entry)
            kept_joined += index < joined
    try:
        return _request(files, texts, queue_dir, kept_joined, refused)
    except (OSError, ValueError):
        pass  # rare: find the files at fault, one by one
    readable: list[Entry] = []
    announced_joined = kept_joined
    for index, entry in enumerate(files):
        try:
            manifest.build([entry.name], texts, queue_dir)
        except (OSError, ValueError) as exc:
            refused.update(dict.fromkeys(ids(entry), (protocol.REJECTED, f"unreadable: {exc}")))
            kept_joined -= index < announced_joined
        else:
            readable.append(entry)
    return _request(readable, texts, queue_dir, kept_joined, refused)


def _request(files: list[Entry], texts: dict[str, str], queue_dir: str, joined: int, refused: Acks) -> Announcement:
    built = manifest.build([entry.name for entry in files], texts, queue_dir, joined_part=JOINED_PART, joined=joined)
    return Announcement(built, files, refused, joined)


def ids(entry: Entry) -> list[str]:
    """The ids of the messages of a queued file."""
    return codec.batch_ids(entry.id, entry.messages) if entry.messages > 1 else [entry.id]


def verdict(entry: Entry, acks: Acks) -> tuple[str, str]:
    """What the answer ``acks`` means for a queued file: ``stored`` (it may leave the queue)
    once each of its messages is acknowledged; ``retry`` (it stays queued, whole) while one
    is not; else ``rejected``, with a reason naming each rejected message."""
    if entry.messages == 1:
        return acks.get(entry.id, MISSING)
    rejected: dict[str, list[str]] = {}
    for msg_id in ids(entry):
        status, reason = acks.get(msg_id, MISSING)
        if status == protocol.REJECTED:
            rejected.setdefault(reason, []).append(msg_id)
        elif status not in protocol.ACKNOWLEDGED:
            return protocol.RETRY, reason
    if not rejected:
        return protocol.STORED, ""
    return protocol.REJECTED, "; ".join(f"{', '.join(msg_ids)}: {reason}" for reason, msg_ids in rejected.items())
