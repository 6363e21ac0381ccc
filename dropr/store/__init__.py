"""The server-side store and the consumer API: :class:`Store` and its :class:`Message`."""

from __future__ import annotations

from .message import Message
from .store import Ingested, Store

__all__ = ["Ingested", "Message", "Store"]
