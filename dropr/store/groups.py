"""Consumer groups of a channel (NSQ's channels of a topic): subscribing and unsubscribing.

Both hold the channel's lock exclusively (:func:`~.layout.locked`), so ingest, which holds
it shared while it moves a batch in, sees a channel's groups change only between batches:
every message lands either in the channel's own queue before the first group existed, or in
every group's queue. The first group takes over what waits in the channel's own state
directories (queued, delayed, claimed — leases running on — and dead letters, with their
failure records), so nothing waits where nobody reads any more; a group subscribed later
starts empty. Processed messages stay where they are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from .. import _files
from .layout import ATTEMPTS, CLAIMED, DEAD, DELAYED, GROUPS, QUEUE, group_roots, locked, make_channel, make_root

_TAKEN_OVER = (QUEUE, DELAYED, CLAIMED, DEAD)


def subscribe(channels_dir: str, channel_dir: str, group_field: str) -> bool:
    """Make the group ``group_field`` of a channel (and the channel, if it has never
    received a message); False when it exists already."""
    make_channel(channels_dir, channel_dir)
    groups_dir = os.path.join(channel_dir, GROUPS)
    os.makedirs(groups_dir, _files.DIR_MODE, exist_ok=True)  # a channel made before groups were
    root = os.path.join(groups_dir, group_field)
    with _exclusive(channel_dir):
        others = [path for path in group_roots(channel_dir) if path != root]
        made = make_root(groups_dir, root) if not os.path.isdir(root) else False
        if not others:
            # The first group; subscribing it again finishes a takeover a crash cut short.
            take_over(channel_dir, root)
        if made or not others:
            _files.sync_file_system(channel_dir)
    return made


def unsubscribe(channel_dir: str, group_field: str) -> bool:
    """Remove a channel's group and the messages it holds (the other groups keep theirs);
    False when there is no such group."""
    groups_dir = os.path.join(channel_dir, GROUPS)
    gone = os.path.join(groups_dir, f".gone.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        with _exclusive(channel_dir):
            os.rename(os.path.join(groups_dir, group_field), gone)
            _files.sync_directory(groups_dir)
    except FileNotFoundError:
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True


def take_over(channel_dir: str, root: str) -> int:
    """Move what waits in the channel's own state directories into the group at ``root``;
    how many messages moved. Passes repeat until one moves nothing, since consumers of the
    channel's own queue may move messages between its states meanwhile."""
    total = 0
    while True:
        moved = 0
        for state in _TAKEN_OVER:
            for name in _listdir(os.path.join(channel_dir, state)):
                try:
                    os.rename(os.path.join(channel_dir, state, name), os.path.join(root, state, name))
                except FileNotFoundError:
                    continue
                moved += 1
                _move_if_there(os.path.join(channel_dir, ATTEMPTS, name), os.path.join(root, ATTEMPTS, name))
        total += moved
        if not moved:
            return total


@contextlib.contextmanager
def _exclusive(channel_dir: str) -> Iterator[None]:
    """Hold the channel's lock exclusively; FileNotFoundError when there is no channel."""
    fd = os.open(os.path.join(channel_dir, QUEUE), _files.DIR_FLAGS)
    try:
        with locked(fd, exclusive=True):
            yield
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except FileNotFoundError:
        return []


def _move_if_there(source: str, target: str) -> None:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        pass
