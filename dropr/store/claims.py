"""Claims and leases, and every other move between the state directories of one channel.

Every move is one ``rename`` of a fixed name, so when several consumer processes (and the
server) work a channel at once, exactly one of them wins each move and the others see
``ENOENT`` and step aside. A claim is a rename from ``queue/`` to ``claimed/``; the claimed
file's mtime is the end of its lease, set *before* the rename, so a claimed file never
shows an expired lease it does not have. Expired claims and delayed retries that are due
go back to ``queue/`` by the same kind of rename, done by whichever process looks first.
:class:`Claims` is what one process remembers between calls: when a channel may next hold
something due, and the untried names of its last scan of a deep queue.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from .. import _files
from .._impl import scan
from .layout import ATTEMPTS, CLAIMED, DEAD, DELAYED, PROCESSED, QUEUE

_MAX_ROUNDS = 16
SCAN_WINDOW = 4096
_SCAN_SHARE = 10  # reuse a scan ten times as long as it took: at most ~1/10 of the time scanning
_KEPT_REASONS = 20
_REASON_CHARS = 4000


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing message is retried and how long it waits in between.

    The n-th failure delays the next try by ``delay * 2**(n-1)`` seconds, at most
    ``max_delay``; the ``max_attempts``-th failure makes it a dead letter.
    """

    max_attempts: int = 5
    delay: float = 10.0
    max_delay: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, not {self.max_attempts}")
        if not (self.delay >= 0 and self.max_delay >= 0):
            raise ValueError("retry delays must be zero or more")

    def wait(self, attempts: int) -> float:
        return float(min(self.delay * 2 ** min(attempts - 1, 64), self.max_delay))


class Claims:
    """The claims one process makes on a store's channels (each channel by its directory).

    ``sweep_interval`` bounds how long it may take to notice other processes' expired
    claims; a claim may use the names an earlier claim's scan saw for ``rescan_interval``
    seconds (or ten times as long as that scan took, in a deep queue).
    """

    def __init__(self, retry: RetryPolicy, sweep_interval: float, rescan_interval: float) -> None:
        self.retry = retry
        self.sweep_interval = sweep_interval
        self.rescan_interval = rescan_interval
        self._next_sweep: dict[str, float] = {}
        self._seen: dict[str, tuple[float, list[str]]] = {}

    def take(self, channel_dir: str, limit: int, lease: float) -> list[str]:
        """Claim up to ``limit`` queued messages for ``lease`` seconds; their names."""
        now = time.time()
        self.sweep(channel_dir, now)
        until = now + lease
        fresh_until, seen = self._seen.pop(channel_dir, (0.0, []))
        if now >= fresh_until:
            seen = []
        names, untried, scanning = claim(channel_dir, limit, until, seen)
        if scanning:
            fresh_until = now + max(self.rescan_interval, _SCAN_SHARE * scanning)
        if untried:
            self._seen[channel_dir] = (fresh_until, untried)
        if names:
            self._next_sweep[channel_dir] = min(self._next_sweep[channel_dir], until)
        return names

    def release(self, channel_dir: str, name: str, path: str) -> str | None:
        """Return the claimed message at ``path`` to the queue at once; its new path, or
        None when it is no longer claimed."""
        target = os.path.join(channel_dir, QUEUE, name)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        self._seen.pop(channel_dir, None)
        return target

    def fail(self, channel_dir: str, name: str, path: str, reason: str) -> str:
        """Record a failed attempt of the message at ``path`` (FileNotFoundError when it is
        gone): it waits for its retry, or becomes a dead letter. Its new path."""
        due = record_failure(channel_dir, name, path, reason, time.time(), self.retry)
        if due is None:
            return os.path.join(channel_dir, DEAD, name)
        if channel_dir in self._next_sweep:
            self._next_sweep[channel_dir] = min(self._next_sweep[channel_dir], due)
        return os.path.join(channel_dir, DELAYED, name)

    def sweep(self, channel_dir: str, now: float | None = None) -> None:
        """Requeue what is due in this channel, unless nothing can be due yet."""
        if now is None:
            now = time.time()
        if now < self._next_sweep.get(channel_dir, 0.0):
            return
        moved, earliest = requeue_due(channel_dir, now)
        self._next_sweep[channel_dir] = min(now + self.sweep_interval, earliest)
        if moved:
            self._seen.pop(channel_dir, None)


def process(channel_dir: str, name: str, path: str) -> str | None:
    """Move the message at ``path`` to ``processed/``; its new path, or None when it is in
    neither ``path`` nor the queue (a lease that ran out sent it back there) nor processed."""
    target = os.path.join(channel_dir, PROCESSED, name)
    for source in (path, os.path.join(channel_dir, QUEUE, name)):
        try:
            os.rename(source, target)
        except FileNotFoundError:
            continue
        return target
    return target if os.path.lexists(target) else None


