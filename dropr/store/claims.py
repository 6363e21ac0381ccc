"""Claims and leases, and every other move between the state directories of one root (a
channel's, or one of its groups': see :mod:`.layout`).

Every move is one ``rename`` of a fixed name, so when several consumer processes (and the
server) work a channel at once, exactly one of them wins each move and the others see
``ENOENT`` and step aside. A claim is a rename from ``queue/`` to ``claimed/``, then the
winner sets the claimed file's mtime to the end of its lease (a batch of renames, then
their leases, each batch one call of ``dropr._moves``): only a file's holder ever sets its
times, so a claimant that lost the race cannot touch the winner's lease. Between
the two steps the file shows an mtime from before its claim, no later than its ctime (the
rename's): a sweeper takes that for a claim being made, not an expired one, and leaves it
alone for :data:`GRACE` seconds. Every way back into ``queue/`` leaves such an old mtime.
Expired claims and delayed retries that are due go back to ``queue/`` by the same kind of
rename, done by whichever process looks first — one sweeper of a root at a time (a
``flock`` of its ``claimed/``): of two sweeping at once, both would find a dead consumer's
claim expired, and the one a moment behind would take back the fresh claim made of it after
the other's sweep had requeued it. So a lease is lost only to its own claimant's overrun.

**A lease is a token**: the lease end in nanoseconds, which the claimant keeps. Only the
claimant whose token the file in ``claimed/`` still carries as its mtime may process, fail
or release it: while the lease runs nobody else can hold the name (only an expired claim is
requeued); after it ran out the file is still the claimant's as long as it was not taken
back (the claimant may win the race with a sweeper). Anything else is :class:`LeaseLost`.

**A shared file** (several messages, a hard link each: see :mod:`.layout`) has one mtime
for all its links, so it serves as one lease only while one claim holds every link of it:
a claim that takes some of its links, not all, gives those names copies of their own
messages first (or, holding half its limit already, gives them back for the next claim to
take whole), and a message failed or released out of a shared file gets its own copy
before its times change. Ingest links a shared file's names in one by one, so a claim leaves
those of one whose names it may not all have seen for a moment (see :func:`_unseen_start`).
The sweep takes the links of a shared file found due together.

:class:`Claims` is what one process remembers between calls: when a root may next hold
something due, and the untried names of its last scan of a deep queue.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from .. import _files
from .._impl import moves, scan
from .layout import ATTEMPTS, CLAIMED, DEAD, DELAYED, PROCESSED, QUEUE

_MAX_ROUNDS = 16
_MTIME_TICK_NS = 20_000_000
"""Longer than the kernel's clock tick (1-10 ms), by which file times move."""
SCAN_WINDOW = 4096
"""The fewest names a claim's scan looks for."""
MAX_SCAN_WINDOW = 65536
"""The most: a scan's names are kept until used or stale, ~5 MB of them at most."""
_SCAN_DEPTH_SHARE = 4
"""A scan of a deep queue looks for a quarter of its names: reading a directory costs what
all its entries cost, whatever the window (a 100,000-deep queue on ext4: 47 ms for 4,096
names, 72 ms for 32,768), so a wider window spreads that over more claims."""
_ENTRY_BYTES = 64
"""What a queue entry adds to its directory's size on ext4 (tmpfs counts 20): a depth guess
that costs one ``lstat``."""
_SCAN_SHARE = 10  # reuse a scan ten times as long as it took: at most ~1/10 of the time scanning
_SEEN_ROOTS = 64
"""Roots whose last scan a process keeps before it drops the stale ones (a deep queue's
holds up to :data:`MAX_SCAN_WINDOW` names)."""
_KEPT_REASONS = 20
_REASON_CHARS = 4000
MAX_LEASE = 7 * 86400.0
"""The longest lease in seconds (a week): longer would be a claim nobody returns."""
GRACE = 30.0
"""Seconds after which a claimed file without its lease yet (its claimant died between the
rename and setting the lease) goes back to the queue."""
LEFTOVER_SECONDS = 3600.0
"""Age after which a hidden file in ``claimed/`` (a copy :func:`own` did not finish: its
process died) is removed by the sweep."""
ARRIVING_SECONDS = 10.0
"""How long a shared file may keep :data:`~dropr._files.ARRIVING_MODE` after its last change
(each link in changes its ctime) before a claim takes it for what an ingest that died left:
its names in the queue are all there will be."""
_OWN_BYTES = 16 << 20
"""How many bytes of copies :func:`own_all` writes before it flushes them."""
_ARRIVING_RETRY = 0.002
"""How soon a claim that left the names of an arriving file looks again, if it waits."""
_TICKS = (1, 1000, 1000_000, 1000_000_000)
"""Timestamp resolutions a file system may have, in nanoseconds: a lease token is what the
file system keeps of the lease end."""


