"""Reading one POST's multipart body into staged files, measured as they stream in.

The body is streamed from the connection into ``multipart``'s push parser (bytes in, parts
out, no I/O of its own). Its parts come in order: the text fields first (``client`` and
``manifest``, or the manifest-less ``id``/``channel``/``priority``), then one file part per
message, or per batch of messages at the offsets the manifest gives (a batch file of the
relay, sent whole); each message goes to its own staged file as its bytes stream by — or,
in a part of small messages, once the part is read (:data:`PART_HOLD_BYTES`) —, its size
and CRC-32 computed on the way (the bytes of a part outside every message are only
counted), and the store's ingest path checks them against the manifest when the request is
committed. A small message's bytes are held in memory, and the files of those complete are
created together after each chunk of the body, in one call without the GIL, so the event
loop's thread does not give the GIL up at every open, write and close. Nothing reaches the
store here: a whole-request problem raises :class:`~.protocol.RequestError` and the caller
removes every staged file.

That parser, not aiohttp's multipart reader, because a batch is mostly small parts: it reads
a part's headers in a few microseconds, where aiohttp's reader spends hundreds parsing each
``Content-Disposition`` (twice), which capped the server far below the rate of a relay.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from multipart import (
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)

from .. import protocol as p
from .._impl import codec
from ..errors import InvalidMessage
from ..limits import DEFAULT_CHANNEL, DEFAULT_PRIORITY, Limits
from ..names import check_channel, check_client_id
from ..protocol import Entry, RequestError, bad
from ..store.ingest import IngestSide, Staged
from ..store.staging import HOLD_BYTES, StagedFile, Staging, write_held

UPLOADS = "upload-"
"""The prefix of the server's staged files, by which a restart finds what a crash left."""
_SMALL_FIELD = 64  # id and priority of the manifest-less form
PART_HOLD_BYTES = 1 << 20
"""The most bytes of a part holding small messages at offsets that are read whole into
memory and split once it ends (see :class:`_Body`)."""
_FULL = (errno.ENOSPC, errno.EDQUOT)


def store_failure(exc: OSError) -> RequestError:
    """The answer to a failed file operation: 507 for a full disk, 500 otherwise."""
    if exc.errno in _FULL:
        return RequestError(507, f"store is full: {exc.strerror or exc}")
    return RequestError(500, f"store error: {exc.strerror or exc}")


@dataclass
class Upload:
    """What one request brought: its client, its entries and their staged files."""

    client: str = ""
    entries: list[Entry] = field(default_factory=list)
    staged: list[Staged] = field(default_factory=list)  # the parts received whole
    acks: p.Acks = field(default_factory=dict)  # verdicts known before the store is asked
    payload_bytes: int = 0
    files: list[StagedFile] = field(default_factory=list)  # every file staged, for cleanup

    def take(self) -> list[Staged]:
        """The messages to commit: their files are the store's from now on."""
        staged, self.staged, self.files = self.staged, [], []
        return staged

    def discard(self) -> None:
        """Remove every staged file not handed over (idempotent)."""
        while self.files:
            self.files.pop().discard()


class Receiver:
    """Reads requests into one store's staged files under the given limits."""

    def __init__(self, store: IngestSide, limits: Limits, max_request_bytes: int) -> None:
        self.store = store
        self.limits = limits
        self.max_request_bytes = max_request_bytes

    async def read(self, request: web.Request, upload: Upload) -> None:
        """Fill ``upload`` from the request's body; the caller discards it on any error."""
        body = _Body(self, upload)
        left = self.max_request_bytes
        try:
            parser = PushMultipartParser(_boundary(request.headers.get(hdrs.CONTENT_TYPE, "")))
            async for chunk in request.content.iter_any():
                left -= len(chunk)
                if left < 0:
                    raise RequestError(413, f"request larger than the limit of {self.max_request_bytes} bytes")
                for event in parser.parse(chunk):
                    if event is None:
                        body.end()
                    elif isinstance(event, MultipartSegment):
                        body.begin(event.name or "")
                    else:
                        body.data(event)
                body.write_held()
            parser.close()
        except (MultipartError, BadHttpMessage) as exc:
            raise bad(f"malformed multipart body: {exc}") from None
        except web.RequestPayloadError as exc:  # for one, not in the Content-Encoding it declares
            raise bad(f"unreadable body: {_one_line(exc.__cause__ or exc)}") from None
        except ConnectionResetError:
            raise bad("connection lost in the middle of the body") from None
        body.finish()

    def field_limit(self, name: str) -> int:
        if name == p.MANIFEST:
            return p.manifest_limit(self.limits)
        if name == p.CLIENT:
            return self.limits.max_client
        if name == p.CHANNEL:
            return self.limits.max_channel
        return _SMALL_FIELD

    def expected(self, fields: dict[str, bytes], upload: Upload) -> dict[str, list[Entry]]:
        """Check the text fields, fill in ``upload``'s client and entries, and return the
        entries by the name of the file part that should carry them, in their order in it."""
        if p.CLIENT not in fields:
            raise bad("field 'client' is missing")
        upload.client = self._checked(check_client_id, p.decode_text("client", fields[p.CLIENT]))
        upload.entries = self._entries(fields)
        return p.part_ranges(upload.entries)

    def _entries(self, fields: dict[str, bytes]) -> list[Entry]:
        """The messages announced, by the manifest or the simple form."""
        if p.MANIFEST in fields:
            extra = sorted(fields.keys() & {p.ID, p.CHANNEL, p.PRIORITY})
            if extra:
                raise bad(f"field(s) {', '.join(extra)} not allowed with a manifest")
            return p.parse_manifest(fields[p.MANIFEST], self.limits, self.max_request_bytes)
        msg_id = p.parse_id(_text(fields, p.ID)) if p.ID in fields else codec.new_id()
        channel = self._checked(check_channel, _text(fields, p.CHANNEL)) if p.CHANNEL in fields else DEFAULT_CHANNEL
        priority = p.parse_priority(_text(fields, p.PRIORITY)) if p.PRIORITY in fields else DEFAULT_PRIORITY
        return [Entry(msg_id, channel, priority, p.PAYLOAD, -1, -1)]  # -1: nothing declared

    def _checked(self, check: Callable[[str, Limits], str], text: str) -> str:
        """``text`` if it passes ``check``, one of the rules of :mod:`dropr.names`; 400 if not."""
        try:
            return check(text, self.limits)
        except InvalidMessage as exc:
            raise bad(str(exc)) from None


