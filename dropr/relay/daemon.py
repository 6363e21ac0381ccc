"""The relay worker: forwards a spool's queue to its peers until stopped.

:class:`Relay` wires three parts to the event loop, inotify and signals: the scan policy
(``policy``: what to read of the queue next), delivery (``delivery``: peers, batches,
requests and answers) and disposal (``disposal``: what becomes of messages the relay is done
with, and the chores). It runs the scans the policy plans and hands their names on.

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
runs inline instead (the policy says which). Only one scan runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Collection, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import spool as _spool
from .._impl import codec, scan
from ..errors import DroprError, SpoolError
from . import housekeeping, inotify, lock, status
from .config import RelayConfig
from .delivery import Delivery
from .disposal import Disposal
from .policy import Scanned, ScanPlan, ScanPolicy
from .status import RelayStatus

log = logging.getLogger("dropr.relay")


class Relay:
    """Forwards ``spool``'s queue as ``config`` says; :meth:`run` returns the exit status."""

    def __init__(self, config: RelayConfig, spool: _spool.Spool) -> None:
        self.config = config
        self.spool = spool
        self._stopping = False
        self._signalled = False
        self._crash: BaseException | None = None
        self._wake = asyncio.Event()
        self.status = RelayStatus(status.path(spool.path), spool)
        self._disposal = Disposal(config, spool, self.status)
        self._delivery = Delivery(
            config, spool, self._disposal, status=self.status, wake=self._wake.set, crash=self._crashed
        )
        self._policy = ScanPolicy(config, self._delivery.peers, self._delivery.held)
        self._scanner = ThreadPoolExecutor(1, thread_name_prefix="dropr-relay-scan")
        self._scan: asyncio.Future[Scanned] | None = None
        self._watch: inotify.Watch | None = None

    def stop(self) -> None:
        """Finish the requests in flight, send nothing new, and return from :meth:`run`."""
        if not self._stopping:
            log.info("stopping: finishing the requests in flight")
        self._stopping = self._signalled = True
        self._delivery.stop()
        self._wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self._watch = inotify.watch_queue(self.spool.queue_dir)
        if self._watch is not None:
            loop.add_reader(self._watch.fd, self._on_events)
        log.info("relaying %s as client %s", self.spool.path, self._delivery.client)
        try:
            while not self._stopping:
                self._wake.clear()
                if self._crash is not None:
                    raise self._crash
                now = time.monotonic()
                self._disposal.chores(now, self._delivery.resting, self._delivery.held)
                self._cycle(now)
                self.status.publish()
                if self.config.once and not self._delivery.busy and self._policy.drained(now):
                    break
                await self._sleep(min(self._policy.due, self._disposal.due) - now)
            await self._delivery.finish()
            if self._scan is not None:
                await asyncio.wait([self._scan])
            if self._crash is not None:
                raise self._crash
        finally:
            self._stopping = True
            self._delivery.stop()
            await self._close(loop)
            self.status.publish(force=True)
        failed = self._disposal.failed
        given_up = self._delivery.given_up()
        summary = f"relay stopped: {self._delivery.delivered} delivered, {failed} failed"
        if self.config.once and (given_up or self._signalled):
            summary += "; " + self._still_queued()
        log.info("%s", summary)
        if self.config.once and not self._signalled and (failed or given_up):
            return 1
        return 0

    def _still_queued(self) -> str:
        """What the queue still holds, per peer: ``still queued: N for URL (why), ...``."""
        counts = {field: messages for field, (messages, _, _) in scan.tally_queue(self.spool.queue_dir).items()}
        if not counts:
            return "nothing still queued"
        parts = []
        for field, count in sorted(counts.items(), key=lambda item: -item[1]):
            peer = self._delivery.peers.get(field)
            url = peer.url if peer is not None else field
            why = f" ({peer.reason})" if peer is not None and peer.reason else ""
            parts.append(f"{count} for {url}{why}")
        return "still queued: " + ", ".join(parts)

    def _crashed(self, exc: BaseException) -> None:
        self._crash = exc

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
        await self._delivery.close()
        self._scanner.shutdown(wait=True)
        self._disposal.close()

    def _on_events(self) -> None:
        assert self._watch is not None
        names = self._watch.read()
        if names is None:
            self._policy.rescan()
        else:
            self._delivery.arrived(names)
        self._wake.set()

    # -- scans -----------------------------------------------------------------------

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
            self._delivery.dispatch(names, prefetch=self._policy.deep)
        else:
            self._delivery.arrived(names)  # a survey: the peers it found become known


def run(config: RelayConfig) -> int:
    """Run a relay for ``config.spool`` in this process; raises LockHeld if one is running."""
    spool = _spool.Spool(config.spool, create=True)
    try:
        fd = lock.acquire(spool.path)
    except OSError as exc:
        raise SpoolError(exc.errno, f"cannot lock {spool.path}: {exc.strerror or exc}") from None
    try:
        relay = Relay(config, spool)
        with _metrics(config.metrics, relay, spool):
            return _run_loop(relay.run())
    finally:
        os.close(fd)


@contextlib.contextmanager
def _metrics(address: tuple[str, int] | None, relay: Relay, spool: _spool.Spool) -> Iterator[None]:
    """Serves ``relay``'s metrics on ``address`` (None: nowhere) while the block runs."""
    if address is None:
        yield
        return
    from .metrics import MetricsServer

    try:
        server = MetricsServer(address, relay.status, spool.queue_dir, spool.resolve)
    except OSError as exc:
        raise DroprError(f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        server.close()


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
