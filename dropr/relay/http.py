"""The HTTP(S) transport: one multipart POST per batch, driven by libcurl's multi interface.

Every peer's requests share one :class:`pycurl.AsyncCurlMulti`, so several peers are in
flight at once on the relay's event loop and connections are kept alive between batches
(the multi handle owns the connection cache). Each peer keeps a small pool of easy handles
set up once (URL, token, timeouts, TLS). libcurl streams a batch file whole as one part,
and a large message straight from its spool file (``FORM_FILE``). The small messages of a
request travel joined, one after another in one part: libcurl writes each part to the
socket apart and the server parses each, which cost a small message more than its bytes
(their files are read in one call, without the GIL).
"""

from __future__ import annotations

import io

import pycurl

from .. import protocol
from .._impl import manifest
from ..protocol import Acks, PeerFailure
from .batches import JOINED_PART, Announcement, Entry, SpoolFiles
from .config import PeerConfig

USER_AGENT = "dropr-relay"
JOIN_BELOW = 1 << 16
"""A message of fewer bytes travels in its request's joined part."""
_MAX_ANSWER_LINE = 200


def open_multi() -> pycurl.AsyncCurlMulti:
    """The multi handle every HTTP peer of a relay shares (and its connection cache)."""
    return pycurl.AsyncCurlMulti()


class HttpTransport:
    """Sends batches to one ``http://`` or ``https://`` peer."""

    def __init__(
        self,
        url: str,
        multi: pycurl.AsyncCurlMulti,
        settings: PeerConfig,
        spool: SpoolFiles,
        *,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self._multi = multi
        self._settings = settings
        self._spool = spool
        self._timeout_ms = max(1, int(timeout * 1000))
        self._connect_timeout_ms = max(1, int(connect_timeout * 1000))
        self._idle: list[pycurl.Curl] = []

    def _handle(self) -> pycurl.Curl:
        if self._idle:
            return self._idle.pop()
        curl = pycurl.Curl()
        curl.setopt(pycurl.URL, self.url)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.USERAGENT, USER_AGENT)
        curl.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_timeout_ms)
        # No "Expect: 100-continue" round trip before large batches.
        headers = ["Expect:"]
        if self._settings.token:
            headers.append(f"Authorization: Bearer {self._settings.token}")
        curl.setopt(pycurl.HTTPHEADER, headers)
        if self._settings.ca_file:
            curl.setopt(pycurl.CAINFO, self._settings.ca_file)
        return curl

    def _request(self, batch: list[Entry]) -> tuple[Announcement, bytes]:
        """The request for ``batch`` and the bytes of its joined part. A file whose length is
        not the one its name says is not joined: its request streams each file as it is, and
        the server refuses what does not match."""
        request = self._spool.announce(batch, JOIN_BELOW)
        if not request.joined:
            return request, b""
        joined = request.files[: request.joined]
        try:
            return request, manifest.join([self._spool.locate(e.name) for e in joined], [e.size for e in joined])
        except (OSError, ValueError):
            return self._spool.announce(batch), b""

    def _form(self, request: Announcement, joined: bytes) -> list[tuple[str, object]]:
        form: list[tuple[str, object]] = [
            (protocol.CLIENT, self._spool.client),
            (
                protocol.MANIFEST,
                (
                    pycurl.FORM_BUFFER, protocol.MANIFEST,
                    pycurl.FORM_BUFFERPTR, request.manifest,
                    pycurl.FORM_CONTENTTYPE, protocol.MANIFEST_TYPE,
                ),
            ),
        ]  # fmt: skip
        if request.joined:
            form.append(
                (
                    JOINED_PART,
                    (
                        pycurl.FORM_BUFFER, JOINED_PART,
                        pycurl.FORM_BUFFERPTR, joined,
                        pycurl.FORM_CONTENTTYPE, protocol.PART_TYPE,
                    ),
                )
            )  # fmt: skip
        locate = self._spool.locate
        for entry in request.files[request.joined :]:
            form.append(
                (
                    entry.id,
                    (
                        pycurl.FORM_FILE, locate(entry.name),
                        pycurl.FORM_FILENAME, entry.id,
                        pycurl.FORM_CONTENTTYPE, protocol.PART_TYPE,
                    ),
                )
            )  # fmt: skip
        return form

    async def send(self, batch: list[Entry]) -> Acks:
        """POST ``batch``; the peer's answer, or PeerFailure for the whole request."""
        request, joined = self._request(batch)
        if not request.files:
            return request.refused
        curl = self._handle()
        body = io.BytesIO()
        try:
            curl.setopt(pycurl.HTTPPOST, self._form(request, joined))
            curl.setopt(pycurl.WRITEDATA, body)
            try:
                await self._multi.perform(curl)
            except pycurl.error as exc:
                code, message = exc.args if len(exc.args) == 2 else (0, str(exc))
                raise PeerFailure(f"{message or 'transfer failed'} (curl error {code})") from None
            status = curl.getinfo(pycurl.RESPONSE_CODE)
        finally:
            self._idle.append(curl)
        data = body.getvalue()
        if status != 200:
            raise PeerFailure(f"HTTP {status}: {_first_line(data)}")
        return {**protocol.decode_acks(data), **request.refused}

    async def aclose(self) -> None:
        for curl in self._idle:
            curl.close()
        self._idle.clear()


def _first_line(data: bytes) -> str:
    line = data.decode("utf-8", "replace").strip().split("\n", 1)[0]
    return line[:_MAX_ANSWER_LINE] or "(no reason given)"
