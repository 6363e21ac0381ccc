"""Peer groups: one peer (``group:NAME``) whose transport sends each batch to one member.

``failover`` takes the first member that is not backing off, in order, so an earlier member
is tried again once its backoff expires and used again once it works; ``spread`` takes the
members that are not backing off in turn (round robin). Each member backs off like a peer,
with its own :class:`~dropr.relay.backoff.Backoff`; a member's failure moves the batch on
to the next member at once, and only when every member fails does the request fail: the
group then backs off until its first member may be tried again (:class:`GroupBackoff`).

A message leaves the spool once one member acknowledged it. An acknowledgement lost on the
way back (the member stored the batch, the relay saw a timeout) sends the batch on to
another member: a message may then be stored by two members, each of which keeps it once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence

from .. import protocol
from ..protocol import Acks, PeerFailure
from .backoff import Backoff
from .batches import Entry
from .transport import Transport

log = logging.getLogger("dropr.relay")


class Member:
    """One member of a group: its transport (or why it has none) and its backoff."""

    __slots__ = ("backoff", "transport", "url")

    def __init__(self, url: str, transport: Transport | str, backoff: Backoff) -> None:
        self.url = url
        self.backoff = backoff
        self.transport: Transport | None = None
        if isinstance(transport, str):
            log.error("%s: %s; it is left out of its groups", url, transport)
            backoff.hold()
        else:
            self.transport = transport


class GroupBackoff(Backoff):
    """A group's backoff: after a failure it waits until its first member may be tried again."""

    def __init__(self, members: Sequence[Backoff]) -> None:
        super().__init__(0.0, 0.0)
        self._members = members

    def fail(self, now: float | None = None, deadline: float = math.inf) -> float:
        now = time.monotonic() if now is None else now
        if not self.failures:
            self.since = now
        self.failures += 1
        first = max(now, min(member.until for member in self._members))  # a backoff may end mid-send
        self.until = min(first, deadline)
        return self.until - now


class GroupTransport:
    """Sends batches to the members of the group ``url`` as ``mode`` says."""

    def __init__(self, url: str, mode: str, members: list[Member]) -> None:
        self.url = url
        self.backoff = GroupBackoff([member.backoff for member in members])
        """The backoff of the group's peer."""
        self._spread = mode == "spread"
        self._members = members
        self._next = 0

    def _candidates(self, now: float) -> Iterator[Member]:
        """The members to try in turn, those backing off left out."""
        members = self._members
        start = self._next if self._spread else 0
        for step in range(len(members)):
            index = (start + step) % len(members)
            member = members[index]
            if member.backoff.waiting(now):
                continue
            if self._spread:
                self._next = (index + 1) % len(members)
            yield member

    async def send(self, batch: list[Entry]) -> Acks:
        """Send ``batch`` to a member, the next one when a member fails; PeerFailure when all do."""
        for member in self._candidates(time.monotonic()):
            assert member.transport is not None
            try:
                acks = await member.transport.send(batch)
            except PeerFailure as exc:
                delay = member.backoff.fail()
                log.warning("%s: member %s: %s; backing off %.2f s", self.url, member.url, exc, delay)
                continue
            if any(acks.get(entry.id, (protocol.RETRY, ""))[0] == protocol.RETRY for entry in batch):
                member.backoff.fail()
            elif member.backoff.failures:
                log.info(
                    "%s: member %s delivering again after %d failures", self.url, member.url, member.backoff.failures
                )
                member.backoff.succeed()
            return acks
        raise PeerFailure("every member failing")

    async def aclose(self) -> None:
        for member in self._members:
            if member.transport is not None:
                await member.transport.aclose()
