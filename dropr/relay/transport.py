"""The interface of the relay's transports, and the one place that picks a peer's transport.

A transport's ``send(batch)`` delivers one batch to its peer and returns the peer's answer
(:data:`dropr.protocol.Acks`): per message id ``(status, reason)``, a message missing from
the answer counting as ``retry``. A failure of the whole request (refused, timed out, not
200, unreadable answer) raises :class:`~dropr.protocol.PeerFailure`: the peer backs off and
every message of the batch stays queued. ``aclose()`` lets go of its connections.

:class:`Transports` opens them by the peer's scheme — ``http``/``https``: ``http``, ``file``:
``local``, ``nats``: ``nats``, ``group:``: ``group`` over its members' transports — and owns
what they share. Each module is imported on first use, so a relay that has no NATS peer
never needs nats-py; a peer whose transport cannot be had while the relay runs (its client
library missing, a group the configuration does not define) is :class:`Unavailable`.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .. import names
from ..protocol import Acks
from .backoff import Backoff
from .batches import Entry, SpoolFiles
from .config import PeerConfig, RelayConfig


class Transport(Protocol):
    url: str

    async def send(self, batch: list[Entry]) -> Acks: ...

    async def aclose(self) -> None: ...


class Unavailable(Exception):
    """A peer the relay cannot send to while it runs; the message says why, in one line."""


class Transports:
    """Opens the transports of a relay's peers, all sending from the spool ``spool``."""

    def __init__(self, config: RelayConfig, spool: SpoolFiles) -> None:
        self._config = config
        self._spool = spool
        self._multi: Any = None
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay")
        """The thread for transports' blocking file work (the local ingest, NATS payload reads)."""

    def backoff(self) -> Backoff:
        """A fresh backoff as the configuration sets it."""
        return Backoff(self._config.backoff_min_seconds, self._config.backoff_max_seconds)

    def open(self, url: str) -> Transport:
        """The transport for peer ``url`` (checked by :func:`dropr.names.check_peer`)."""
        config = self._config
        spool = self._spool
        timeout, connect_timeout = config.timeout_seconds, config.connect_timeout_seconds
        if url.startswith(names.GROUP_PREFIX):
            from .group import GroupTransport, Member

            name = url[len(names.GROUP_PREFIX) :]
            group = config.groups.get(name)
            if group is None:
                raise Unavailable(f"peer group {name!r} is not defined in the relay's configuration")
            opened = [(member, self._member(member)) for member in group.peers]
            if all(isinstance(transport, str) for _, transport in opened):
                raise Unavailable(f"no member of peer group {name!r} can be used: {opened[0][1]}")
            return GroupTransport(url, group.mode, [Member(m, t, self.backoff()) for m, t in opened])
        if url.startswith(names.NATS_PREFIX):
            try:
                from .nats import NatsTransport
            except ImportError:
                raise Unavailable("nats:// peers need nats-py: pip install 'dropr[nats]'") from None
            # TLS where the peer's own entry names a CA file (the general one is for https peers).
            settings = dataclasses.replace(config.peer(url), ca_file=config.peers.get(url, PeerConfig()).ca_file)
            return NatsTransport(url, self.worker, settings, spool, timeout=timeout, connect_timeout=connect_timeout)
        if url.startswith("file:"):
            from .local import LocalTransport

            return LocalTransport(url, self.worker, spool)
        try:
            from .http import HttpTransport, open_multi
        except ImportError:
            raise Unavailable("http(s) peers need pycurl: pip install 'dropr[relay]'") from None
        if self._multi is None:
            self._multi = open_multi()
        return HttpTransport(
            url, self._multi, config.peer(url), spool, timeout=timeout, connect_timeout=connect_timeout
        )

    def _member(self, url: str) -> Transport | str:
        """A group member's transport, or why it cannot be had."""
        try:
            return self.open(url)
        except Unavailable as exc:
            return str(exc)

    async def aclose(self) -> None:
        """Let go of what the transports shared; waits for the file work under way."""
        if self._multi is not None:
            await self._multi.aclose()
        self.worker.shutdown(wait=True)
