"""What the relay is doing, per peer, for operators: ``SPOOL/relay.status`` and the log lines.

Delivery and disposal report events — a request sent, a request answered, a peer backing
off or given up, a message failed — a few calls per batch and none per message delivered.
:class:`RelayStatus` keeps per peer its state (idle, delivering, backing off, given up, held),
since when and why, what it delivered, failed and retried, the requests in flight and the
latency of its batches; it logs one line per change of state (backing off, delivering
again, giving up, held), and the relay's loop calls :meth:`RelayStatus.publish` on each turn,
which writes the whole as JSON at most once a second while anything changed (written whole
under another name and renamed, so a reader never sees half of it). ``dropr spool DIR
status`` reads the file while the relay holds the spool's lock; ``--metrics`` serves the
same :attr:`RelayStatus.snapshot`. Only the loop thread calls the methods; other threads
read ``snapshot``, a dict replaced, never changed, once published.

A peer is "delivering" from its first request and stays so until it has had nothing in
flight for :data:`IDLE_AFTER` seconds: idle since its last answer. A peer backing off stays
so, through its retries, until an answer has nothing to retry.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from typing import Any, Protocol

from .. import _files
from .. import spool as _spool
from .._impl import codec

log = logging.getLogger("dropr.relay")

FILE = "relay.status"
PUBLISH_SECONDS = 1.0
"""The file is written at most this often."""
IDLE_AFTER = 1.0
"""A peer with nothing in flight for this long is idle."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the batch latency histogram; the requests' timeout is 60 s."""

IDLE = "idle"
DELIVERING = "delivering"
BACKING_OFF = "backing off"
GIVEN_UP = "given up"
HELD = "held"


def path(spool_path: str) -> str:
    """Where the relay of the spool at ``spool_path`` publishes its status."""
    return os.path.join(spool_path, FILE)


class PeerName(Protocol):
    """What the status reads of a peer of delivery's."""

    @property
    def field(self) -> str: ...
    @property
    def url(self) -> str: ...


class _Peer:
    """The state of one peer as :class:`RelayStatus` keeps it."""

    __slots__ = (
        "buckets", "delivered", "failed", "failures", "inflight", "last_answer", "last_seconds", "latency_sum",
        "reason", "retried", "since", "state", "until", "url",
    )  # fmt: skip

    def __init__(self, url: str, now: float) -> None:
        self.url = url
        self.state = IDLE
        self.since = now
        self.until = 0.0
        self.reason = ""
        self.failures = 0
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.inflight = 0
        self.last_answer = 0.0
        self.last_seconds: float | None = None
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": round(self.since, 3),
            "until": round(self.until, 3) if self.state == BACKING_OFF else None,
            "reason": self.reason,
            "failures": self.failures,
            "delivered": self.delivered,
            "failed": self.failed,
            "retried": self.retried,
            "inflight": self.inflight,
            "last_batch_seconds": self.last_seconds,
            "latency_counts": list(self.buckets),
            "latency_sum": round(self.latency_sum, 6),
        }