def requeue_due(channel_dir: str, now: float) -> tuple[int, float]:
    """Return expired claims and due retries of a channel to its queue.

    Returns how many went back, and the earliest time a file still waiting becomes due
    (``inf`` when none), so the caller knows when looking again is worth it.
    """
    queue = os.path.join(channel_dir, QUEUE)
    moved = 0
    earliest = float("inf")
    for state in (CLAIMED, DELAYED):
        try:
            entries = os.scandir(os.path.join(channel_dir, state))
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    due = entry.stat(follow_symlinks=False).st_mtime
                    if due <= now:
                        os.rename(entry.path, os.path.join(queue, entry.name))
                        moved += 1
                    else:
                        earliest = min(earliest, due)
                except FileNotFoundError:
                    continue
    return moved, earliest


def claim(channel_dir: str, limit: int, until: float, seen: list[str]) -> tuple[list[str], list[str], float]:
    """Move up to ``limit`` queued messages into ``claimed/`` (lease ending ``until``).

    Names are tried in delivery order, first those of ``seen`` (untried names of an earlier
    scan), then those of fresh scans; one lost to another claimant is skipped. Scanning a
    deep queue costs far more than claiming a message, so a scan looks further than
    ``limit`` and the names left untried are returned for the next claim. Returns
    ``(claimed, untried, seconds spent scanning)``.
    """
    if limit == 0:
        return [], seen, 0.0
    queue = os.path.join(channel_dir, QUEUE)
    queue_slash = queue + os.sep
    claimed_slash = os.path.join(channel_dir, CLAIMED) + os.sep
    held: list[str] = []
    times = (until, until)
    names = seen
    scanning = 0.0
    for _ in range(_MAX_ROUNDS):
        window = 0
        if not names:
            window = max(2 * (limit - len(held)) + 16, SCAN_WINDOW)
            started = time.monotonic()
            try:
                names = consistent_scan(queue, window)
            except FileNotFoundError:
                break
            finally:
                scanning += time.monotonic() - started
        for index, name in enumerate(names):
            source = queue_slash + name
            try:
                os.utime(source, times)
                os.rename(source, claimed_slash + name)
            except FileNotFoundError:
                continue
            held.append(name)
            if len(held) == limit:
                return held, names[index + 1 :], scanning
        if window and len(names) < window:
            break
        names = []
    return held, [], scanning


def consistent_scan(queue: str, window: int) -> list[str]:
    """The first ``window`` names of ``queue`` in delivery order, none missing before the last.

    A readdir pass sees every name present for the whole pass, but of two names that arrive
    during it, it may miss the earlier and see the later (a directory is read in hash order,
    not name order), and a claimant would take the later first. So after a pass that reached
    the end of the queue, a second pass fills in what the first missed, up to the first's
    last name: what arrived during the second pass sorts after it, unless its priority or an
    old id puts it ahead — an arrival as concurrent as can be. (The directory's mtime cannot
    tell whether the pass needs it: it moves in clock ticks of milliseconds.) A full window
    needs no second pass: what arrives during it sorts after the window.
    """
    names: list[str] = scan.scan(queue, window)
    if len(names) >= window or not names:
        return names
    last = names[-1]
    seen = set(names)
    missed = [name for name in scan.scan(queue, window) if name < last and name not in seen]
    return sorted(names + missed) if missed else names


def read_attempts(channel_dir: str, name: str) -> tuple[int, list[str]]:
    """``(attempts, reasons)`` recorded for message ``name`` (``(0, [])`` when none)."""
    try:
        with open(os.path.join(channel_dir, ATTEMPTS, name), "rb") as file:
            record = json.load(file)
        return int(record["attempts"]), [str(r) for r in record["reasons"]]
    except FileNotFoundError:
        return 0, []
    except (ValueError, KeyError, TypeError):
        return 0, ["(unreadable attempts record)"]


def record_failure(
    channel_dir: str, name: str, path: str, reason: str, now: float, policy: RetryPolicy
) -> float | None:
    """Record a failed attempt of the message at ``path``, then delay it or make it dead.

    The record is written first, so a crash between the two steps keeps the count. Returns
    the time of the next try, or None when the message went to the dead letters.
    """
    attempts, reasons = read_attempts(channel_dir, name)
    attempts += 1
    reasons = (reasons + [reason[-_REASON_CHARS:]])[-_KEPT_REASONS:]
    record = json.dumps({"attempts": attempts, "reasons": reasons}).encode("utf-8")
    _files.publish(os.path.join(channel_dir, ATTEMPTS, name), record, replace=True)
    if attempts >= policy.max_attempts:
        os.rename(path, os.path.join(channel_dir, DEAD, name))
        return None
    not_before = now + policy.wait(attempts)
    os.utime(path, (not_before, not_before))
    os.rename(path, os.path.join(channel_dir, DELAYED, name))
    return not_before


def requeue_dead(channel_dir: str, names: list[str]) -> int:
    """Give dead letters a fresh start in the queue; their failure record is dropped."""
    moved = 0
    for name in names:
        _files.remove(os.path.join(channel_dir, ATTEMPTS, name))
        try:
            os.rename(os.path.join(channel_dir, DEAD, name), os.path.join(channel_dir, QUEUE, name))
        except FileNotFoundError:
            continue
        moved += 1
    return moved
