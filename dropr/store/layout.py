"""Where a store keeps what, and how channel and client texts become file-name fields.

::

    STORE/tmp/                          uploads in progress (same file system as the rest)
    STORE/names/                        texts of compact (``~``) fields
    STORE/channels/{CH}/queue/          ready for consumers, in delivery order by name
    STORE/channels/{CH}/claimed/        held by a consumer; mtime = end of its lease
    STORE/channels/{CH}/delayed/        failed, waiting to be retried; mtime = when
    STORE/channels/{CH}/processed/      done; kept until wiped
    STORE/channels/{CH}/dead/           failed too often; the reasons are in attempts/
    STORE/channels/{CH}/attempts/NAME   failures of message NAME so far (JSON)

A message keeps its exact file name ``{P}{ID}+{CLIENT}`` in every state, so "is it held
already" is one ``stat`` per state, and moving between states is one ``rename``. Channel and
client texts become file-name fields by the one rule of :func:`dropr.names.field`.
"""

from __future__ import annotations

TMP = "tmp"
NAMES = "names"
CHANNELS = "channels"

QUEUE = "queue"
CLAIMED = "claimed"
DELAYED = "delayed"
PROCESSED = "processed"
DEAD = "dead"
ATTEMPTS = "attempts"

STATES = (QUEUE, CLAIMED, DELAYED, PROCESSED, DEAD)
"""Every state directory, in the order messages flow forward (ingest checks them so)."""
