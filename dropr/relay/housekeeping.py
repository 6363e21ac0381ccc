"""Periodic chores of the relay, each a pass over one spool directory without a full listing.

They run on the relay's worker thread (directory passes block) and touch only what no
batch holds: a crashed producer's leftovers in ``tmp/``, and queued messages too old to
send for peers the relay is leaving alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection

from .._files import remove
from .._impl import codec

TMP_MAX_AGE = 3600.0


def clean_tmp(tmp_dir: str, max_age: float = TMP_MAX_AGE) -> int:
    """Remove files in ``tmp/`` older than ``max_age`` seconds (producers that died mid-put)."""
    cutoff = time.time() - max_age
    removed = 0
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff and remove(entry.path):
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def expired(queue_dir: str, peers: Collection[str], max_age: float, limit: int) -> list[str]:
    """Up to ``limit`` queued names for ``peers`` (fields) put more than ``max_age`` s ago."""
    cutoff = time.time_ns() - int(max_age * 1e9)
    found: list[str] = []
    with os.scandir(queue_dir) as entries:
        for entry in entries:
            name = entry.name
            fields = name.split("+", 2)
            if len(fields) < 3 or fields[1] not in peers:
                continue
            try:
                put_ns = codec.id_time_ns(name[1:31])
            except ValueError:
                continue
            if put_ns < cutoff:
                found.append(name)
                if len(found) >= limit:
                    break
    return found


def clear_sent(sent_dir: str) -> int:
    """Unlink every message in ``sent/`` until a pass finds none; returns how many."""
    removed = 0
    while True:
        found = 0
        with os.scandir(sent_dir) as entries:
            for entry in entries:
                if entry.name[0] == ".":
                    continue
                found += 1
                if remove(entry.path):
                    removed += 1
        if not found:
            return removed
