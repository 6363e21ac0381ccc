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

import errno
import os

from .. import _files
from .. import limits as _limits
from ..errors import StoreError
from ..names import CACHE_LIMIT, Names

PathLike = str | os.PathLike[str]

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


class StoreDirectory:
    """A store directory: where it keeps what, and the registry of its long names. Both
    sides of a store (:mod:`.ingest`, :mod:`.consumer`) build on it; ``create`` makes a
    missing store, else StoreError."""

    def __init__(self, path: PathLike, create: bool = False, *, limits: _limits.Limits | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.limits = limits or _limits.DEFAULT
        self.staging_dir = os.path.join(self.path, TMP)
        self.channels_dir = os.path.join(self.path, CHANNELS)
        self.names = Names(os.path.join(self.path, NAMES))
        if create:
            for name in (TMP, NAMES, CHANNELS):
                os.makedirs(os.path.join(self.path, name), _files.DIR_MODE, exist_ok=True)
        elif not os.path.isdir(self.channels_dir):
            raise StoreError(errno.ENOENT, f"not a store (no channels/ directory): {self.path}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def text(self, name: str) -> str:
        """The text of a channel or client field; the field itself when its text is lost."""
        try:
            return self.names.resolve(name)
        except (OSError, ValueError):
            return name


def remember(cache: dict[str, str], key: str, value: str) -> str:
    """Keep ``value`` for ``key`` in a cache of at most :data:`CACHE_LIMIT` entries; ``value``."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value
