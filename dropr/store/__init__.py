"""The server-side store and the consumer API: :class:`Store` and its :class:`Message`.

A store has two sides over one directory: :class:`~.ingest.IngestSide`, the one path by
which messages enter (the server and the local transport), and
:class:`~.consumer.ConsumerSide`, what consumers do; :class:`Store` is both.
"""

from __future__ import annotations

from .ingest import Ingested
from .message import Message
from .store import Store

__all__ = ["Ingested", "Message", "Store"]
