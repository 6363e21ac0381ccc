"""dropr: durable, decentralized store-and-forward messaging.

Producers drop each message as a file into a local spool (:func:`fastput`,
:class:`Client`); ``dropr-relay`` forwards the spool to its peers; on a server, consumers
work a :class:`Store`, or from another host a :class:`RemoteStore`. Importing this package
loads the producer side only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DroprError, InvalidMessage, SpoolError, StoreError
from .spool import Client, fastput, fastput_many

if TYPE_CHECKING:
    from .remote import RemoteStore
    from .store import Store

__all__ = [
    "Client",
    "DroprError",
    "InvalidMessage",
    "RemoteStore",
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
    if name == "RemoteStore":
        from .remote import RemoteStore

        return RemoteStore
    raise AttributeError(f"module 'dropr' has no attribute {name!r}")