class LeaseLost(Exception):
    """The claim of a message is no longer its claimant's (taken back after its lease, or
    never this claimant's): nothing was changed."""


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


def check_lease(lease: float) -> int:
    """``lease`` seconds in nanoseconds; ValueError unless 0 < lease <= :data:`MAX_LEASE`."""
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_LEASE:
        raise ValueError(f"lease must be a number of seconds above 0 and at most {MAX_LEASE:.0f}, not {lease!r}")
    return max(1, int(lease * 1e9))


class Claims:
    """The claims one process makes on a store's roots (each by its directory).

    ``sweep_interval`` bounds how long it may take to notice other processes' expired
    claims; a claim may use the names an earlier claim's scan saw for ``rescan_interval``
    seconds (or ten times as long as that scan took, in a deep queue).
    """

    def __init__(self, retry: RetryPolicy, sweep_interval: float, rescan_interval: float) -> None:
        self.retry = retry
        self.sweep_interval = sweep_interval
        self.rescan_interval = rescan_interval
        self._next_sweep: dict[str, float] = {}
        self._earliest: dict[str, float] = {}
        self._seen: dict[str, tuple[float, int, list[str]]] = {}
        self._taking: dict[str, threading.Lock] = {}
        self._tick = 0  # the file system's timestamp resolution (ns), learnt at the first claim

    def take(self, root: str, limit: int, lease_ns: int, *, shared: bool = False) -> tuple[list[str], int]:
        """Claim up to ``limit`` queued messages for ``lease_ns`` nanoseconds; their names
        and their lease token. ``shared``: a group's root, whose files other groups may
        hold links of (see :func:`own`).

        Threads of one process take turns on a root, the next going on with the names the
        last one's scan left: claiming at once, each would scan the queue anew and lose most
        renames to the others (100-message claims on a 10,000-deep queue: 12,000 msg/s with
        one thread, 8,000 with four, before they took turns).
        """
        with self._taking.setdefault(root, threading.Lock()):
            return self._take(root, limit, lease_ns, shared)

    def _take(self, root: str, limit: int, lease_ns: int, shared: bool) -> tuple[list[str], int]:
        now_ns = time.time_ns()
        now = now_ns / 1e9
        self.sweep(root, now)
        until_ns = now_ns + lease_ns
        fresh_until, seen_ns, seen = self._seen.pop(root, (0.0, 0, []))
        if now >= fresh_until:
            seen = []
        done = claim(root, limit, until_ns, seen, self._tick, shared=shared, seen_ns=seen_ns)
        self._tick = done.tick
        if done.scanning:
            fresh_until = now + max(self.rescan_interval, _SCAN_SHARE * done.scanning)
        if done.untried:
            if len(self._seen) >= _SEEN_ROOTS:  # other roots' stale scans: memory, not names to try
                self._seen = {key: kept for key, kept in self._seen.items() if kept[0] > now}
            self._seen[root] = (fresh_until, done.scanned_ns, done.untried)
        token = until_ns - until_ns % (self._tick or 1)
        if done.names:
            self.due(root, token / 1e9)
        if done.arriving:
            self.due(root, now + _ARRIVING_RETRY)
        return done.names, token

    def settle(self, root: str, names: list[str], tokens: list[int], state: str) -> list[str | None]:
        """Move each claimed message of ``names`` to ``state`` if its token (``tokens``, in
        order) is still the lease; the new path of each, or None for one whose lease was lost.
        Done already (found in ``state`` with that token) is no error."""
        claimed, target = f"{root}/{CLAIMED}", f"{root}/{state}"  # not os.path.join: a third of a settle's Python
        if state == QUEUE:  # back without a lease: a name sharing its file gets its own first
            for name, token in zip(names, tokens, strict=True):
                path = os.path.join(claimed, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if info.st_nlink > 1 and info.st_mtime_ns == token and own(path):
                    _restore(path, token)
        try:
            moved = moves.settle_files(claimed, target, names, tokens, state == QUEUE)
        except FileNotFoundError:  # the root is gone (its group unsubscribed): nothing is held
            return [None] * len(names)
        if state == QUEUE and any(moved):
            self._seen.pop(root, None)
        paths: list[str | None] = []
        for name, token, ok in zip(names, tokens, moved, strict=True):
            path = f"{target}/{name}"
            settled = ok or _token(path) == (0 if state == QUEUE else token)  # done already: it shows there
            paths.append(path if settled else None)
        return paths

    def fail(self, root: str, name: str, lease_ns: int | None, reason: str, *, shared: bool = False) -> str:
        """Record a failed attempt of message ``name`` — claimed with token ``lease_ns``, or
        queued when None (FileNotFoundError when it is not) —: it waits for its retry, or
        becomes a dead letter. Its new path; LeaseLost for a claim no longer held."""
        if lease_ns is None:
            path = os.path.join(root, QUEUE, name)
            if shared or os.lstat(path).st_nlink > 1:  # out of the queue (no claimant takes it), then its own
                os.rename(path, os.path.join(root, CLAIMED, name))
                path = os.path.join(root, CLAIMED, name)
                own(path)
            os.lstat(path)
        else:
            path = os.path.join(root, CLAIMED, name)
            if _token(path) != lease_ns:
                raise LeaseLost(name)
            own(path)  # its retry time is its own
        try:
            due = record_failure(root, name, path, reason, time.time(), self.retry)
        except FileNotFoundError:
            if lease_ns is None:
                raise
            raise LeaseLost(name) from None
        if due is None:
            return os.path.join(root, DEAD, name)
        self.due(root, due)
        return os.path.join(root, DELAYED, name)

    def due(self, root: str, when: float) -> None:
        """Something in ``root`` becomes due at ``when``: look then, not later."""
        if root in self._next_sweep:
            self._next_sweep[root] = min(self._next_sweep[root], when)
        self._earliest[root] = min(self._earliest.get(root, math.inf), when)

    def forget(self, root: str) -> None:
        """Something arrived in ``root`` that this process did not see: sweep at the next look."""
        self._next_sweep.pop(root, None)
        self._seen.pop(root, None)

    def due_in(self, root: str) -> float:
        """Seconds until the earliest claim or retry of ``root`` known to this process is due
        (``inf`` when none is known)."""
        return self._earliest.get(root, math.inf) - time.time()

    def sweep(self, root: str, now: float | None = None) -> None:
        """Requeue what is due in this root, unless nothing can be due yet."""
        if now is None:
            now = time.time()
        if now < self._next_sweep.get(root, 0.0):
            return
        moved, earliest = requeue_due(root, now)
        self._next_sweep[root] = min(now + self.sweep_interval, earliest)
        self._earliest[root] = earliest
        if moved:
            self._seen.pop(root, None)


_UNLEASED = (0, 0)
"""The times of a file back in the queue: no lease, and older than any ctime."""


def _restore(path: str, token: int) -> None:
    """Give the claimed file at ``path`` its lease ``token`` again (a copy of its own has
    the time it was made), so that its settling goes as its claimant's."""
    try:
        os.utime(path, ns=(token, token), follow_symlinks=False)
    except FileNotFoundError:
        pass


def _token(path: str) -> int | None:
    """The mtime of ``path`` in nanoseconds (a claimed file's lease token, a directory's last
    change); None when gone."""
    try:
        return os.lstat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def process(root: str, name: str) -> str | None:
    """Move the queued (unclaimed) message ``name`` to ``processed/``; its new path, or None
    when it is neither queued nor processed."""
    target = os.path.join(root, PROCESSED, name)
    try:
        os.rename(os.path.join(root, QUEUE, name), target)
    except FileNotFoundError:
        return target if os.path.lexists(target) else None
    return target


def requeue_due(root: str, now: float) -> tuple[int, float]:
    """Return expired claims and due retries of a root to its queue, holding the root's
    sweep lock (see the module's docstring).

    Returns how many went back, and the earliest time a file still waiting becomes due
    (``inf`` when none), so the caller knows when looking again is worth it.
    """
    try:
        lock = os.open(os.path.join(root, CLAIMED), _files.DIR_FLAGS)
    except FileNotFoundError:  # no root (yet, or any more): nothing to sweep
        return 0, math.inf
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _requeue_due(root, now)
    finally:
        os.close(lock)


def _requeue_due(root: str, now: float) -> tuple[int, float]:
    queue = os.path.join(root, QUEUE)
    moved = 0
    earliest = math.inf
    expired: set[int] = set()  # shared files found due: moving one link changes their ctime
    for state in (CLAIMED, DELAYED):
        try:
            entries = os.scandir(os.path.join(root, state))
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    if state == CLAIMED:
                        _remove_leftover(entry, now)
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                    due = stat.st_mtime
                    if state == CLAIMED and stat.st_mtime_ns <= stat.st_ctime_ns and stat.st_ino not in expired:
                        due = stat.st_ctime + GRACE  # being claimed (see the module's docstring)
                    if due <= now and stat.st_nlink > 1:
                        expired.add(stat.st_ino)
                    if due <= now:
                        if stat.st_nlink == 1:  # a shared one keeps other groups' times
                            os.utime(entry.path, ns=_UNLEASED)
                        os.rename(entry.path, os.path.join(queue, entry.name))
                        moved += 1
                    else:
                        earliest = min(earliest, due)
                except FileNotFoundError:
                    continue
    return moved, earliest


def _remove_leftover(entry: os.DirEntry[str], now: float) -> None:
    """Remove a copy that :func:`own` was writing when its process died, once it is
    :data:`LEFTOVER_SECONDS` old (a copy being written is never that old)."""
    try:
        if entry.stat(follow_symlinks=False).st_mtime < now - LEFTOVER_SECONDS:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass


class Claimed(NamedTuple):
    """What :func:`claim` did: the ``names`` claimed; the ``untried`` names of its last scan,
    which began at ``scanned_ns``, for the next claim; the seconds spent ``scanning``; the
    file system's timestamp resolution (``tick``, ns); and whether it left the names of a
    shared file that had more to come (``arriving``: look again in a moment)."""

    names: list[str]
    untried: list[str]
    scanned_ns: int
    scanning: float
    tick: int
    arriving: bool


def claim(
    root: str,
    limit: int,
    until_ns: int,
    seen: list[str],
    tick: int = 0,
    *,
    shared: bool = False,
    seen_ns: int = 0,
) -> Claimed:
    """Move up to ``limit`` queued messages into ``claimed/`` (lease ending ``until_ns``).

    Names are tried in delivery order, first those of ``seen`` (untried names of an earlier
    scan, begun at ``seen_ns``), then those of fresh scans; one lost to another claimant is
    skipped. Scanning a deep queue costs far more than claiming a message, so a scan looks
    further than ``limit`` and the names left untried are returned for the next claim.
    ``tick`` is the file system's timestamp resolution (0: not known yet). With ``shared``
    (a group's root), each claimed file gets an inode of its own before its lease is set
    (:func:`own`).
    """
    if limit == 0:
        return Claimed([], seen, seen_ns, 0.0, tick, False)
    queue = os.path.join(root, QUEUE)
    claimed = os.path.join(root, CLAIMED)
    held: list[str] = []
    names, scanned_ns = seen, seen_ns
    scanning = 0.0
    for _ in range(_MAX_ROUNDS):
        window, full = 0, False
        if not names:
            window = max(2 * (limit - len(held)) + 16, scan_window(queue))
            started, scanned_ns = time.monotonic(), time.time_ns()
            try:
                names = consistent_scan(queue, window, tick)
                full = len(names) == window  # more may lie past it, whatever is left out
                names = _whole_files(queue, names, window)
            except FileNotFoundError:
                break
            finally:
                scanning += time.monotonic() - started
        index = 0
        try:
            while index < len(names) and len(held) < limit:
                want = limit - len(held)
                arriving = False
                if not shared:
                    changed = scanned_ns - max(tick, _MTIME_TICK_NS)
                    end, arriving = _whole_files_end(queue, names, index, want, len(held), changed)
                    want = end - index
                    if not want:  # the next file does not fit, or has more to come: the next claim takes it whole
                        untried = [] if arriving else names[index:]
                        return Claimed(held, untried, scanned_ns, scanning, tick, arriving)
                taken, index = moves.rename_files(queue, claimed, names, index, want)
                back: list[str] = []
                back_arriving = False
                if shared:
                    taken = [name for name, kept in zip(taken, own_all(claimed, taken), strict=True) if kept]
                else:
                    taken, back, back_arriving = own_split(root, taken, len(held), limit)
                taken = moves.lease_files(claimed, taken, until_ns)
                if taken and not tick:
                    tick = _resolution(os.path.join(claimed, taken[0]), until_ns)
                held += taken
                if back:  # the claim ends short of its limit; the next takes these first, whole
                    untried = [] if back_arriving else back + names[index:]  # a new scan once a file is in
                    return Claimed(held, untried, scanned_ns, scanning, tick, back_arriving)
                if arriving:  # a scan after the file's last name is in sees them all
                    return Claimed(held, [], scanned_ns, scanning, tick, True)
        except FileNotFoundError:  # the root went away meanwhile (its group unsubscribed)
            break
        if len(held) == limit:
            return Claimed(held, names[index:], scanned_ns, scanning, tick, False)
        if window and not full:
            break
        names = []
    return Claimed(held, [], scanned_ns, scanning, tick, False)


def own(path: str) -> bool:
    """Give the message file at ``path`` an inode of its own when other links share it
    (ingest links each message into every group's queue, and the messages of a shared file
    under their names); False when it is gone.

    A lease, a retry time, are the file's mtime, which every link of it shows: one group's
    claim would make another's lease look lost, and so would one claimant's lease on a
    message of a shared file the others of which another holds. So the name gets a copy of
    its own message — synced, then renamed over the link — before its times are set, and
    only the last link taken keeps the file ingest wrote. Nobody else touches the name
    meanwhile: the caller holds it, claimed.
    """
    directory, name = os.path.split(path)
    return own_all(directory, [name])[0]


def own_all(directory: str, names: list[str]) -> list[bool]:
    """:func:`own` of each of ``names`` in ``directory``, the copies made durable together
    (:func:`~dropr._files.replace_all`, one flush for every :data:`_OWN_BYTES` of them, not
    one each): a group's claim copies each message it takes."""
    owned: list[bool] = []
    paths: list[str] = []
    for name, counts in zip(names, moves.link_counts(directory, names), strict=True):
        owned.append(counts is not None)
        if counts is not None and counts[1] > 1:
            paths.append(os.path.join(directory, name))
    gone: set[str] = set()
    start = 0
    while start < len(paths):
        contents, count = moves.read_files(paths[start:], _OWN_BYTES)
        batch, start = paths[start : start + count], start + count
        present = {path: data for path, data in zip(batch, contents, strict=True) if data is not None}
        _files.replace_all(list(present), list(present.values()))
        gone.update(os.path.basename(path) for path in batch if path not in present)
    return [ok and name not in gone for ok, name in zip(owned, names, strict=True)]


class Split(NamedTuple):
    """What :func:`own_split` kept of a claim's names, and gave back to the queue; whether
    what it gave back holds a file still arriving (look again in a moment, with a new scan)."""

    kept: list[str]
    back: list[str]
    arriving: bool


def own_split(root: str, names: list[str], held: int, limit: int) -> Split:
    """``names``, just claimed into ``claimed/`` by a claim of ``limit`` that held ``held``
    before them, each a file of its own unless every link of its file is among them (a
    shared file claimed whole keeps one inode and one lease for all its messages). A claim
    whose last shared file is not all among them (the claim reached its limit, or the scan
    ended, inside it) gives back that file's names rather than copying them, the next claim
    taking them whole — unless it would then be far short of its limit (:func:`_short`), as
    :func:`_whole_files_end` decides before the names are taken. So does it with the names
    of a file that ingest is still linking in (:func:`_arriving`), wherever they lie among
    them: copying what it saw of that file would split it, the rest a moment away."""
    claimed = os.path.join(root, CLAIMED)
    links: dict[int, list[str]] = {}
    nlinks: dict[int, int] = {}
    inode: dict[str, int] = {}
    kept: list[str] = []
    for name, counts in zip(names, moves.link_counts(claimed, names), strict=True):
        if counts is None:
            continue
        kept.append(name)
        ino, nlink = counts
        if nlink > 1:
            links.setdefault(ino, []).append(name)
            nlinks[ino] = nlink
            inode[name] = ino
    split = {ino for ino, linked in links.items() if nlinks[ino] > len(linked)}
    if not split:
        return Split(kept, [], False)
    arriving = {ino for ino in split if _arriving(os.path.join(claimed, links[ino][0]))}
    giving = set(arriving)
    last = inode.get(kept[-1]) if kept else None
    if last in split and last not in arriving:
        staying = sum(inode.get(name) not in arriving for name in kept) - len(links[last])
        if not _short(held + staying, limit):
            giving.add(last)
    back = [name for name in kept if inode.get(name) in giving]
    for name in back:
        os.rename(os.path.join(claimed, name), os.path.join(root, QUEUE, name))
    kept = [name for name in kept if inode.get(name) not in giving]
    copying = [name for name in kept if inode.get(name) in split]
    lost = {name for name, ok in zip(copying, own_all(claimed, copying), strict=True) if not ok}
    return Split([name for name in kept if name not in lost], back, bool(arriving))


def _whole_files_end(
    queue: str, names: list[str], start: int, want: int, held: int, scanned_after: int
) -> tuple[int, bool]:
    """Where a claim holding ``held`` messages, of ``want`` more of the queued ``names`` from
    ``start`` on, stops, so as not to end inside a shared file: ``start + want``, unless the
    name there shares its file with the names just before it — then before those, the next
    claim taking the file whole. A claim that would then be far short of its limit
    (:func:`_short`; one holding nothing, always) takes the file in part instead.
    Nor does it end with the names of a file that may have more in the queue than the scan
    saw (see :func:`_unseen_start`): it stops before them, and says so (True). A file's names
    are consecutive in delivery order (one request's messages), so this costs an ``lstat``
    of the names of the one or two files at the end."""
    end = min(start + want, len(names))
    if end < len(names):
        file = _shared_inode(os.path.join(queue, names[end]))
        if file is not None:
            cut = _file_start(queue, names, start, end, file)
            if _short(held + cut - start, held + want):
                return end, False
            end = cut
    if end == start:
        return end, False
    unseen = _unseen_start(queue, names, start, end, scanned_after)
    return (end, False) if unseen is None else (unseen, True)


def _short(count: int, limit: int) -> bool:
    """Whether a claim of ``count`` messages is so far short of its ``limit`` (under half)
    that it takes a shared file in part, copying the messages it takes out of it, rather
    than stop before the file: files hold one queue's messages of a request, and a claim of
    three from one message and a file of six should not end with one."""
    return 2 * count < limit


def _whole_files(queue: str, names: list[str], window: int) -> list[str]:
    """The ``names`` of a scan of up to ``window`` names, less those of the shared file it
    ends with when it is full: more of that file's names may lie past the window, and a
    claim taking the rest of the scan would split it (unless it is all the scan holds)."""
    if len(names) < window:
        return names
    file = _shared_inode(os.path.join(queue, names[-1]))
    if file is None:
        return names
    return names[: _file_start(queue, names, 0, len(names), file)] or names


def _file_start(queue: str, names: list[str], start: int, end: int, file: int) -> int:
    """Where the names of ``file`` (an inode) that end just before ``names[end]`` begin, not
    before ``start``."""
    while end > start and _shared_inode(os.path.join(queue, names[end - 1])) == file:
        end -= 1
    return end


def _unseen_start(queue: str, names: list[str], start: int, end: int, scanned_after: int) -> int | None:
    """Where the names of the shared file that ``names[start:end]`` ends with begin, when it
    may have names in the queue that the scan did not see: more links than those names, and
    ingest still linking them in (:data:`~dropr._files.ARRIVING_MODE`, for at most
    :data:`ARRIVING_SECONDS`), or a link (each changes the file's ctime) newer than
    ``scanned_after`` (ns: the scan's start, less a clock tick); None when it has none.
    Taking the names seen would split the file, its names to come a moment later."""
    try:
        info = os.lstat(os.path.join(queue, names[end - 1]))
    except FileNotFoundError:
        return None
    if info.st_nlink < 2:
        return None
    if not _still_arriving(info, info.st_ctime) and info.st_ctime_ns <= scanned_after:
        return None
    first = _file_start(queue, names, start, end, info.st_ino)
    return first if info.st_nlink > end - first else None


def _arriving(path: str) -> bool:
    """Whether the file at ``path``, just claimed, is a shared file that ingest is still
    linking in. The claim's rename changed its ctime, so its age is told by its mtime: when
    ingest wrote it, which no link changes and no lease has touched yet."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return _still_arriving(info, info.st_mtime)


def _still_arriving(info: os.stat_result, changed: float) -> bool:
    """Whether a file with ``info``, last ``changed`` then (seconds since the epoch), is a
    shared file that ingest is still linking in: :data:`~dropr._files.ARRIVING_MODE`, for at
    most :data:`ARRIVING_SECONDS` (an older one is what an ingest that died left)."""
    return info.st_mode & 0o7777 == _files.ARRIVING_MODE and changed > time.time() - ARRIVING_SECONDS


def _shared_inode(path: str) -> int | None:
    """The inode of the file at ``path`` when other links share it; None when not, or gone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_ino if info.st_nlink > 1 else None


def _resolution(path: str, until_ns: int) -> int:
    """The file system's timestamp resolution in nanoseconds, from a file whose mtime was
    just set to ``until_ns`` (1 where it keeps nanoseconds, as ext4, xfs, btrfs, tmpfs do)."""
    stored = _token(path)
    return next((tick for tick in _TICKS if stored == until_ns - until_ns % tick), 1)


def scan_window(queue: str) -> int:
    """How many names a claim's scan of ``queue`` looks for: :data:`SCAN_WINDOW`, or a
    :data:`_SCAN_DEPTH_SHARE` part of a deeper queue (guessed from the directory's size; a
    directory that once held more keeps its size on ext4, and then the scan just finds
    fewer), at most :data:`MAX_SCAN_WINDOW`."""
    try:
        size = os.lstat(queue).st_size
    except FileNotFoundError:
        return SCAN_WINDOW
    return min(MAX_SCAN_WINDOW, max(SCAN_WINDOW, size // (_ENTRY_BYTES * _SCAN_DEPTH_SHARE)))


def consistent_scan(queue: str, window: int, tick: int = 0) -> list[str]:
    """The first ``window`` names of ``queue`` in delivery order, none missing before the last.

    A readdir pass sees every name present for the whole pass, but of two names that arrive
    during it, it may miss the earlier and see the later (a directory is read in hash order,
    not name order), and a claimant would take the later first. So a second pass fills in
    what the first missed, up to the first's last name: what arrived during the second pass
    sorts after it, unless its priority or an old id puts it ahead — an arrival as
    concurrent as can be. The second pass is left out only when the directory's mtime shows
    that nothing changed during the first: the same after it as before, and older by more
    than a clock tick of the file system's (``tick`` ns, the timestamp resolution, at least
    :data:`_MTIME_TICK_NS`: a change within the tick of the one before may leave the mtime as
    it was). A full window needs the second pass as much as a short one: the names that
    arrived during the pass may be what filled it.
    """
    before = _token(queue)
    started = time.time_ns()
    names: list[str] = scan.scan(queue, window)
    if not names:
        return names
    if before is not None and before == _token(queue) and started - before > max(tick, _MTIME_TICK_NS):
        return names
    last = names[-1]
    seen = set(names)
    missed = [name for name in scan.scan(queue, window) if name < last and name not in seen]
    return sorted(names + missed)[:window] if missed else names


def read_attempts(root: str, name: str) -> tuple[int, list[str]]:
    """``(attempts, reasons)`` recorded for message ``name`` (``(0, [])`` when none)."""
    try:
        with open(os.path.join(root, ATTEMPTS, name), "rb") as file:
            record = json.load(file)
        return int(record["attempts"]), [str(r) for r in record["reasons"]]
    except FileNotFoundError:
        return 0, []
    except (ValueError, KeyError, TypeError):
        return 0, ["(unreadable attempts record)"]


def record_failure(root: str, name: str, path: str, reason: str, now: float, policy: RetryPolicy) -> float | None:
    """Record a failed attempt of the message at ``path``, then delay it or make it dead.

    The record is written first, so a crash between the two steps keeps the count. Returns
    the time of the next try, or None when the message went to the dead letters.
    """
    attempts, reasons = read_attempts(root, name)
    attempts += 1
    reasons = (reasons + [reason[-_REASON_CHARS:]])[-_KEPT_REASONS:]
    record = json.dumps({"attempts": attempts, "reasons": reasons}).encode("utf-8")
    _files.publish(os.path.join(root, ATTEMPTS, name), record, replace=True)
    if attempts >= policy.max_attempts:
        os.rename(path, os.path.join(root, DEAD, name))
        return None
    not_before = now + policy.wait(attempts)
    os.utime(path, (not_before, not_before))
    os.rename(path, os.path.join(root, DELAYED, name))
    return not_before


def requeue_dead(root: str, names: list[str]) -> int:
    """Give dead letters a fresh start in the queue; their failure record is dropped."""
    moved = 0
    for name in names:
        _files.remove(os.path.join(root, ATTEMPTS, name))
        try:
            os.rename(os.path.join(root, DEAD, name), os.path.join(root, QUEUE, name))
        except FileNotFoundError:
            continue
        moved += 1
    return moved
