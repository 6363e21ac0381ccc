"""dropr: durable, decentralized store-and-forward messaging.

Producers drop each message as a file into a local spool (:func:`fastput`,
:class:`Client`); ``dropr-relay`` forwards the spool to its peers; on a server, consumers
work a :class:`Store`. Importing this package loads the producer side only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DroprError, InvalidMessage, SpoolError, StoreError
from .spool import Client, fastput, fastput_many

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "Client",
    "DroprError",
    "InvalidMessage",
    "SpoolError",
    "Store",
    "StoreError",
    "fastput",
    "fastput_many",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Store":
        from .store import Store

        return Store
    raise AttributeError(f"module 'dropr' has no attribute {name!r}")
