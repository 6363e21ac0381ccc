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
message. Whatever fails — no server reachable, no stream taking the subject (no
responders), no acknowledgement in time, a node gone mid-batch (the client moves on to
another server of the list by itself) — fails the whole request: the peer backs off and
every message stays queued. Only a message JetStream can never take (larger than the
server's ``max_payload``) is rejected for good.

nats-py needs each payload as bytes, so unlike the HTTP transport this one reads the spool
files, on the relay's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import nats
import nats.errors
import nats.js.errors

from .. import protocol
from .._impl import codec
from ..protocol import Acks, PeerFailure
from .batches import Entry
from .config import PeerConfig

DEFAULT_SUBJECT_PREFIX = "dropr."
_SUBJECT_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def subject_token(channel: str) -> str:
    """``channel`` as one subject token: bytes outside ``A-Za-z0-9_-`` as ``%XX``."""
    return "".join(chr(b) if b in _SUBJECT_SAFE else f"%{b:02X}" for b in channel.encode("utf-8"))


def servers(url: str) -> list[str]:
    """The server URLs of a ``nats://host:port[,host:port...]`` peer."""
    rest = url[len("nats://") :]
    return [f"nats://{part}" for part in rest.split(",")]


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
        self._executor = executor
        self._settings = settings
        self._client = client
        self._locate = locate
        self._resolve = resolve
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._prefix = settings.subject_prefix or DEFAULT_SUBJECT_PREFIX
        self._nc: Any = None
        self._js: Any = None

    async def _connect(self) -> Any:
        if self._nc is not None and not self._nc.is_closed:
            return self._js
        options: dict[str, Any] = {
            "servers": servers(self.url),
            "name": f"dropr-relay {self._client}",
            "connect_timeout": self._connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "error_cb": _ignore,
            "disconnected_cb": _quiet,
            "reconnected_cb": _quiet,
        }
        if self._settings.token:
            options["token"] = self._settings.token
        if self._settings.user:
            options["user"] = self._settings.user
            options["password"] = self._settings.password or ""
        try:
            self._nc = await nats.connect(**options)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            raise PeerFailure(f"cannot connect to {self.url}: {_reason(exc)}") from None
        self._js = self._nc.jetstream(timeout=self._timeout)
        return self._js

    async def send(self, batch: list[Entry]) -> Acks:
        """Publish ``batch``; the acknowledgements, or PeerFailure for the whole request."""
        js = await self._connect()
        loop = asyncio.get_running_loop()
        payloads = await loop.run_in_executor(self._executor, self._read, batch)
        acks: Acks = {}
        pending: list[tuple[str, asyncio.Future[Any]]] = []
        try:
            for entry, payload in zip(batch, payloads, strict=True):
                channel = self._resolve(entry.channel)
                headers = {
                    "Nats-Msg-Id": f"{self._client}:{entry.id}",
                    "Dropr-Client": self._client,
                    "Dropr-Id": entry.id,
                    "Dropr-Channel": channel,
                    "Dropr-Priority": str(entry.priority),
                    "Dropr-Time": header_time(entry.id),
                }
                try:
                    future = await js.publish_async(self._prefix + subject_token(channel), payload, headers=headers)
                except nats.errors.MaxPayloadError:
                    acks[entry.id] = (
                        protocol.REJECTED,
                        f"larger than the NATS server's max_payload ({entry.size} bytes)",
                    )
                    continue
                pending.append((entry.id, future))
            done = await asyncio.wait_for(asyncio.gather(*(f for _, f in pending)), self._timeout)
        except asyncio.TimeoutError:
            raise PeerFailure(f"no acknowledgement from {self.url} within {self._timeout:g} s") from None
        except nats.js.errors.NoStreamResponseError:
            raise PeerFailure(f"no JetStream stream takes the subjects {self._prefix}> at {self.url}") from None
        except (OSError, nats.errors.Error) as exc:
            raise PeerFailure(f"{self.url}: {_reason(exc)}") from None
        finally:
            for _, future in pending:
                future.cancel()
        for (msg_id, _), ack in zip(pending, done, strict=True):
            acks[msg_id] = (protocol.DUPLICATE, "already in the stream") if ack.duplicate else (protocol.STORED, "")
        return acks

    def _read(self, batch: list[Entry]) -> list[bytes]:
        payloads = []
        for entry in batch:
            with open(self._locate(entry.name), "rb") as file:
                payloads.append(file.read())
        return payloads

    async def aclose(self) -> None:
        """Close the connection (what was acknowledged is delivered already)."""
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    def close(self) -> None:
        """Close the connection without waiting (on a running loop)."""
        if self._nc is not None:
            asyncio.ensure_future(self.aclose())


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _ignore(exc: Exception) -> None:
    """nats-py reports connection trouble here while it reconnects; the relay sees it as
    requests that fail, and backs off."""


async def _quiet() -> None:
    pass
