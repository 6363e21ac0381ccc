"""Reading one POST's multipart body into staged files, checked against what it declared.

The body is streamed part by part with aiohttp's multipart reader: the text fields come
first (``client`` and ``manifest``, or the manifest-less ``id``/``channel``/``priority``),
then one file part per message, each written to its own staged file while its size and
CRC-32 are computed. Nothing reaches the store here: a whole-request problem raises
:class:`~.protocol.RequestError` and the caller removes every staged file.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from .._impl import codec
from ..limits import Limits
from . import protocol as p
from .protocol import Entry, RequestError, bad
from .staging import StagedFile

CHUNK = 64 * 1024
_SMALL_FIELD = 64  # id and priority of the manifest-less form
_FULL = (errno.ENOSPC, errno.EDQUOT)


def store_failure(exc: OSError) -> RequestError:
    """The answer to a failed file operation: 507 for a full disk, 500 otherwise."""
    if exc.errno in _FULL:
        return RequestError(507, f"store is full: {exc.strerror or exc}")
    return RequestError(500, f"store error: {exc.strerror or exc}")


@dataclass
class Upload:
    """What one request brought: its client, its entries and their verified staged files."""

    client: str = ""
    entries: list[Entry] = field(default_factory=list)
    verified: dict[str, tuple[Entry, StagedFile]] = field(default_factory=dict)  # by id
    acks: p.Acks = field(default_factory=dict)  # verdicts known before the store is asked
    payload_bytes: int = 0
    files: list[StagedFile] = field(default_factory=list)  # every file staged, for cleanup

    def discard(self) -> None:
        """Remove every staged file the store did not take (idempotent)."""
        while self.files:
            self.files.pop().discard()


class Receiver:
    """Reads requests for one store's staging directory under the given limits."""

    def __init__(self, staging_dir: str, limits: Limits, max_request_bytes: int) -> None:
        self.staging_dir = staging_dir
        self.limits = limits
        self.max_request_bytes = max_request_bytes

    async def read(self, request: web.Request, upload: Upload) -> None:
        """Fill ``upload`` from the request's body; the caller discards it on any error."""
        try:
            reader = await request.multipart()
            await self._read(reader, upload)
        except (ValueError, BadHttpMessage) as exc:
            raise bad(f"malformed multipart body: {exc}") from None

    async def _read(self, reader: MultipartReader, upload: Upload) -> None:
        budget = _Budget(self.max_request_bytes)
        fields: dict[str, bytes] = {}
        part = await _next_part(reader)
        while part is not None and part.name in p.TEXT_FIELDS:
            name = part.name
            if name in fields:
                raise bad(f"field {name!r} is sent twice")
            fields[name] = await _read_field(part, self._field_limit(name), budget)
            part = await _next_part(reader)
        upload.client = self._client(fields)
        expected = self._entries(fields)
        upload.entries = list(expected.values())
        while part is not None:
            entry = expected.pop(part.name or "", None)
            if entry is None:
                raise bad(f"unexpected part {part.name!r}")
            await self._receive(part, entry, upload, budget)
            part = await _next_part(reader)
        if p.MANIFEST not in fields and expected:
            raise bad("field 'payload' is missing")
        for entry in expected.values():
            upload.acks[entry.id] = (p.RETRY, "part not received")

    def _field_limit(self, name: str) -> int:
        if name == p.MANIFEST:
            return p.manifest_limit(self.limits)
        if name == p.CLIENT:
            return self.limits.max_client
        if name == p.CHANNEL:
            return self.limits.max_channel
        return _SMALL_FIELD

    def _client(self, fields: dict[str, bytes]) -> str:
        if p.CLIENT not in fields:
            raise bad("field 'client' is missing")
        client = p.decode_text("client", fields[p.CLIENT])
        return p.check_text("client", client, self.limits.max_client)

    def _entries(self, fields: dict[str, bytes]) -> dict[str, Entry]:
        """The expected file parts by part name, from the manifest or the simple form."""
        if p.MANIFEST in fields:
            extra = sorted(fields.keys() & {p.ID, p.CHANNEL, p.PRIORITY})
            if extra:
                raise bad(f"field(s) {', '.join(extra)} not allowed with a manifest")
            entries = p.parse_manifest(fields[p.MANIFEST], self.limits, self.max_request_bytes)
            return {e.part: e for e in entries}
        msg_id = p.parse_id(_text(fields, p.ID)) if p.ID in fields else codec.new_id()
        channel = _text(fields, p.CHANNEL) if p.CHANNEL in fields else p.DEFAULT_CHANNEL
        p.check_text("channel", channel, self.limits.max_channel)
        priority = (
            p.parse_priority(_text(fields, p.PRIORITY))
            if p.PRIORITY in fields
            else p.DEFAULT_PRIORITY
        )
        return {p.PAYLOAD: Entry(msg_id, channel, priority, p.PAYLOAD, -1, -1)}

    async def _receive(
        self, part: BodyPartReader, entry: Entry, upload: Upload, budget: _Budget
    ) -> None:
        """Stream one file part to a staged file, then keep it or record why not."""
        limit = self.limits.max_payload
        if entry.size > limit:
            upload.acks[entry.id] = (p.REJECTED, f"payload larger than the limit of {limit} bytes")
            upload.payload_bytes += await _drain(part, budget)
            return
        try:
            staged = StagedFile(self.staging_dir)
        except OSError as exc:
            raise store_failure(exc) from None
        upload.files.append(staged)
        while chunk := await part.read_chunk(CHUNK):
            budget.spend(len(chunk))
            if staged.size + len(chunk) > limit:
                upload.payload_bytes += staged.size + await _drain(part, budget) + len(chunk)
                upload.acks[entry.id] = (p.REJECTED, f"payload larger than {limit} bytes")
                staged.discard()
                return
            try:
                staged.write(chunk)
            except OSError as exc:
                raise store_failure(exc) from None
        try:
            staged.close()
        except OSError as exc:
            raise store_failure(exc) from None
        upload.payload_bytes += staged.size
        problem = _mismatch(entry, staged)
        if problem:
            upload.acks[entry.id] = (p.REJECTED, problem)
            staged.discard()
        else:
            upload.verified[entry.id] = (entry, staged)


def _mismatch(entry: Entry, staged: StagedFile) -> str:
    if entry.size < 0:  # manifest-less form: nothing declared
        return ""
    if staged.size != entry.size:
        return f"size mismatch: declared {entry.size} bytes, received {staged.size}"
    if staged.crc != entry.crc:
        return f"checksum mismatch: declared crc32 {entry.crc:08x}, received {staged.crc:08x}"
    return ""


class _Budget:
    """Bytes a request may still send (413 once spent)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise RequestError(413, f"request larger than the limit of {self.limit} bytes")


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    part: Any = await reader.next()
    if part is not None and not isinstance(part, BodyPartReader):
        raise bad("nested multipart parts are not accepted")
    return part


async def _read_field(part: BodyPartReader, limit: int, budget: _Budget) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        budget.spend(len(chunk))
        data += chunk
        if len(data) > limit:
            raise bad(f"field {part.name!r} is longer than {limit} bytes")
    return bytes(data)


async def _drain(part: BodyPartReader, budget: _Budget) -> int:
    drained = 0
    while chunk := await part.read_chunk(CHUNK):
        budget.spend(len(chunk))
        drained += len(chunk)
    return drained


def _text(fields: dict[str, bytes], name: str) -> str:
    return p.decode_text(name, fields[name])
