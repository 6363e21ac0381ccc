"""The relay's passes over spool directories, none a full listing of the queue.

They block, so they run off the event loop: the chores (``disposal``'s threads) touch only
what no batch holds — a crashed producer's leftovers in ``tmp/``, queued messages too old to
send for peers the relay is leaving alone, what is in ``sent/`` — and a scan (``daemon``)
removes the queue buckets it found empty and chooses the buckets a survey reads.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Collection

from .._files import remove, remove_all
from .._impl import codec, drop, scan

TMP_MAX_AGE = 3600.0
SLOT_NS = 1 << 32
"""The time slice of a queue bucket (the id's first 8 hex digits count in this unit)."""
BUCKET_KEEP_SECONDS = 2 * drop.STALE_PUT_NS / 1e9
"""An empty bucket is removed once its time slice ended this long ago."""


def clean_tmp(tmp_dir: str, max_age: float = TMP_MAX_AGE) -> int:
    """Remove files in ``tmp/`` older than ``max_age`` seconds (producers that died mid-put).

    A file a put took from ``free/`` keeps its old mtime until written: its name, the new
    message's id, says its age then."""
    cutoff = time.time() - max_age
    removed = 0
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            try:
                if (
                    entry.stat(follow_symlinks=False).st_mtime < cutoff
                    and _named_before(entry.name, cutoff)
                    and remove(entry.path)
                ):
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def _named_before(name: str, cutoff: float) -> bool:
    """Whether ``name``, if it is a message id, was made before ``cutoff`` (seconds)."""
    try:
        return len(name) != codec.ID_LEN or bool(codec.id_time_ns(name) < cutoff * 1e9)
    except ValueError:
        return True


def expired(queue_dir: str, peers: Collection[str], cutoff: int, limit: int) -> list[str]:
    """Up to ``limit`` queued names for ``peers`` (fields) put before ``cutoff`` (ns since
    the epoch).

    Only buckets whose time slice began before the cut-off are read.
    """
    found: list[str] = []
    for bucket in scan.buckets(queue_dir):
        if _slot_start_ns(bucket) >= cutoff:
            continue
        try:
            entries = os.scandir(os.path.join(queue_dir, bucket))
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                try:
                    _, msg_id, peer, *_ = codec.parse_spool_name(entry.name)
                except ValueError:
                    continue
                if peer in peers and codec.id_time_ns(msg_id) < cutoff:
                    found.append(entry.name)
                    if len(found) >= limit:
                        return found
    return found


def prune_buckets(
    queue_dir: str, listed: list[str], before: str | None = None, keep: float = BUCKET_KEEP_SECONDS
) -> int:
    """Remove the empty ones of the buckets ``listed`` (those before bucket ``before`` only,
    when given) whose time slice ended more than ``keep`` s ago; returns how many went.

    A drained bucket costs every scan a read of its directory blocks, which ext4 never
    shrinks, so the relay prunes after each scan the buckets the scan found nothing in.
    ``keep`` is more than the age after which a put flushes ``queue/`` whatever it knows
    (``STALE_PUT_NS``), so a bucket a producer believes durable is never removed under it.
    """
    cutoff = time.time_ns() - int(keep * 1e9) - SLOT_NS
    removed = 0
    for bucket in listed:
        if before is not None and bucket >= before:
            break
        if _slot_start_ns(bucket) >= cutoff:
            continue
        try:
            os.rmdir(os.path.join(queue_dir, bucket))
            removed += 1
        except OSError:
            pass  # not empty (the usual case), or gone already: a bucket left is only read again
    return removed


def survey_part(queue_dir: str, listed: list[str], after: str, budget: int) -> list[str]:
    """The next buckets of ``listed`` after bucket ``after`` (from the first, when none is
    left) whose directories hold ``budget`` bytes in all, or just over: at least one.

    A directory's size is what reading it costs (ext4 keeps the blocks of names removed), so
    a survey of the slice costs about the same however the queue is spread over buckets.
    """
    start = bisect.bisect_right(listed, after)
    if start >= len(listed):
        start = 0
    part: list[str] = []
    size = 0
    for bucket in listed[start:]:
        try:
            size += os.stat(os.path.join(queue_dir, bucket)).st_size
        except FileNotFoundError:
            continue
        part.append(bucket)
        if size >= budget:
            break
    return part


def _slot_start_ns(bucket: str) -> int:
    return int(bucket[1:], 16) * SLOT_NS


def clear_sent(sent_dir: str) -> int:
    """Unlink every message in ``sent/`` until a pass finds none; returns how many."""
    removed = 0
    while True:
        with os.scandir(sent_dir) as entries:
            found = [entry.path for entry in entries if entry.name[0] != "."]
        if not found:
            return removed
        removed += remove_all(found)
