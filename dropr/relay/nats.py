"""The NATS JetStream transport: ``nats://host:port[,host:port...]`` peers.

For users who want a replicated, clustered store behind their relays: each message is
published to the subject ``PREFIX`` + its channel (``dropr.`` by default; bytes of the
channel outside ``A-Za-z0-9_-`` written as ``%XX``, so a channel is one subject token), with
the headers ``Nats-Msg-Id: CLIENT:ID`` — JetStream's duplicate window then keeps a message
sent again once — and ``Dropr-Client``, ``Dropr-Id``, ``Dropr-Channel``, ``Dropr-Priority``,
``Dropr-Time`` (the put time, seconds since the epoch). A message counts as delivered only
once JetStream acknowledged it.

A batch is published without waiting in between (nats-py's ``publish_async``) and its
acknowledgements are awaited together, so a batch costs about one round trip, not one per
message. Each message has its own outcome: acknowledged (``stored``, or ``duplicate`` when
the stream had it already), or to be retried — no stream takes its subject (no responders),
the stream refused it, no acknowledgement within ``timeout_seconds``, or the connection went
away before its acknowledgement came (nats-py then moves to another server of the list by
itself, and the next batch goes there). A batch of which nothing was acknowledged fails as a
whole, and so does one that cannot be published: the peer backs off, the messages stay
queued. Rejected for good are a message that does not match the size and CRC-32 its name
declares (checked here, as a dropr server checks them) and one larger than the server's
``max_payload``.

nats-py needs each payload as bytes, so unlike the HTTP transport this one reads the spool
files, on the relay's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from .. import protocol
from .._impl import codec
from ..names import nats_servers
from ..protocol import Acks, PeerFailure
from .batches import Entry
from .config import PeerConfig

DEFAULT_SUBJECT_PREFIX = "dropr."
RECONNECT_ATTEMPTS = 2
"""Attempts per server when the connection is lost, before the client gives up (the relay's
backoff takes over and the next batch connects afresh)."""
RECONNECT_WAIT_SECONDS = 0.1
_SUBJECT_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def subject_token(channel: str) -> str:
    """``channel`` as one subject token: bytes outside ``A-Za-z0-9_-`` as ``%XX``."""
    return "".join(chr(b) if b in _SUBJECT_SAFE else f"%{b:02X}" for b in channel.encode("utf-8"))


def header_time(msg_id: str) -> str:
    """The ``Dropr-Time`` of a message: its put time in seconds, to the microsecond."""
    return f"{codec.id_time_ns(msg_id) / 1e9:.6f}"


class NatsTransport:
    """Publishes batches to one JetStream peer, over one connection kept open."""

    def __init__(
        self,
        url: str,
        executor: Executor,
        settings: PeerConfig,
        *,
        client: str,
        locate: Callable[[str], str],
        resolve: Callable[[str], str],
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self._servers = nats_servers(url)
        self._executor = executor
        self._settings = settings
        self._client = client
        self._locate = locate
        self._resolve = resolve
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._prefix = settings.subject_prefix or DEFAULT_SUBJECT_PREFIX
        self._subjects: dict[str, tuple[str, str]] = {}
        self._nc: Any = None
        self._js: Any = None
        self._lost: asyncio.Future[None] | None = None
        self._trouble: BaseException | None = None

    async def _connect(self) -> Any:
        """The JetStream context of a live connection; PeerFailure when there is none."""
        nc = self._nc
        if nc is not None and not nc.is_closed:
            if not nc.is_connected:
                raise PeerFailure("connection lost, reconnecting")
            return self._js
        nc = NatsClient()
        options: dict[str, Any] = {
            "servers": self._servers,
            "name": f"dropr-relay {self._client}",
            "connect_timeout": self._connect_timeout,
            "max_reconnect_attempts": RECONNECT_ATTEMPTS,
            "reconnect_time_wait": RECONNECT_WAIT_SECONDS,
            "error_cb": self._noted,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
        }
        settings = self._settings
        if settings.user:
            options["user"] = settings.user
            options["password"] = settings.password or ""
        elif settings.token:
            options["token"] = settings.token
        self._trouble = None
        try:
            await nc.connect(**options)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            cause = self._trouble if isinstance(exc, nats.errors.NoServersError) and self._trouble else exc
            raise PeerFailure(f"cannot connect: {_reason(cause)}") from None
        self._nc = nc
        self._js = nc.jetstream(timeout=self._timeout)
        self._lost = asyncio.get_running_loop().create_future()
        return self._js

    async def _noted(self, exc: Exception) -> None:
        """nats-py reports connection trouble here while it tries the servers: the last one
        says why a connection failed (its own error then says only "no servers available")."""
        self._trouble = exc

    async def _disconnected(self) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _reconnected(self) -> None:
        self._lost = asyncio.get_running_loop().create_future()

    def _subject(self, channel_field: str) -> tuple[str, str]:
        """The subject and the channel's text of a channel field, cached."""
        known = self._subjects.get(channel_field)
        if known is None:
            if len(self._subjects) >= 4096:
                self._subjects.clear()
            channel = self._resolve(channel_field)
            known = self._subjects[channel_field] = (self._prefix + subject_token(channel), channel)
        return known

    async def send(self, batch: list[Entry]) -> Acks:
        """Publish ``batch``; the acknowledgements, or PeerFailure for the whole request."""
        js = await self._connect()
        lost = self._lost
        assert lost is not None
        payloads = await asyncio.get_running_loop().run_in_executor(self._executor, self._read, batch)
        acks: Acks = {}
        published: list[tuple[str, str, asyncio.Future[Any]]] = []
        client = self._client
        try:
            for entry, payload in zip(batch, payloads, strict=True):
                if lost.done():
                    break
                if isinstance(payload, tuple):
                    acks[entry.id] = payload
                    continue
                subject, channel = self._subject(entry.channel)
                headers = {
                    "Nats-Msg-Id": f"{client}:{entry.id}",
                    "Dropr-Client": client,
                    "Dropr-Id": entry.id,
                    "Dropr-Channel": channel,
                    "Dropr-Priority": str(entry.priority),
                    "Dropr-Time": header_time(entry.id),
                }
                try:
                    future = await js.publish_async(subject, payload, headers=headers)
                except nats.errors.MaxPayloadError:
                    acks[entry.id] = (
                        protocol.REJECTED,
                        f"larger than the NATS server's max_payload ({entry.size} bytes)",
                    )
                    continue
                published.append((entry.id, subject, future))
            if published:
                everything = asyncio.gather(*(future for _, _, future in published), return_exceptions=True)
                await asyncio.wait((everything, lost), timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, nats.errors.Error) as exc:
            raise PeerFailure(_reason(exc)) from None
        finally:
            for _, _, future in published:
                future.cancel()
        late = "connection lost" if lost.done() else f"no acknowledgement within {self._timeout:g} s"
        for msg_id, subject, future in published:
            acks[msg_id] = _outcome(future, late, subject)
        for entry in batch:
            acks.setdefault(entry.id, (protocol.RETRY, late))
        if not any(status != protocol.RETRY for status, _ in acks.values()):
            raise PeerFailure(acks[batch[0].id][1])
        return acks

    def _read(self, batch: list[Entry]) -> list[bytes | tuple[str, str]]:
        """Each message's payload, or its answer when it cannot be sent: rejected when it does
        not match the size and CRC-32 its name declares (JetStream checks nothing, so the
        check a dropr server makes is made here), to be retried when it cannot be read."""
        payloads: list[bytes | tuple[str, str]] = []
        for entry in batch:
            try:
                payload = _read_file(self._locate(entry.name), entry.size)
            except OSError as exc:
                payloads.append((protocol.RETRY, f"cannot read {entry.name}: {exc.strerror or exc}"))
                continue
            problem = protocol.mismatch(entry.size, entry.crc, len(payload), zlib.crc32(payload))
            payloads.append((protocol.REJECTED, problem) if problem else payload)
        return payloads

    async def aclose(self) -> None:
        """Close the connection (what was acknowledged is delivered already)."""
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def _read_file(path: str, size: int) -> bytes:
    """The file at ``path``, read to ``size`` + 1 bytes at most (one more tells a longer one)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
        while len(data) <= size and (more := os.read(fd, size + 1 - len(data))):
            data += more
        return data
    finally:
        os.close(fd)


def _outcome(future: asyncio.Future[Any], late: str, subject: str) -> tuple[str, str]:
    """The answer for a message published to ``subject``: its acknowledgement, or why it is to
    be retried (``late`` when no answer came)."""
    if future.cancelled():
        return protocol.RETRY, late
    exc = future.exception()
    if exc is None:
        return (protocol.DUPLICATE, "already in the stream") if future.result().duplicate else (protocol.STORED, "")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return protocol.RETRY, f"no JetStream stream takes the subject {subject}"
    return protocol.RETRY, _reason(exc)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