class RelayStatus:
    """The relay's state per peer field of ``spool``'s messages; ``file``: where :meth:`publish`
    writes it (None: nowhere)."""

    def __init__(self, file: str | None, spool: _spool.Spool) -> None:
        self._file = file
        self._resolve = spool.resolve
        self._peers: dict[str, _Peer] = {}
        self._head = {
            "pid": os.getpid(),
            "client": spool.client_id,
            "started": round(time.time(), 3),
            "latency_buckets": list(LATENCY_BUCKETS),
        }
        self._changed = True
        self._next = 0.0
        self.snapshot: dict[str, Any] = self._build(time.time())
        """The state as last published: ``pid``, ``client``, ``started``, ``updated``,
        ``latency_buckets`` (the histogram's upper bounds; one count more, for the rest) and
        ``peers``, by URL, each as :meth:`_Peer.record` makes it (times in seconds since the epoch)."""

    def _peer(self, peer: PeerName) -> _Peer:
        state = self._peers.get(peer.field)
        if state is None:
            state = self._peers[peer.field] = _Peer(peer.url, time.time())
        state.url = peer.url
        self._changed = True
        return state

    # -- events (the loop thread) -------------------------------------------------------

    def sending(self, peer: PeerName) -> None:
        """A request to ``peer`` starts."""
        state = self._peer(peer)
        state.inflight += 1
        if state.state == IDLE:
            state.state, state.since = DELIVERING, time.time()

    def answered(self, peer: PeerName, seconds: float, acknowledged: int, retried: int) -> None:
        """A request to ``peer`` ended after ``seconds``: ``acknowledged`` of its messages
        left the queue, ``retried`` stay for another try (all of them when it failed whole)."""
        state = self._peer(peer)
        now = time.time()
        state.inflight -= 1
        state.last_answer = now
        state.last_seconds = round(seconds, 6)
        state.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        state.latency_sum += seconds
        state.delivered += acknowledged
        state.retried += retried
        if not retried and state.state == BACKING_OFF:
            log.info("%s: delivering again after %d failures in %.1f s", state.url, state.failures, now - state.since)
            state.state, state.since, state.reason, state.failures = DELIVERING, now, "", 0

    def backing_off(self, peer: PeerName, reason: str, delay: float, failures: int) -> None:
        """``peer`` failed (its ``failures``-th time in a row) for ``reason``: left alone ``delay`` s."""
        state = self._peer(peer)
        now = time.time()
        if state.state != BACKING_OFF:
            log.warning("%s: %s; backing off (next try in %.2f s)", state.url, reason, delay)
            state.state, state.since = BACKING_OFF, now
        else:
            log.debug("%s: %s; still backing off (failure %d, next try in %.2f s)", state.url, reason, failures, delay)
        state.until, state.reason, state.failures = now + delay, reason, failures

    def gave_up(self, peer: PeerName, reason: str, failures: int) -> None:
        """``peer`` is given up for the run (``--once``) after ``failures`` failures in a row."""
        state = self._peer(peer)
        now = time.time()
        began = state.since if state.state == BACKING_OFF else now
        log.error("%s: %s; giving up after %d failures in %.1f s", state.url, reason, failures, now - began)
        state.state, state.since, state.reason, state.failures = GIVEN_UP, now, reason, failures

    def held(self, peer: PeerName, reason: str) -> None:
        """``peer`` cannot be sent to while the relay runs (say, a group the configuration does
        not define) for ``reason``: its messages wait."""
        state = self._peer(peer)
        log.error("%s: %s; its messages wait in the queue (until their maximum age)", state.url, reason)
        state.state, state.since, state.reason = HELD, time.time(), reason

    def failed(self, name: str, messages: int) -> None:
        """The queued file ``name``, of ``messages`` messages, went to ``failed/``."""
        try:
            field = codec.parse_spool_name(name)[2]
        except ValueError:
            return
        state = self._peers.get(field)
        if state is None:  # a peer no request went to: expired, or unusable
            try:
                url = self._resolve(field)
            except (OSError, ValueError):
                url = field
            state = self._peers[field] = _Peer(url, time.time())
        state.failed += messages
        self._changed = True

    # -- publishing ----------------------------------------------------------------------

    def publish(self, force: bool = False) -> None:
        """Write the status file if anything changed and a second has passed (``force``: now)."""
        now = time.time()
        if not force and now < self._next:
            return
        for state in self._peers.values():
            if state.state == DELIVERING and not state.inflight and now - state.last_answer >= IDLE_AFTER:
                state.state, state.since = IDLE, state.last_answer
                self._changed = True
        if not self._changed and not force:
            return
        self._changed = False
        self._next = now + PUBLISH_SECONDS
        self.snapshot = self._build(now)
        if self._file is None:
            return
        try:
            _files.publish(self._file, json.dumps(self.snapshot, separators=(",", ":")).encode(), replace=True)
        except OSError as exc:
            log.debug("cannot write %s: %s", self._file, exc)

    def _build(self, now: float) -> dict[str, Any]:
        peers = {state.url: state.record() for state in self._peers.values()}
        return {**self._head, "updated": round(now, 3), "peers": peers}


def read(spool_path: str) -> dict[str, Any] | None:
    """The status the relay of the spool at ``spool_path`` published last; None if there is none."""
    try:
        with open(path(spool_path), "rb") as file:
            data = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
