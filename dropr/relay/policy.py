"""The scan policy: which peers the relay reads its queue for next, and how much it takes.

Plain bookkeeping, no I/O: :meth:`ScanPolicy.plan` says what the next scan is (or that there
is none to run), :meth:`ScanPolicy.scanned` takes in what it found.

Each scan takes at most a window of new names (plus those already held in flight), so
memory stays bounded however deep the queue. The window starts at ``scan_limit``; a scan
that comes back full doubles it, up to ``scan_limit_max``, so at depth each pass over a
bucket yields many messages and its cost per message stays small; a scan that finds
much less than the window sets it back to ``scan_limit``. A peer is left out of a scan while
it is backing off, has batches waiting, or has every request slot busy — except that while
the queue is deep, a peer whose waiting batches fall to half a window is scanned for ahead
of time, so its requests keep flowing while the next pass reads the queue. inotify tells
which peers have news, so an idle peer is not rescanned for other peers' traffic. A periodic
rescan covers lost events and systems without inotify. A put for a peer not seen yet makes
it known at once (inotify names it); peers queued before the relay started, or whose events
were lost, are found by surveys: when every known peer is left out, a scan reads the next
slice of buckets (``survey_bytes`` of directory) for names of other peers, resuming where the
last survey stopped, so finding a new peer behind a deep backlog never costs a read of the
whole queue. A survey only makes the peers it finds known — their messages are then read
from the head of the queue, in order — and surveys take at most ``IDLE_SCAN_SHARE`` of the
time.

A scan that took under ``INLINE_SCAN_SECONDS`` last time (a short queue, the usual idle
case) runs inline, saving a thread hand-off on the way from a put to its request; a longer
one runs on the scan thread, which the compiled scan leaves the GIL to.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sized
from typing import NamedTuple, Protocol

from .backoff import Backoff
from .config import RelayConfig

INLINE_SCAN_SECONDS = 0.002
"""A scan that took less than this runs on the loop thread next time; a longer one, on the scan thread."""
IDLE_SCAN_SHARE = 0.05
"""At most this share of time goes to surveys (scans for peers not known yet)."""


class PeerState(Protocol):
    """What the policy reads of a peer; ``news`` it clears when it plans a scan for the peer."""

    news: bool
    """The queue may hold names for the peer that no scan has read yet."""

    @property
    def gave_up(self) -> bool: ...
    @property
    def inflight(self) -> int: ...
    @property
    def pending(self) -> Collection[Sized]: ...
    @property
    def backoff(self) -> Backoff: ...


class ScanPlan(NamedTuple):
    """One scan to run: from the queue's head for ``peers``, or a survey for peers not known."""

    peers: list[PeerState]
    """The peers it reads for (their news cleared)."""
    skip: list[str]
    """The fields of the peers it leaves out."""
    limit: int
    """The most names it takes."""
    survey_after: str | None
    """For a survey, the bucket after which it reads ("" from the first); None: from the head."""
    full: bool
    """Every eligible peer is read for, news or not (a rescan)."""
    inline: bool
    """Short enough to run on the loop thread."""


class Scanned(NamedTuple):
    """What a scan found and how long it took; for a survey, the bucket it read last ("" when
    that was the end of the queue), None for a scan from the head."""

    names: list[str]
    seconds: float
    surveyed_to: str | None


class ScanPolicy:
    """Plans the relay's scans for ``peers`` (by field); ``held``: the names batches hold."""

    def __init__(self, config: RelayConfig, peers: Mapping[str, PeerState], held: Collection[str]) -> None:
        self._peers = peers
        self._held = held
        self._scan_limit = config.scan_limit
        self._window_max = max(config.scan_limit, config.scan_limit_max)
        self._parallel = config.parallel
        self._rescan_seconds = config.rescan_seconds
        self._window = config.scan_limit
        self._deep = False
        self._inline = True
        self._scanning = False
        self._rescan = True
        self._rescan_at = 0.0
        self._unknown_news = False
        self._survey_after = ""
        self._quiet_until = 0.0
        self._due = 0.0

    @property
    def due(self) -> float:
        """When :meth:`plan` is to be called again at the latest (monotonic seconds)."""
        return self._due

    @property
    def window(self) -> int:
        """How many new names the next scan may take."""
        return self._window

    @property
    def deep(self) -> bool:
        """Whether the last scan from the head came back full: the queue holds more."""
        return self._deep

    @property
    def scanning(self) -> bool:
        """Whether a scan is planned whose result has not come back."""
        return self._scanning

    def rescan(self) -> None:
        """Anything may have arrived (events were lost): the next scan reads for every peer."""
        self._rescan = True

    def plan(self, now: float) -> ScanPlan | None:
        """The scan to run at ``now`` (monotonic seconds); None while one runs or none is needed."""
        if now >= self._rescan_at:
            self._rescan = True
            self._rescan_at = now + self._rescan_seconds
        self._due = self._rescan_at
        if self._scanning:
            return None
        full = self._rescan
        scanned: list[PeerState] = []
        skip: list[str] = []
        for field, peer in self._peers.items():
            if self._eligible(peer, now) and (full or peer.news):
                scanned.append(peer)
            else:
                skip.append(field)
        if not scanned:
            if not (full or self._unknown_news):
                return None
            if now < self._quiet_until:
                self._due = min(self._due, self._quiet_until)
                return None
        # Cleared before the pass: an arrival during it is read afterwards and sets them again.
        self._rescan = self._unknown_news = False
        for peer in scanned:
            peer.news = False
        survey_after = None if scanned or not skip else self._survey_after
        self._scanning = True
        limit = self._window + len(self._held)
        return ScanPlan(scanned, skip, limit, survey_after, full, self._inline and survey_after is None)

    def scanned(self, plan: ScanPlan, result: Scanned, now: float, finished: Collection[str] = ()) -> list[str]:
        """Takes in the result of ``plan`` at ``now``; returns its names that no batch holds
        and are not in ``finished`` (sent or failed while it ran), for a survey all it found."""
        self._scanning = False
        names, seconds, surveyed_to = result
        if surveyed_to is not None:
            self._quiet_until = now + seconds / IDLE_SCAN_SHARE
            self._survey_after = surveyed_to
            if surveyed_to:
                self._unknown_news = True
            return names
        self._inline = seconds < INLINE_SCAN_SECONDS
        held = self._held
        fresh = [name for name in names if name not in held and name not in finished]
        self._deep = len(names) >= plan.limit
        if self._deep:
            self._window = min(2 * self._window, self._window_max)
            if plan.full:
                self._rescan = True
            self._unknown_news = True
            for peer in plan.peers:
                peer.news = True
        elif len(fresh) < self._window // 4:
            self._window = self._scan_limit
        return fresh

    def drained(self, now: float) -> bool:
        """Whether nothing is left to read or waiting to be sent, as far as the policy knows."""
        if self._scanning or self._rescan or self._unknown_news:
            return False
        return all(
            peer.gave_up or (not peer.pending and not peer.news and not peer.backoff.waiting(now))
            for peer in self._peers.values()
        )

    def _eligible(self, peer: PeerState, now: float) -> bool:
        if peer.gave_up or peer.backoff.waiting(now):
            return False
        if self._deep:
            return sum(map(len, peer.pending)) <= self._window // 2
        return not peer.pending and peer.inflight < self._parallel
