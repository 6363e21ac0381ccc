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
time. The local transport's ingest, blocking file work that need not be ordered with scans,
runs on a worker thread. What becomes of messages once answered, and the chores, is
``disposal``'s.
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
from .disposal import Disposal
from .policy import Scanned, ScanPlan, ScanPolicy
from .transport import Transport

log = logging.getLogger("dropr.relay")

ONCE_ATTEMPTS = 3
"""With ``--once``, a peer failing this many times in a row is given up for the run."""
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
        self._disposal = Disposal(config, spool)
        self._sweeping = False
        self._scan: asyncio.Future[Scanned] | None = None
        self._multi: Any = None
        self._watch: inotify.Watch | None = None

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
                self._disposal.chores(now, self._resting, self._held)
                self._cycle(now)
                if self.config.once and self._drained(now):
                    break
                await self._sleep(min(self._policy.due, self._disposal.due) - now)
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
        failed = self._disposal.failed
        log.info("relay stopped: %d delivered, %d failed", self.delivered, failed)
        if self.config.once and not self._signalled and (failed or gave_up):
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
        self._executor.shutdown(wait=True)
        self._scanner.shutdown(wait=True)
        self._disposal.close()

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
            self._disposal.scan_started()
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
        finished = self._disposal.scan_ended()
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
        fail = self._disposal.fail
        cutoff = self._disposal.expiry_cutoff()
        for name in names:
            try:
                priority, msg_id, peer_field, channel, size, crc = codec.parse_spool_name(name)
            except ValueError:
                fail(name, "not a message name")
                continue
            if codec.id_time_ns(msg_id) < cutoff:
                self._disposal.expire(name)
                continue
            peer = self._peers.get(peer_field) or self._add_peer(peer_field)
            if peer.problem:
                fail(name, peer.problem)
                continue
            if channel[0] == "~":
                try:
                    self.spool.resolve(channel)
                except (OSError, ValueError) as exc:
                    fail(name, f"the text of channel {channel} is missing: {exc}")
                    continue
            groups.setdefault(peer, []).append(Entry(name, msg_id, priority, channel, size, crc))
        locate = self.spool.queued_path
        for peer, entries in groups.items():
            for batch in batches.cut(entries, self.config.batch_count, self.config.batch_bytes):
                peer.pending.append(batch)
                self._held.update(entry.name for entry in batch)
                if self._policy.deep:
                    self._disposal.prefetch([locate(entry.name) for entry in batch])
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
        try:
            if acks is not None:
                await self._disposal.remove(self._answer(peer, batch, acks, time.monotonic() - started))
        except Exception as exc:
            self._crash = exc
        finally:
            peer.inflight -= 1
            self._held.difference_update(entry.name for entry in batch)
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
                self._disposal.fail(entry.name, reason or "rejected by the peer")
        self.delivered += len(acknowledged)
        log.debug("%s: %d sent in %.3f s: %s", peer.url, len(batch), seconds, dict(counts))
        retry = len(batch) - len(acknowledged) - counts[protocol.REJECTED]
        if retry:
            self._peer_failed(peer, f"{retry} of {len(batch)} messages to be retried")
        elif peer.backoff.failures:
            log.info("%s: delivering again after %d failures", peer.url, peer.backoff.failures)
            peer.backoff.succeed()
        return acknowledged

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

    def _resting(self, now: float) -> set[str]:
        """The fields of the peers left alone: given up or backing off."""
        return {p.field for p in self._peers.values() if p.gave_up or p.backoff.waiting(now)}


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
