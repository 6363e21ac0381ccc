"""What a claim that waits for a message watches: inotify on a root's state directories.

A message becomes claimable when it arrives in ``queue/`` (ingest links it in, a release or
a sweep renames it back); an arrival in ``delayed/`` or ``claimed/`` changes when something
next becomes due there, which the waiting claim wakes for by its own timer. While the
channel does not exist yet, the channels directory is watched for it to appear. Where
inotify is missing, :meth:`Arrivals.wait` sleeps :data:`POLL` seconds at most instead.
"""

from __future__ import annotations

import os
import time

from .. import _inotify
from .layout import CLAIMED, DELAYED, QUEUE

POLL = 0.1
"""The longest sleep of a waiting claim where inotify is missing."""


class Arrivals:
    """Watches ``root`` (a channel's or a group's directory) for what a waiting claim needs."""

    def __init__(self, root: str, channels_dir: str) -> None:
        self._root = root
        self._channels_dir = channels_dir
        self._watch: _inotify.Inotify | None = None
        self._queue_wd = -1
        self._whole = False

    def watch(self) -> None:
        """Start watching (or watch the root itself, once the channel appeared)."""
        if self._whole:
            return
        paths = [os.path.join(self._root, state) for state in (QUEUE, DELAYED, CLAIMED)]
        try:
            watch = _inotify.open_watch(paths)
        except FileNotFoundError:
            if self._watch is None:
                self._watch = _inotify.open_watch([self._channels_dir])
            return
        self.close()
        self._watch, self._whole = watch, watch is not None
        if watch is not None:
            self._queue_wd = next(wd for wd, path in watch.paths.items() if path == paths[0])

    def wait(self, timeout: float) -> bool:
        """Sleep until something arrives or ``timeout`` seconds passed; True when what
        arrived may change when something is next due (or cannot tell)."""
        if self._watch is None:
            time.sleep(min(timeout, POLL))
            return True
        if not self._watch.wait(max(0.0, timeout)):
            return False
        events = self._watch.events()
        if events is None or not self._whole:
            return True
        return any(event.wd != self._queue_wd for event in events)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def __enter__(self) -> Arrivals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
