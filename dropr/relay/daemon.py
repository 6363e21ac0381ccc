"""The relay worker: forwards a spool's queue to its peers until stopped.

Why one asyncio loop (uvloop when installed): everything the relay waits on is a file
descriptor or a timer — the inotify descriptor of ``queue/`` and its buckets, libcurl's
sockets and timeouts (``pycurl.AsyncCurlMulti`` drives the multi socket API: no polling),
backoff expiries and signals — so a single thread sleeps until one of them fires and wakes
within microseconds of a put. No lock guards the relay's state: only the loop thread touches
it.

Why scans may run on a thread of their own: a scan is a readdir pass in C over the queue's
first buckets (a bucket holds what was put in 4.3 s, which can be 100k names), and the event
loop must keep libcurl's transfers going meanwhile. After each scan the buckets before its
first name that are empty are removed, so drained buckets are not read again. A short scan
runs inline instead (the scan policy says which, see ``policy``). Only one scan runs at a
time. A name acknowledged (moved to ``sent/``) or failed while a threaded scan was reading
could still come back from it: such names are remembered until that scan ends and dropped
from its result, so they are not sent twice. Acknowledged files are renamed into ``sent/``
by a few remover threads; their names stay held until moved, so a scan started meanwhile
skips them. Without a retention, a sweeper thread unlinks what is in ``sent/``, several
files at once: an unlink can wait a fifth of a millisecond for the disk (a file system that
discards freed blocks at once), a rename does not, so deleting stays off the relay's path.
Blocking file work that need not be ordered with scans — the local transport's ingest and
the periodic chores — runs on one worker thread. libcurl reads each message file on the loop
thread, one after the other, and a deep queue's files were written long ago and may have left
the page cache, so the batches of a deep queue are prefetched (``posix_fadvise`` WILLNEED on
a thread of their own) while the batches before them are sent.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import signal
import time
import urllib.parse
from collections.abc import Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import names, protocol
from .. import spool as _spool
from .._impl import codec, scan
from ..errors import SpoolError
from ..protocol import Acks, PeerFailure
from . import batches, housekeeping, inotify, lock
from .backoff import Backoff
from .batches import Entry
from .config import RelayConfig
from .policy import Scanned, ScanPlan, ScanPolicy
from .transport import Transport

log = logging.getLogger("dropr.relay")

ONCE_ATTEMPTS = 3
"""With ``--once``, a peer failing this many times in a row is given up for the run."""
CHORE_SECONDS = 60.0
REMOVERS = 4
"""Threads removing acknowledged files from the queue."""
TMP_CHORE_SECONDS = 600.0
_MISSING = (protocol.RETRY, "missing from the answer")


class Peer:
    """One destination: its transport and where the relay stands with it."""

    __slots__ = ("backoff", "field", "gave_up", "inflight", "news", "pending", "problem", "transport", "url")

    def __init__(self, field: str, url: str, transport: Transport | None, problem: str, backoff: Backoff):
        self.field = field
        self.url = url
        self.transport = transport
        self.problem = problem
        self.backoff = backoff
        self.pending: collections.deque[list[Entry]] = collections.deque()
        self.inflight = 0
        self.news = True
        self.gave_up = False


class Relay:
    """Forwards ``spool``'s queue as ``config`` says; :meth:`run` returns the exit status."""

    def __init__(self, config: RelayConfig, spool: _spool.Spool) -> None:
        self.config = config
        self.spool = spool
        self.client = spool.client_id
        self.delivered = 0
        self.failed = 0
        self._peers: dict[str, Peer] = {}
        self._held: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._policy = ScanPolicy(config, self._peers, self._held)
        self._stopping = False
        self._signalled = False
        self._crash: BaseException | None = None
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay")
        self._scanner = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-scan")
        self._remover = ThreadPoolExecutor(REMOVERS, thread_name_prefix="dropr-relay-remove")
        self._sweeper = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-sweep")
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-prefetch")
        self._sweeping = False
        self._scan: asyncio.Future[Scanned] | None = None
        self._finished: set[str] = set()
        self._multi: Any = None
        self._watch: inotify.Watch | None = None
        self._due = {"tmp": 0.0, "sent": 0.0, "expire": 0.0}

    def stop(self) -> None:
        """Finish the requests in flight, send nothing new, and return from :meth:`run`."""
        if not self._stopping:
            log.info("stopping: finishing the requests in flight")
        self._stopping = self._signalled = True
        self._wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self._watch = inotify.watch_queue(self.spool.queue_dir)
        if self._watch is not None:
            loop.add_reader(self._watch.fd, self._on_events)
        log.info("relaying %s as client %s", self.spool.path, self.client)
        try:
            while not self._stopping:
                self._wake.clear()
                if self._crash is not None:
                    raise self._crash
                now = time.monotonic()
                self._chores(now)
                self._cycle(now)
                if self.config.once and self._drained(now):
                    break
                await self._sleep(min(self._policy.due, *self._due.values()) - now)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._scan is not None:
                await asyncio.wait([self._scan])
            if self._crash is not None:
                raise self._crash
        finally:
            self._stopping = True
            await self._close(loop)
        gave_up = [peer.url for peer in self._peers.values() if peer.gave_up]
        log.info("relay stopped: %d delivered, %d failed", self.delivered, self.failed)
        if self.config.once and not self._signalled and (self.failed or gave_up):
            return 1
        return 0

    async def _sleep(self, timeout: float) -> None:
        handle = asyncio.get_running_loop().call_later(max(0.0, timeout), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()

    async def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watch is not None:
            loop.remove_reader(self._watch.fd)
            self._watch.close()
        for peer in self._peers.values():
            if peer.transport is not None:
                peer.transport.close()
        if self._multi is not None:
            await self._multi.aclose()
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True)
        self._scanner.shutdown(wait=True)
        self._remover.shutdown(wait=True)
        if not self.config.keep_sent_minutes:
            self._sweeper.submit(housekeeping.clear_sent, self.spool.sent_dir)
        self._sweeper.shutdown(wait=True)

    # -- news ------------------------------------------------------------------------

    def _on_events(self) -> None:
        assert self._watch is not None
        names = self._watch.read()
        if names is None:
            self._policy.rescan()
        else:
            self._arrived(names)
        self._wake.set()

    def _arrived(self, names: list[str]) -> None:
        """Marks the known peers of newly queued ``names`` as having news, makes others known."""
        peers = self._peers
        for name in names:
            try:
                field = codec.parse_spool_name(name)[2]
            except ValueError:
                continue
            peer = peers.get(field)
            if peer is not None:
                peer.news = True
            else:
                self._add_peer(field)

    # -- the cycle -------------------------------------------------------------------

    def _cycle(self, now: float) -> None:
        plan = self._policy.plan(now)
        if plan is None:
            return
        if plan.inline:
            self._scanned(plan, self._timed_scan(plan))
        else:
            self._scan = asyncio.get_running_loop().run_in_executor(self._scanner, self._timed_scan, plan)
            self._scan.add_done_callback(functools.partial(self._scan_done, plan))

    def _timed_scan(self, plan: ScanPlan) -> Scanned:
        """Scans the queue from its head, or surveys the buckets after ``plan.survey_after``."""
        started = time.monotonic()
        queue_dir = self.spool.queue_dir
        listed = scan.buckets(queue_dir)
        if plan.survey_after is None:
            names = scan.scan_queue(queue_dir, plan.limit, plan.skip, listed)
            housekeeping.prune_buckets(queue_dir, listed, names[0][: codec.BUCKET_LEN] if names else None)
            return Scanned(names, time.monotonic() - started, None)
        part = housekeeping.survey_part(queue_dir, listed, plan.survey_after, self.config.survey_bytes)
        names = scan.scan_queue(queue_dir, plan.limit, plan.skip, part)
        last = part[-1] if part and part[-1] != listed[-1] else ""
        return Scanned(names, time.monotonic() - started, last)

    def _scan_done(self, plan: ScanPlan, done: asyncio.Future[Scanned]) -> None:
        self._scan = None
        finished, self._finished = self._finished, set()
        self._wake.set()
        if done.cancelled() or self._stopping:
            return
        try:
            self._scanned(plan, done.result(), finished)
        except Exception as exc:
            self._crash = exc

    def _scanned(self, plan: ScanPlan, result: Scanned, finished: Collection[str] = ()) -> None:
        names = self._policy.scanned(plan, result, time.monotonic(), finished)
        if plan.survey_after is None:
            self._dispatch(names)
        else:
            self._arrived(names)

    def _dispatch(self, names: list[str]) -> None:
        groups: dict[Peer, list[Entry]] = {}
        max_age = self.config.max_age_minutes * 60
        cutoff = time.time_ns() - int(max_age * 1e9) if max_age else 0
        for name in names:
            try:
                priority, msg_id, peer_field, channel, size, crc = codec.parse_spool_name(name)
            except ValueError:
                self._fail(name, "not a message name")
                continue
            if codec.id_time_ns(msg_id) < cutoff:
                self._fail(name, f"expired: queued for more than {self.config.max_age_minutes:g} minutes")
                continue
            peer = self._peers.get(peer_field) or self._add_peer(peer_field)
            if peer.problem:
                self._fail(name, peer.problem)
                continue
            if channel[0] == "~":
                try:
                    self.spool.resolve(channel)
                except (OSError, ValueError) as exc:
                    self._fail(name, f"the text of channel {channel} is missing: {exc}")
                    continue
            groups.setdefault(peer, []).append(Entry(name, msg_id, priority, channel, size, crc))
        locate = self.spool.queued_path
        for peer, entries in groups.items():
            for batch in batches.cut(entries, self.config.batch_count, self.config.batch_bytes):
                peer.pending.append(batch)
                self._held.update(entry.name for entry in batch)
                if self._policy.deep:
                    self._prefetcher.submit(_prefetch, [locate(entry.name) for entry in batch])
            self._pump(peer)

    def _add_peer(self, field: str) -> Peer:
        transport: Transport | None = None
        problem = ""
        url = field
        try:
            url = names.check_peer(self.spool.resolve(field))
            transport = self._transport(url)
        except (OSError, ValueError) as exc:
            problem = f"unusable peer {url}: {exc}"
        peer = Peer(
            field, url, transport, problem, Backoff(self.config.backoff_min_seconds, self.config.backoff_max_seconds)
        )
        self._peers[field] = peer
        return peer

    def _transport(self, url: str) -> Transport:
        locate = self.spool.queued_path
        if urllib.parse.urlsplit(url).scheme == "file":
            from .local import LocalTransport

            return LocalTransport(url, self._executor, client=self.client, locate=locate, resolve=self.spool.resolve)
        if self._multi is None:
            import pycurl

            self._multi = pycurl.AsyncCurlMulti()
        from .http import HttpTransport

        return HttpTransport(
            url,
            self._multi,
            self.config.peer(url),
            client=self.client,
            locate=locate,
            resolve=self.spool.resolve,
            timeout=self.config.timeout_seconds,
            connect_timeout=self.config.connect_timeout_seconds,
        )

    # -- requests --------------------------------------------------------------------

    def _pump(self, peer: Peer) -> None:
        while peer.pending and peer.inflight < self.config.parallel and not self._stopping:
            peer.inflight += 1
            self._spawn(self._deliver(peer, peer.pending.popleft()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, peer: Peer, batch: list[Entry]) -> None:
        assert peer.transport is not None
        started = time.monotonic()
        acks: Acks | None = None
        try:
            acks = await peer.transport.send(batch)
        except PeerFailure as exc:
            self._peer_failed(peer, str(exc))
        except Exception as exc:
            self._crash = exc
        acknowledged: list[str] = []
        try:
            if acks is not None:
                acknowledged = self._answer(peer, batch, acks, time.monotonic() - started)
                await self._remove(acknowledged)
        except Exception as exc:
            self._crash = exc
        finally:
            peer.inflight -= 1
            self._held.difference_update(entry.name for entry in batch)
            if self._scan is not None:
                self._finished.update(acknowledged)
            if not peer.pending:
                peer.news = True
            self._pump(peer)
            self._wake.set()

    def _answer(self, peer: Peer, batch: list[Entry], acks: Acks, seconds: float) -> list[str]:
        """Counts the peer's answer and fails the rejected; returns the acknowledged names."""
        counts: collections.Counter[str] = collections.Counter()
        acknowledged = []
        for entry in batch:
            status, reason = acks.get(entry.id, _MISSING)
            counts[status] += 1
            if status in protocol.ACKNOWLEDGED:
                acknowledged.append(entry.name)
            elif status == protocol.REJECTED:
                self._fail(entry.name, reason or "rejected by the peer")
        self.delivered += len(acknowledged)
        log.debug("%s: %d sent in %.3f s: %s", peer.url, len(batch), seconds, dict(counts))
        retry = len(batch) - len(acknowledged) - counts[protocol.REJECTED]
        if retry:
            self._peer_failed(peer, f"{retry} of {len(batch)} messages to be retried")
        elif peer.backoff.failures:
            log.info("%s: delivering again after %d failures", peer.url, peer.backoff.failures)
            peer.backoff.succeed()
        return acknowledged

    async def _remove(self, names: list[str]) -> None:
        """Move acknowledged ``names`` out of the queue into ``sent/``, on the remover threads."""
        if not names:
            return
        loop = asyncio.get_running_loop()
        shares = [names[i::REMOVERS] for i in range(min(REMOVERS, len(names)))]
        await asyncio.gather(*(loop.run_in_executor(self._remover, self._move_files, share) for share in shares))
        if not self.config.keep_sent_minutes and not self._sweeping:
            self._sweeping = True
            sweep = loop.run_in_executor(self._sweeper, housekeeping.clear_sent, self.spool.sent_dir)
            sweep.add_done_callback(self._swept)

    def _move_files(self, names: list[str]) -> None:
        locate = self.spool.queued_path
        sent_dir = self.spool.sent_dir
        for name in names:
            try:
                os.rename(locate(name), os.path.join(sent_dir, name))
            except FileNotFoundError:
                pass

    def _swept(self, done: asyncio.Future[int]) -> None:
        self._sweeping = False
        if not done.cancelled() and done.exception() is not None:
            log.warning("clearing sent/ failed: %s", done.exception())

    def _fail(self, name: str, reason: str) -> None:
        try:
            self.spool.fail(name, reason)
        except FileNotFoundError:
            return
        if self._scan is not None:
            self._finished.add(name)
        self.failed += 1
        log.warning("%s moved to failed/: %s", name, reason)

    def _peer_failed(self, peer: Peer, reason: str) -> None:
        delay = peer.backoff.fail()
        for batch in peer.pending:
            self._held.difference_update(entry.name for entry in batch)
        peer.pending.clear()
        peer.news = True
        if self.config.once and peer.backoff.failures >= ONCE_ATTEMPTS:
            peer.gave_up = True
            log.error("%s: %s; giving up after %d failures", peer.url, reason, peer.backoff.failures)
            return
        log.warning("%s: %s; backing off %.2f s (failure %d)", peer.url, reason, delay, peer.backoff.failures)
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    def _drained(self, now: float) -> bool:
        return not self._tasks and self._policy.drained(now)

    # -- chores ----------------------------------------------------------------------

    def _chores(self, now: float) -> None:
        due = self._due
        if now >= due["tmp"]:
            due["tmp"] = now + TMP_CHORE_SECONDS
            self._chore(housekeeping.clean_tmp, self.spool.tmp_dir)
        if now >= due["sent"]:
            due["sent"] = now + CHORE_SECONDS
            if self.config.keep_sent_minutes:
                self._chore(self.spool.wipe_sent, self.config.keep_sent_minutes)
        if now >= due["expire"]:
            due["expire"] = now + CHORE_SECONDS
            waiting = {p.field for p in self._peers.values() if p.gave_up or p.backoff.waiting(now)}
            if waiting and self.config.max_age_minutes:
                args = (self.spool.queue_dir, waiting, self.config.max_age_minutes * 60, self.config.scan_limit)
                self._chore(housekeeping.expired, *args, then=self._expire)

    def _chore(self, fn: Any, *args: Any, then: Any = None) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

        def finished(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                return
            exc = done.exception()
            if exc is not None:
                log.warning("%s failed: %s", fn.__name__, exc)
            elif then is not None:
                then(done.result())

        future.add_done_callback(finished)

    def _expire(self, names: list[str]) -> None:
        for name in names:
            if name not in self._held:
                self._fail(name, f"expired: queued for more than {self.config.max_age_minutes:g} minutes")


def _prefetch(paths: list[str]) -> None:
    """Starts reading files into the page cache, so that sending them waits less on the disk.

    A deep queue was written long ago: its files may have left the cache, and libcurl reads
    each one on the event loop's thread, one after the other.
    """
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def run(config: RelayConfig) -> int:
    """Run a relay for ``config.spool`` in this process; raises LockHeld if one is running."""
    spool = _spool.Spool(config.spool, create=True)
    try:
        fd = lock.acquire(spool.path)
    except OSError as exc:
        raise SpoolError(exc.errno, f"cannot lock {spool.path}: {exc.strerror or exc}") from None
    try:
        return _run_loop(Relay(config, spool).run())
    finally:
        os.close(fd)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
