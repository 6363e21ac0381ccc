"""What the relay's transports share: the answer they give and the failure they raise.

A transport's ``send(batch)`` delivers one batch to its peer and returns the peer's
answer, ``{id: (status, reason)}`` with status ``stored``, ``duplicate``, ``rejected`` or
``retry``; a message missing from the answer counts as ``retry``. A failure of the whole
request (refused, timed out, not 200, unreadable answer) raises :class:`PeerFailure`: the
peer backs off and every message of the batch stays queued.
"""

from __future__ import annotations

from typing import Any, Protocol

from .batches import Entry

Acks = dict[str, tuple[str, str]]
STATUSES = frozenset(("stored", "duplicate", "rejected", "retry"))


class PeerFailure(Exception):
    """The whole request failed; the message says why, in one line."""


class Transport(Protocol):
    url: str

    async def send(self, batch: list[Entry]) -> Acks: ...

    def close(self) -> None: ...


def parse_acks(answer: Any) -> Acks:
    """The answer map, checked; PeerFailure when it is not one."""
    if not isinstance(answer, dict):
        raise PeerFailure("the answer is not a map of message ids")
    acks: Acks = {}
    for msg_id, value in answer.items():
        if not isinstance(msg_id, str) or not isinstance(value, (list, tuple)) or not value or value[0] not in STATUSES:
            raise PeerFailure(f"the answer holds a bad entry for {msg_id!r}")
        reason = value[1] if len(value) > 1 and isinstance(value[1], str) else ""
        acks[msg_id] = (value[0], reason)
    return acks
