"""Delivery: the relay's peers, the requests it sends them and what their answers do.

A peer is known by the field its messages carry; it has a transport (by its scheme, from
:class:`~dropr.relay.transport.Transports`), a backoff, and the batches cut from the names a
scan found for it (``batches``), which wait until one of its ``parallel`` request slots is
free. A scanned name stays held from its batch until its request is answered and what was
acknowledged has left the queue, so that a scan meanwhile does not take it again. An answer
counts per message: the acknowledged leave the queue, the rejected go to ``failed/`` (both
``disposal``'s work), the rest stay queued and the peer backs off; a request failing as a
whole backs the peer off with all its messages queued, and the batches waiting for it are
let go, to be read again from the queue once it is tried again. A peer the relay cannot send
to while it runs (a group the configuration does not define, a client library missing) is
said so once in the log and held: its messages wait, until their maximum age. With
``--once``, a peer still failing ``retry_for_seconds`` after its first failure in a row (or
held) is given up for the run.
Each request, its outcome and each change in a peer's fortunes are told to ``status``,
which logs the peer's changes of state.

The local transport's ingest is blocking file work that need not be ordered with scans: it
runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .. import names, protocol
from .. import spool as _spool
from .._impl import codec
from ..protocol import Acks, PeerFailure
from . import batches
from .backoff import Backoff
from .batches import Entry, SpoolFiles
from .config import RelayConfig
from .disposal import Disposal
from .group import GroupTransport
from .status import RelayStatus
from .transport import Transport, Transports, Unavailable

log = logging.getLogger("dropr.relay")


class Peer:
    """One destination: its transport and where the relay stands with it.

    ``news``: the queue may hold names for it that no scan has read — set as names arrive for
    it and when its batches are done or let go, cleared by the scan policy as it plans a
    scan for it.
    """

    __slots__ = (
        "backoff", "field", "gave_up", "inflight", "news", "pending", "problem", "reason", "transport", "url",
    )  # fmt: skip

    def __init__(self, field: str, url: str, transport: Transport | None, problem: str, backoff: Backoff):
        self.field = field
        self.url = url
        self.transport = transport
        """None for a peer held: its messages wait."""
        self.problem = problem
        """Why its messages cannot be sent at all ("" when they can): they go to failed/."""
        self.backoff = backoff
        self.pending: collections.deque[list[Entry]] = collections.deque()
        self.inflight = 0
        self.news = True
        self.gave_up = False
        self.reason = ""
        """Why it failed last."""


class Delivery:
    """Sends ``spool``'s scanned messages to their peers as ``config`` says. ``wake`` tells the
    relay's loop that something it waits for changed, ``crash`` hands it an error it cannot
    go on after."""

    def __init__(
        self,
        config: RelayConfig,
        spool: _spool.Spool,
        disposal: Disposal,
        *,
        status: RelayStatus,
        wake: Callable[[], None],
        crash: Callable[[BaseException], None],
    ) -> None:
        self.client = spool.client_id
        """The client id the peers know this spool by."""
        self.peers: dict[str, Peer] = {}
        """The peers known, by field."""
        self.held: set[str] = set()
        """The names in batches, waiting or in flight."""
        self.delivered = 0
        self._config = config
        self._spool = spool
        self._disposal = disposal
        self._status = status
        self._wake = wake
        self._crash = crash
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._transports = Transports(
            config, SpoolFiles(self.client, spool.queue_dir, spool.queued_path, spool.resolve)
        )

    @property
    def busy(self) -> bool:
        """Whether requests are in flight."""
        return bool(self._tasks)

    def given_up(self) -> list[Peer]:
        """The peers given up for the run (``--once``)."""
        return [peer for peer in self.peers.values() if peer.gave_up]

    def resting(self, now: float) -> set[str]:
        """The fields of the peers left alone at ``now``: given up or backing off."""
        return {p.field for p in self.peers.values() if p.gave_up or p.backoff.waiting(now)}

    # -- names -----------------------------------------------------------------------

    def arrived(self, names: list[str]) -> None:
        """Marks the known peers of newly queued ``names`` as having news, makes others known."""
        peers = self.peers
        for name in names:
            try:
                field = codec.parse_spool_name(name)[2]
            except ValueError:
                continue
            peer = peers.get(field)
            if peer is not None:
                peer.news = True
            else:
                self._add_peer(field)

    def dispatch(self, names: list[str], prefetch: bool) -> None:
        """Cuts scanned ``names`` into batches for their peers and sends what slots allow;
        fails those that cannot be sent. ``prefetch``: read the batches' files ahead."""
        groups: dict[Peer, list[Entry]] = {}
        disposal = self._disposal
        fail = disposal.fail
        cutoff = disposal.expiry_cutoff()
        for name in names:
            try:
                priority, msg_id, peer_field, channel, size, crc, count, delay_ms = codec.parse_spool_name(name)
            except ValueError:
                fail(name, "not a message name")
                continue
            if codec.id_time_ns(msg_id) < cutoff:
                disposal.expire(name)
                continue
            peer = self.peers.get(peer_field) or self._add_peer(peer_field)
            if peer.problem:
                fail(name, peer.problem)
                continue
            if peer.transport is None:
                continue  # held: the name waits in the queue
            if channel[0] == "~":
                try:
                    self._spool.resolve(channel)
                except (OSError, ValueError) as exc:
                    fail(name, f"the text of channel {channel} is missing: {exc}")
                    continue
            groups.setdefault(peer, []).append(Entry(name, msg_id, priority, channel, size, crc, count, delay_ms))
        for peer, entries in groups.items():
            for batch in batches.cut(entries, self._config.batch_count, self._config.batch_bytes):
                peer.pending.append(batch)
                self.held.update(entry.name for entry in batch)
                if prefetch:
                    disposal.prefetch([entry.name for entry in batch])
            self._pump(peer)

    # -- peers -----------------------------------------------------------------------

    def _add_peer(self, field: str) -> Peer:
        transports = self._transports
        transport: Transport | None = None
        problem = held = ""
        url = field
        try:
            url = names.check_peer(self._spool.resolve(field))
            transport = transports.open(url)
        except Unavailable as exc:
            held = str(exc)
        except (OSError, ValueError) as exc:
            problem = f"unusable peer {url}: {exc}"
        backoff = transport.backoff if isinstance(transport, GroupTransport) else transports.backoff()
        peer = Peer(field, url, transport, problem, backoff)
        self.peers[field] = peer
        if held:
            backoff.hold()
            peer.reason = held
            peer.gave_up = self._config.once
            self._status.held(peer, held)
        return peer

    def _peer_failed(self, peer: Peer, reason: str) -> None:
        now = time.monotonic()
        backoff = peer.backoff
        deadline = math.inf
        if self._config.once:
            deadline = (backoff.since if backoff.failures else now) + self._config.retry_for_seconds
        delay = backoff.fail(now, deadline)
        for batch in peer.pending:
            self.held.difference_update(entry.name for entry in batch)
        peer.pending.clear()
        peer.news = True
        peer.reason = reason
        if now >= deadline:
            peer.gave_up = True
            self._status.gave_up(peer, reason, backoff.failures)
            return
        self._status.backing_off(peer, reason, delay, backoff.failures)
        asyncio.get_running_loop().call_later(delay, self._wake)

    # -- requests --------------------------------------------------------------------

    def _pump(self, peer: Peer) -> None:
        while peer.pending and peer.inflight < self._config.parallel and not self._stopping:
            peer.inflight += 1
            self._spawn(self._deliver(peer, peer.pending.popleft()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, peer: Peer, batch: list[Entry]) -> None:
        assert peer.transport is not None
        started = time.monotonic()
        acks: Acks | None = None
        self._status.sending(peer)
        try:
            acks = await peer.transport.send(batch)
        except PeerFailure as exc:
            self._status.answered(peer, time.monotonic() - started, 0, sum(entry.messages for entry in batch))
            self._peer_failed(peer, str(exc))
        except Exception as exc:
            self._crash(exc)
        try:
            if acks is not None:
                await self._disposal.remove(self._answer(peer, batch, acks, time.monotonic() - started))
        except Exception as exc:
            self._crash(exc)
        finally:
            peer.inflight -= 1
            self.held.difference_update(entry.name for entry in batch)
            if not peer.pending:
                peer.news = True
            self._pump(peer)
            self._wake()

    def _answer(self, peer: Peer, batch: list[Entry], acks: Acks, seconds: float) -> list[str]:
        """Counts the peer's answer and fails the rejected; returns the acknowledged names."""
        counts: collections.Counter[str] = collections.Counter()  # messages, a batch file's each
        acknowledged = []
        for entry in batch:
            status, reason = batches.verdict(entry, acks)
            counts[status] += entry.messages
            if status in protocol.ACKNOWLEDGED:
                acknowledged.append(entry.name)
            elif status == protocol.REJECTED:
                self._disposal.fail(entry.name, reason or "rejected by the peer")
        messages = sum(counts.values())
        delivered = sum(counts[status] for status in protocol.ACKNOWLEDGED)
        self.delivered += delivered
        log.debug("%s: %d sent in %.3f s: %s", peer.url, messages, seconds, dict(counts))
        retry = messages - delivered - counts[protocol.REJECTED]
        self._status.answered(peer, seconds, delivered, retry)
        if retry:
            why = next((acks[e.id][1] for e in batch if e.id in acks and acks[e.id][0] == protocol.RETRY), "")
            self._peer_failed(peer, f"{retry} of {messages} messages to be retried" + (f" ({why})" if why else ""))
        elif peer.backoff.failures:
            peer.backoff.succeed()
        return acknowledged

    # -- the end ---------------------------------------------------------------------

    def stop(self) -> None:
        """Start no more requests."""
        self._stopping = True

    async def finish(self) -> None:
        """Wait for the requests in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Close the transports; wait for their file work under way."""
        for peer in self.peers.values():
            if peer.transport is not None:
                await peer.transport.aclose()
        await self._transports.aclose()
