"""Where a store keeps what, and how channel and client texts become file-name fields.

::

    STORE/tmp/                          uploads in progress (same file system as the rest)
    STORE/names/                        texts of compact (``~``) fields
    STORE/ingested/{CLIENT}             the highest message id of a client stored (.bounds)
    STORE/channels/{CH}/queue/          ready for consumers, in delivery order by name
    STORE/channels/{CH}/claimed/        held by a consumer; mtime = end of its lease
    STORE/channels/{CH}/delayed/        failed and waiting to be retried, or put with a delay;
                                        mtime = when it is due
    STORE/channels/{CH}/processed/      done; kept until wiped
    STORE/channels/{CH}/dead/           failed too often; the reasons are in attempts/
    STORE/channels/{CH}/attempts/NAME   failures of message NAME so far (JSON)
    STORE/channels/{CH}/groups/{G}/     a consumer group: queue/, claimed/, ... as above

A message keeps its exact file name ``{P}{ID}+{CLIENT}`` in every state, so "is it held
already" is one ``stat`` per state, and moving between states is one ``rename``. The name
may be one of several hard links of one file: the small messages of a request to one
channel and priority are stored together, in a *shared file* (a batch file, mode
:data:`~dropr._files.SHARED_MODE`; :data:`~dropr._files.ARRIVING_MODE` while ingest links
it in) linked under each one's name, from which each is read by its id; creating a file
costs a file system far more than linking one. Claims keep a shared file's messages apart
where their times would meet (:func:`.claims.own`). Channel,
group and client texts become file-name fields by the one rule of :func:`dropr.names.field`.

A channel without groups keeps its messages in its own state directories. Once it has
groups, each new message is hard-linked into every group's ``queue/`` instead, and each
group's directories work as a channel's do (a *root*: the directory holding the states).
The channel's own ``queue/`` directory is its lock (:func:`locked`): ingest holds it shared
while it moves a batch in, subscribing and unsubscribing exclusively, so no message lands in
a queue that nobody will read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator

from .. import _files
from .. import limits as _limits
from ..errors import StoreError
from ..names import CACHE_LIMIT, Names

PathLike = str | os.PathLike[str]

TMP = "tmp"
NAMES = "names"
INGESTED = "ingested"
CHANNELS = "channels"

QUEUE = "queue"
CLAIMED = "claimed"
DELAYED = "delayed"
PROCESSED = "processed"
DEAD = "dead"
ATTEMPTS = "attempts"
GROUPS = "groups"

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
            # ingested/ only in a new store: the highest ids of one that had none are unknown
            new = not os.path.isdir(self.channels_dir)
            for name in (TMP, NAMES, *((INGESTED,) if new else ()), CHANNELS):
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


def group_roots(channel_dir: str) -> list[str]:
    """The directories of a channel's groups (none for a channel without any)."""
    try:
        with os.scandir(os.path.join(channel_dir, GROUPS)) as entries:
            return sorted(entry.path for entry in entries if not entry.name.startswith("."))
    except FileNotFoundError:
        return []


def make_root(parent: str, root: str, extra: tuple[str, ...] = ()) -> bool:
    """Create a root's state directories (and ``extra`` ones) all at once: built aside in
    ``parent``, then renamed into place. False when another process made it first."""
    tmp = os.path.join(parent, f".new.{os.getpid()}.{os.urandom(4).hex()}")
    os.mkdir(tmp, _files.DIR_MODE)
    try:
        for state in (*STATES, ATTEMPTS, *extra):
            os.mkdir(os.path.join(tmp, state), _files.DIR_MODE)
        try:
            os.rename(tmp, root)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_channel(channels_dir: str, channel_dir: str) -> bool:
    """Create a channel's directories all at once; False when they exist already."""
    return make_root(channels_dir, channel_dir, (GROUPS,))


@contextlib.contextmanager
def locked(queue_fd: int, exclusive: bool) -> Iterator[None]:
    """Hold a channel's lock (a ``flock`` of its own ``queue/``, open as ``queue_fd``)."""
    fcntl.flock(queue_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(queue_fd, fcntl.LOCK_UN)


def remember(cache: dict[str, str], key: str, value: str) -> str:
    """Keep ``value`` for ``key`` in a cache of at most :data:`CACHE_LIMIT` entries; ``value``."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value
