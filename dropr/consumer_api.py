"""The consumer API over HTTP, the one definition both ends import (``PROTOCOL.md``'s
"Consumers over HTTP" describes it for people): its paths and parameters, the fields of a
claimed message, receipts, and the words of per-message results.

Importable with nothing but msgpack: :mod:`dropr.server.consume` serves it,
:class:`dropr.RemoteStore` speaks it. Names travel as parameters, never in the path: a
channel may be ``..`` or hold slashes, which URL paths would normalize away.
"""

from __future__ import annotations

from typing import NamedTuple

from ._impl import codec

PREFIX = "/v1/"
"""Every route of the consumer API starts so; a POST elsewhere is an upload (a peer URL)."""

CLAIM = PREFIX + "claim"  # POST: channel, limit, lease, [group], [wait]
PROCESSED = PREFIX + "processed"  # POST: channel, [group], receipts
FAILED = PREFIX + "failed"  # POST: channel, [group], receipts, reason
RELEASE = PREFIX + "release"  # POST: channel, [group], receipts
STATUS = PREFIX + "status"  # GET: channel, id, [group]
COUNTS = PREFIX + "counts"  # GET: channel, [group]
DEAD = PREFIX + "dead"  # GET: channel, [group]
REQUEUE = PREFIX + "requeue"  # POST: channel, [group], [ids]
GROUPS = PREFIX + "groups"  # GET: channel
SUBSCRIBE = PREFIX + "subscribe"  # POST: channel, group
UNSUBSCRIBE = PREFIX + "unsubscribe"  # POST: channel, group
CHANNELS = PREFIX + "channels"  # GET

MAX_LIMIT = 1000
"""The most messages one claim request takes (a claim answer holds their payloads)."""
MAX_RECEIPTS = 10_000
"""The most receipts one request settles."""

MESSAGE_FIELDS = ("id", "client", "channel", "group", "priority", "time", "lease", "receipt", "payload")
"""The keys of a claimed message's map in a claim answer, in the order they are written
(``payload`` last, as msgpack bin). Dead letters add ``attempts`` and ``reasons`` before it."""

HEADER_PREFIX = "Dropr-"
"""The headers that carry a raw claim answer's metadata: ``Dropr-Id``, ``Dropr-Client``, …"""
RAW = "application/octet-stream"

# The state of a message after a settling request, or why it did not change.
LOST = "lost"
"""The claim is no longer the receipt's (taken back after its lease, or another claim's)."""


class Receipt(NamedTuple):
    """What settles a claim: the message's file name and the claim's lease token."""

    name: str
    lease_ns: int

    def __str__(self) -> str:
        return f"{self.name}:{self.lease_ns}"


def parse_receipt(text: object) -> Receipt:
    """A receipt from its text ``NAME:LEASE_NS``; ValueError when it is not one."""
    if isinstance(text, str):
        name, sep, token = text.rpartition(":")
        if sep and token.isdigit() and len(token) < 20 and 0 < int(token):
            try:
                codec.parse_store_name(name)
            except ValueError:
                pass
            else:
                if "/" not in name and "\0" not in name:
                    return Receipt(name, int(token))
    raise ValueError(f"not a receipt: {text!r}")
