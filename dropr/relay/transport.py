"""The interface of the relay's transports.

A transport's ``send(batch)`` delivers one batch to its peer and returns the peer's answer
(:data:`dropr.protocol.Acks`): per message id ``(status, reason)``, a message missing from
the answer counting as ``retry``. A failure of the whole request (refused, timed out, not
200, unreadable answer) raises :class:`~dropr.protocol.PeerFailure`: the peer backs off and
every message of the batch stays queued.
"""

from __future__ import annotations

from typing import Protocol

from ..protocol import Acks
from .batches import Entry


class Transport(Protocol):
    url: str

    async def send(self, batch: list[Entry]) -> Acks: ...

    def close(self) -> None: ...