class _Body:
    """One request's parts as the parser hands them over: ``begin``, ``data``..., ``end``.

    A part is a text field (``field`` collects it) or a file part holding messages: one that
    is the whole part (``whole``), or ``ranges`` of it at their offsets. Those of a part
    whose messages are all small and that is not large (:data:`PART_HOLD_BYTES`) are read
    into memory whole (``part``, up to the end of its last message: ``extent``) and split
    when it ends, each message's bytes a slice of it: a relay's batch is mostly such parts,
    and one pass over their messages costs a fraction of following each through the chunks.
    Else they are taken in their order as the part's bytes stream by (``position``: how
    many have). ``entry`` is the message whose bytes come now, ``staged`` its file, None for
    one refused already; bytes outside every message, or of a refused one, are only counted
    (``drained``).
    """

    __slots__ = (
        "drained",
        "entry",
        "expected",
        "extent",
        "field",
        "field_limit",
        "fields",
        "held",
        "held_queued",
        "hold_limit",
        "max_payload",
        "name",
        "part",
        "position",
        "ranges",
        "receiver",
        "staged",
        "staging",
        "upload",
        "whole",
    )

    def __init__(self, receiver: Receiver, upload: Upload) -> None:
        self.receiver = receiver
        self.upload = upload
        self.staging: Staging = receiver.store.staging(UPLOADS)
        self.max_payload = receiver.limits.max_payload
        self.hold_limit = min(HOLD_BYTES, self.max_payload)  # the largest message a part read whole may hold
        self.fields: dict[str, bytes] = {}
        self.expected: dict[str, list[Entry]] | None = None  # known once the first file part begins
        self.name = ""
        self.field: bytearray | None = None
        self.field_limit = 0
        self.entry: Entry | None = None
        self.staged: StagedFile | None = None
        self.held: list[StagedFile] = []  # complete, still in memory: written after each chunk
        self.held_queued: list[tuple[str, str, int] | None] = []  # id, channel, priority; None: due later
        self.ranges: collections.deque[Entry] = collections.deque()
        self.whole = False
        self.part: bytearray | None = None
        self.extent = 0
        self.position = 0
        self.drained = 0

    def begin(self, name: str) -> None:
        if self.expected is None:
            if name in p.TEXT_FIELDS:
                if name in self.fields:
                    raise bad(f"field {name!r} is sent twice")
                self.name = name
                self.field = bytearray()
                self.field_limit = self.receiver.field_limit(name)
                return
            self.expected = self.receiver.expected(self.fields, self.upload)
        messages = self.expected.pop(name, None)
        if messages is None:
            raise bad(f"unexpected part {name!r}")
        self.position = 0
        self.whole = messages[0].offset < 0
        if self.whole:
            self._start(messages[0])
            return
        self.ranges.extend(messages)
        last = messages[-1]  # in byte order, none overlapping: it ends the furthest
        if last.offset + last.size <= PART_HOLD_BYTES and max(entry.size for entry in messages) <= self.hold_limit:
            self.part = bytearray()
            self.extent = last.offset + last.size

    def data(self, chunk: bytes) -> None:
        if self.field is not None:
            self.field += chunk
            if len(self.field) > self.field_limit:
                raise bad(f"field {self.name!r} is longer than {self.field_limit} bytes")
        elif self.part is not None:
            room = self.extent - len(self.part)
            if len(chunk) <= room:
                self.part += chunk
            else:  # past the last message: only counted
                self.part += memoryview(chunk)[:room]
                self.drained += len(chunk) - room
        elif self.whole:
            staged = self.staged
            if staged is None:
                self.drained += len(chunk)
            elif staged.size + len(chunk) > self.max_payload:
                self._refuse_oversize(staged, len(chunk))
            else:
                self._write(staged, chunk)
        else:
            self._ranges(memoryview(chunk))

    def _ranges(self, view: memoryview) -> None:
        """Hand the bytes of ``view``, the next of a part holding messages at offsets, to
        the messages they belong to."""
        while view:
            entry = self.entry
            if entry is None:
                if not self.ranges:
                    self.drained += len(view)
                    self.position += len(view)
                    return
                gap = min(self.ranges[0].offset - self.position, len(view))
                if gap:
                    self.drained += gap
                    self.position += gap
                    view = view[gap:]
                else:
                    self._start(self.ranges.popleft())
                continue
            take = min(entry.offset + entry.size - self.position, len(view))
            if self.staged is None:
                self.drained += take
            elif take:
                self._write(self.staged, view[:take])
            self.position += take
            view = view[take:]
            if self.position == entry.offset + entry.size:
                self._finish()

    def _start(self, entry: Entry) -> None:
        """The bytes of ``entry``'s message come next: stage them, unless it is too large."""
        self.entry = entry
        if entry.size > self.max_payload:
            self.upload.acks[entry.id] = (
                p.REJECTED,
                f"payload larger than the limit of {self.max_payload} bytes",
            )
            return
        self.staged = self.staging.hold()
        self.upload.files.append(self.staged)

    def _write(self, staged: StagedFile, chunk: bytes | memoryview) -> None:
        try:
            staged.write(chunk)
        except OSError as exc:
            raise store_failure(exc) from None

    def _refuse_oversize(self, staged: StagedFile, more: int) -> None:
        assert self.entry is not None
        self.upload.acks[self.entry.id] = (
            p.REJECTED,
            f"payload larger than {self.max_payload} bytes",
        )
        self.drained = staged.size + more
        self.staged = None
        staged.discard()

    def _finish(self) -> None:
        """The current message's bytes are all there: its staged file is ready to commit."""
        entry, staged = self.entry, self.staged
        assert entry is not None
        self.entry = self.staged = None
        if staged is None:
            return
        try:
            staged.close()
        except OSError as exc:
            raise store_failure(exc) from None
        self._complete(entry, staged)

    def _split(self, part: bytearray) -> None:
        """The part read whole has ended: a staged file (held) for each of its messages, of
        its bytes there (short or empty for one the part ended before: the commit refuses it)."""
        view = memoryview(part)
        hold = self.staging.hold
        files = self.upload.files
        taken = 0
        for entry in self.ranges:
            staged = hold()
            staged.write(view[entry.offset : entry.offset + entry.size])
            files.append(staged)
            self._complete(entry, staged)
            taken += staged.size
        self.ranges.clear()
        self.drained += len(part) - taken

    def _complete(self, entry: Entry, staged: StagedFile) -> None:
        """``staged`` holds all the bytes of ``entry``'s message there are: one to commit."""
        if staged.held is not None:
            self.held.append(staged)
            self.held_queued.append(None if entry.delay_ms else (entry.id, entry.channel, entry.priority))
        self.upload.payload_bytes += staged.size
        staged_message = Staged(entry.id, entry.channel, entry.priority, entry.size, entry.crc, staged, entry.delay_ms)
        self.upload.staged.append(staged_message)

    def write_held(self) -> None:
        """Create the staged files of the messages whose bytes are all there and still in
        memory, in one call (see :meth:`Staging.hold`)."""
        if self.held:
            try:
                write_held(self.held, self.held_queued)
            except OSError as exc:
                raise store_failure(exc) from None
            finally:
                self.held.clear()
                self.held_queued.clear()

    def end(self) -> None:
        if self.field is not None:
            self.fields[self.name] = bytes(self.field)
            self.field = None
            return
        if self.part is not None:
            part, self.part = self.part, None
            self._split(part)
        if self.entry is not None:
            self._finish()
        # Messages the part ended before: staged short (or empty), refused by the commit.
        while self.ranges:
            self._start(self.ranges.popleft())
            self._finish()
        self.upload.payload_bytes += self.drained
        self.drained = 0

    def finish(self) -> None:
        """After the last part: what was announced but not sent gets "retry"."""
        if self.expected is None:
            self.expected = self.receiver.expected(self.fields, self.upload)
        if p.MANIFEST not in self.fields and self.expected:
            raise bad("field 'payload' is missing")
        for messages in self.expected.values():
            for entry in messages:
                self.upload.acks[entry.id] = (p.RETRY, "part not received")
        self.write_held()


def _boundary(content_type: str) -> str:
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise bad("malformed multipart body: no boundary in its Content-Type")
    if not boundary.isascii():
        raise bad("malformed multipart body: the boundary in its Content-Type is not ASCII")
    return str(boundary)


def _one_line(exc: BaseException) -> str:
    """The reason of one of aiohttp's errors (``message`` where it has one), on one line."""
    return " ".join(str(getattr(exc, "message", exc)).split())


def _text(fields: dict[str, bytes], name: str) -> str:
    return p.decode_text(name, fields[name])
