"""Being told at once when a producer puts: inotify on the spool's queue and its buckets.

Built on :mod:`dropr._inotify`. :meth:`Watch.read` returns the names that arrived since the
last read (the relay learns which peers have news without listing the queue), or None when
the kernel's event queue overflowed and anything may have arrived. ``queue/`` itself is
watched for new buckets; each bucket gets a watch of its own as it appears, and what it
already holds by then is reported as arrived, so a put that beat the watch is not missed.
Where inotify is missing, :func:`watch_queue` returns None and the relay relies on its
periodic rescan alone. :func:`watch` watches one plain directory.
"""

from __future__ import annotations

import errno
import logging
import os

from .. import _inotify
from .._impl import codec, scan
from .._inotify import ARRIVALS, IN_ISDIR

log = logging.getLogger("dropr.relay")


class Watch(_inotify.Inotify):
    """An inotify descriptor watching directories for arrivals; for a spool's ``queue/``
    (``queue_dir``), its buckets too, each watched as it appears."""

    def __init__(self, fd: int, queue_dir: str | None = None) -> None:
        super().__init__(fd)
        self._queue_dir = queue_dir
        self._root = -1

    def _start(self, queue_dir: str) -> None:
        self._root = self.add(queue_dir)
        for bucket in scan.buckets(queue_dir):
            self._add_bucket(queue_dir, bucket)

    def _add_bucket(self, queue_dir: str, bucket: str) -> list[str]:
        """Watches a new bucket; returns what it holds already."""
        path = os.path.join(queue_dir, bucket)
        try:
            self.add(path)
            return os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise
            log.warning("%s: rescanning periodically", exc)
            return []

    def read(self) -> list[str] | None:
        """Names that arrived since the last call (maybe none); None after an overflow."""
        events = self.events()
        if events is None:
            return None
        names: list[str] = []
        for wd, mask, name in events:
            if not name:
                continue
            if wd == self._root and self._queue_dir is not None:
                if mask & IN_ISDIR and len(name) == codec.BUCKET_LEN:
                    names += self._add_bucket(self._queue_dir, name)
            else:
                names.append(name)
        return names


def watch(path: str, mask: int = ARRIVALS) -> Watch | None:
    """A non-blocking Watch of directory ``path`` for ``mask`` events; None where inotify is
    missing or the watch limit is reached."""
    made = _create()
    if made is None:
        return None
    try:
        made.add(path, mask)
    except OSError as exc:
        _refused(made, exc)
        return None
    return made


def watch_queue(queue_dir: str) -> Watch | None:
    """A non-blocking Watch of a spool's ``queue/`` and its buckets; None where inotify is
    missing or the watch limit is reached."""
    made = _create(queue_dir)
    if made is None:
        return None
    try:
        made._start(queue_dir)
    except OSError as exc:
        _refused(made, exc)
        return None
    return made


def _create(queue_dir: str | None = None) -> Watch | None:
    try:
        fd = _inotify.create()
    except OSError as exc:
        log.warning("%s: rescanning periodically", exc)
        return None
    if fd is None:
        log.info("inotify is not available: rescanning the queue periodically")
        return None
    return Watch(fd, queue_dir)


def _refused(watch: Watch, exc: OSError) -> None:
    """Closes ``watch`` and logs, when the kernel refused for want of resources; else raises."""
    watch.close()
    if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EACCES):
        raise exc
    log.warning("%s: rescanning periodically", exc)
