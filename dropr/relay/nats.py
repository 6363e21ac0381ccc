"""The NATS JetStream transport: ``nats://host:port[,host:port...]`` peers.

For users who want a replicated, clustered store behind their relays: each message is
published to the subject ``PREFIX`` + its channel (``dropr.`` by default; bytes of the
channel outside ``A-Za-z0-9_-`` written as ``%XX``, so a channel is one subject token), with
the headers ``Nats-Msg-Id: CLIENT:ID`` — JetStream's duplicate window then keeps a message
sent again once — and ``Dropr-Client``, ``Dropr-Id``, ``Dropr-Channel``, ``Dropr-Priority``,
``Dropr-Time`` (the put time, seconds since the epoch). A message counts as delivered only
once JetStream acknowledged it.

A batch is published without waiting in between, each message with a reply subject of its
own under one inbox the transport subscribes to, where JetStream acknowledges it; the
acknowledgements are awaited together, so a batch costs about one round trip, not one per
message. (nats-py's ``publish_async`` does the same with a future per message: 37 µs of the
client's CPU per message here, where this costs 17 µs.) Each message has its own outcome:
acknowledged (``stored``, or ``duplicate`` when the stream had it already), or to be retried
— no stream takes its subject (no responders), the stream refused it, no acknowledgement
within ``timeout_seconds``, or the connection went away before its acknowledgement came
(nats-py then moves to another server of the list by itself, and the next batch goes there).
A batch of which nothing was acknowledged fails as a whole, and so does one that cannot be
published: the peer backs off, the messages stay queued. Rejected for good are a message
that does not match the size and CRC-32 its name declares (checked here, as a dropr server
checks them) and one larger than the server's ``max_payload``.

nats-py needs each payload as bytes, so unlike the HTTP transport this one reads the spool
files, on the relay's worker thread, never on the event loop. A batch file (``put_many``)
is read once and each of its messages published on its own, as the request's manifest
announces them (:func:`~dropr.relay.batches.announce`, as for a server): JetStream holds
messages, not files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import ssl
import zlib
from concurrent.futures import Executor
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import Header

from .. import protocol
from .._impl import codec
from ..names import nats_servers
from ..protocol import Acks, PeerFailure
from .batches import Entry, SpoolFiles
from .config import PeerConfig

DEFAULT_SUBJECT_PREFIX = "dropr."
RECONNECT_ATTEMPTS = 2
"""Attempts per server when the connection is lost, before the client gives up (the relay's
backoff takes over and the next batch connects afresh)."""
RECONNECT_WAIT_SECONDS = 0.1
_NO_RESPONDERS = "503"
"""The status of the answer when nothing (no stream) takes a subject."""
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
        spool: SpoolFiles,
        *,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self._servers = nats_servers(url)
        self._executor = executor
        self._settings = settings
        self._spool = spool
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._prefix = settings.subject_prefix or DEFAULT_SUBJECT_PREFIX
        self._subjects: dict[str, str] = {}
        self._nc: Any = None
        self._inbox = ""
        self._batches: dict[str, _Batch] = {}
        self._sent = itertools.count()
        self._lost: asyncio.Future[None] | None = None
        self._trouble: BaseException | None = None

    async def _connect(self) -> Any:
        """A live connection, its acknowledgements subscribed to; PeerFailure when there is none."""
        nc = self._nc
        if nc is not None and not nc.is_closed:
            if not nc.is_connected:
                raise PeerFailure("connection lost, reconnecting")
            return nc
        nc = NatsClient()
        options: dict[str, Any] = {
            "servers": self._servers,
            "name": f"dropr-relay {self._spool.client}",
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
        if settings.ca_file:  # TLS, the server's certificate checked against this CA
            options["tls"] = ssl.create_default_context(cafile=settings.ca_file)
        self._trouble = None
        try:
            # Bounded here too: after a failed TLS handshake nats-py's connect never returns.
            await asyncio.wait_for(nc.connect(**options), self._connect_timeout * (len(self._servers) + 1))
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(nc.close(), self._connect_timeout)
            gave_up = isinstance(exc, (nats.errors.NoServersError, asyncio.TimeoutError))
            cause = self._trouble if gave_up and self._trouble else exc
            raise PeerFailure(f"cannot connect: {_reason(cause)}") from None
        self._inbox = nc.new_inbox()
        try:
            await nc.subscribe(self._inbox + ".>", cb=self._answered)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            raise PeerFailure(f"cannot subscribe to the acknowledgements: {_reason(exc)}") from None
        self._nc = nc
        self._lost = asyncio.get_running_loop().create_future()
        return nc

    async def _noted(self, exc: Exception) -> None:
        """nats-py reports connection trouble here while it tries the servers: the last one
        says why a connection failed (its own error then says only "no servers available").
        An answer of a server (an authorization violation, say) is kept over a connection lost
        after it, as nats-py tries that server again: the answer says why."""
        if _is_lost_connection(exc) and self._trouble is not None and not _is_lost_connection(self._trouble):
            return
        self._trouble = exc

    async def _disconnected(self) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _reconnected(self) -> None:
        self._lost = asyncio.get_running_loop().create_future()

    def _subject(self, channel: str) -> str:
        """The subject of a channel, cached."""
        subject = self._subjects.get(channel)
        if subject is None:
            if len(self._subjects) >= 4096:
                self._subjects.clear()
            subject = self._subjects[channel] = self._prefix + subject_token(channel)
        return subject

    async def _answered(self, msg: Any) -> None:
        """JetStream's answer to one message of a batch, on its reply subject INBOX.BATCH.INDEX."""
        token, _, index = msg.subject[len(self._inbox) + 1 :].partition(".")
        batch = self._batches.get(token)
        if batch is not None and index.isdigit() and int(index) < len(batch.answers):
            batch.answer(int(index), _outcome(msg, batch.subjects[int(index)]))

    async def send(self, batch: list[Entry]) -> Acks:
        """Publish ``batch``; the acknowledgements, or PeerFailure for the whole request."""
        request = self._spool.announce(batch)
        if not request.files:
            return request.refused
        nc = await self._connect()
        lost = self._lost
        assert lost is not None
        messages = request.messages()
        paths = self._spool.paths(request)
        payloads = await asyncio.get_running_loop().run_in_executor(self._executor, self._read, messages, paths)
        token = str(next(self._sent))
        reply = f"{self._inbox}.{token}."
        pending = self._batches[token] = _Batch(len(messages))
        client = self._spool.client
        try:
            for index, (entry, payload) in enumerate(zip(messages, payloads, strict=True)):
                if lost.done():
                    break
                if isinstance(payload, tuple):
                    pending.answer(index, payload)
                    continue
                subject = pending.subjects[index] = self._subject(entry.channel)
                headers = {
                    "Nats-Msg-Id": f"{client}:{entry.id}",
                    "Dropr-Client": client,
                    "Dropr-Id": entry.id,
                    "Dropr-Channel": entry.channel,
                    "Dropr-Priority": str(entry.priority),
                    "Dropr-Time": header_time(entry.id),
                }
                if entry.delay_ms:
                    headers["Dropr-Delay"] = str(entry.delay_ms)
                try:
                    await nc.publish(subject, payload, reply=f"{reply}{index}", headers=headers)
                except nats.errors.MaxPayloadError:
                    pending.answer(
                        index, (protocol.REJECTED, f"larger than the server's max_payload ({entry.size} bytes)")
                    )
            if pending.left:
                await asyncio.wait((pending.done, lost), timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, nats.errors.Error) as exc:
            raise PeerFailure(_reason(exc)) from None
        finally:
            del self._batches[token]
        late = (protocol.RETRY, "connection lost" if lost.done() else f"no acknowledgement within {self._timeout:g} s")
        acks = {entry.id: answer or late for entry, answer in zip(messages, pending.answers, strict=True)}
        if not any(status != protocol.RETRY for status, _ in acks.values()):
            raise PeerFailure(next(iter(acks.values()))[1])
        return {**acks, **request.refused}

    def _read(self, messages: list[protocol.Entry], paths: dict[str, str]) -> list[bytes | tuple[str, str]]:
        """Each message's payload, or its answer when it cannot be sent: rejected when it does
        not match the size and CRC-32 announced (JetStream checks nothing, so the check a
        dropr server makes is made here), to be retried when its file cannot be read. A file
        is read once, its messages taken from their offsets."""
        payloads: list[bytes | tuple[str, str]] = []
        read: dict[str, bytes | tuple[str, str]] = {}
        for entry in messages:
            data = read.get(entry.part)
            if data is None:
                path = paths[entry.part]
                try:
                    data = _read_file(path, entry.size if entry.offset < 0 else None)
                except OSError as exc:
                    data = (protocol.RETRY, f"cannot read {os.path.basename(path)}: {exc.strerror or exc}")
                read[entry.part] = data
            if isinstance(data, tuple):
                payloads.append(data)
                continue
            payload = data if entry.offset < 0 else data[entry.offset : entry.offset + entry.size]
            problem = protocol.mismatch(entry.size, entry.crc, len(payload), zlib.crc32(payload))
            payloads.append((protocol.REJECTED, problem) if problem else payload)
        return payloads

    async def aclose(self) -> None:
        """Close the connection (what was acknowledged is delivered already)."""
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def _read_file(path: str, size: int | None) -> bytes:
    """The file at ``path``, read to ``size`` + 1 bytes at most (one more tells a longer one),
    or whole when ``size`` is None."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        limit = os.fstat(fd).st_size if size is None else size + 1
        data = os.read(fd, limit)
        while len(data) < limit and (more := os.read(fd, limit - len(data))):
            data += more
        return data
    finally:
        os.close(fd)


class _Batch:
    """The answers to a batch in flight, by index; ``done`` once each has one."""

    __slots__ = ("answers", "done", "left", "subjects")

    def __init__(self, size: int) -> None:
        self.answers: list[tuple[str, str] | None] = [None] * size
        self.subjects = [""] * size
        self.left = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(self, index: int, answer: tuple[str, str]) -> None:
        if self.answers[index] is None:
            self.answers[index] = answer
            self.left -= 1
            if not self.left:
                self.done.set_result(None)


def _outcome(msg: Any, subject: str) -> tuple[str, str]:
    """The status of a message published to ``subject`` from JetStream's answer ``msg``."""
    if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
        return protocol.RETRY, f"no JetStream stream takes the subject {subject}"
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return protocol.RETRY, f"not an acknowledgement: {msg.data[:80]!r}"
    if not isinstance(answer, dict) or "error" in answer or "seq" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else None
        why = error.get("description") if isinstance(error, dict) else None
        return protocol.RETRY, f"JetStream refused it: {why or answer!r}"
    return (protocol.DUPLICATE, "already in the stream") if answer.get("duplicate") else (protocol.STORED, "")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _is_lost_connection(exc: BaseException) -> bool:
    """Whether an error says only that a connection failed or went away, nothing of why."""
    return isinstance(
        exc,
        (OSError, asyncio.TimeoutError, nats.errors.StaleConnectionError, nats.errors.ConnectionClosedError),
    )
