"""The aiohttp application: the POST that receives batches, ``/health``, ``/metrics``,
``/status`` (:mod:`.status_page`) and the consumer API under ``/v1/`` (:mod:`.consume`).

A POST is handled in three steps: check the request as a whole (token, type, declared
length) before reading its body; stream its parts into staged files (:mod:`.receive`);
then commit them through the store's one ingest path (:meth:`IngestSide.commit
<dropr.store.ingest.IngestSide.commit>`: verified, made durable, answered), and only then
the acknowledgement. Any failure removes every staged file.

The commit blocks on the disk, so it runs on a thread of :data:`COMMIT_THREADS`, which the
event loop awaits while it reads other requests; commits of concurrent requests overlap
and share their file-system syncs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from multipart import parse_options_header

from .. import protocol as p
from ..limits import DEFAULT, Limits
from ..protocol import RequestError
from ..store import Store
from ..store.staging import remove_staged
from . import status_page
from .auth import Token
from .consume import ConsumerAPI
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics, census
from .receive import UPLOADS, Receiver, Upload, store_failure
from .refusals import RefusalLog

log = logging.getLogger("dropr.server")

DEFAULT_MAX_REQUEST = 64 * 1024 * 1024
COMMIT_THREADS = 16
"""Requests committed at once; more wait for a thread (their syncs would queue anyway)."""


@dataclass(frozen=True)
class ServerConfig:
    """How the server receives: token (None: open), fsync before acking, size limits."""

    token: str | None = None
    fsync: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST
    limits: Limits = field(default_factory=lambda: DEFAULT)


class Handlers:
    """The request handlers of one store."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.metrics = Metrics(store)
        self.receiver = Receiver(store, config.limits, config.max_request_bytes)
        self.commits = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="dropr-commit")
        self.token = Token(config.token)
        self.refusals = RefusalLog()
        self.activity = status_page.Activity()
        self._sampler: asyncio.Task[None] | None = None
        self.stored: Callable[[Iterable[str]], None] = lambda channels: None
        """Told the channels of each batch that stored messages (claims may wait on them)."""

    async def start(self, app: web.Application) -> None:
        """Remove the uploads a previous server process left unfinished; start the census
        behind the status page."""
        removed = remove_staged(self.store.staging_dir, UPLOADS)
        if removed:
            log.info("removed %d unfinished uploads", removed)
        self._sampler = asyncio.ensure_future(self.activity.run(functools.partial(census, self.store)))

    async def stop(self, app: web.Application) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.commits.shutdown(wait=True)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the client sends a body we would refuse."""
        try:
            self._precheck(request)
        except RequestError as err:
            return self._answer_error(err, time.perf_counter(), request)
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="unknown Expect header")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def post(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        upload = Upload()
        try:
            self._precheck(request)
            await self.receiver.read(request, upload)
            await self._commit(upload)
        except RequestError as err:
            return self._answer_error(err, started, request, upload.client)
        finally:
            upload.discard()
        acks = upload.acks
        stored = collections.Counter(e.channel for e in upload.entries if acks[e.id][0] == p.STORED)
        self.stored(stored)
        self.activity.received(upload.client, request.remote or "", stored)
        self.metrics.received.inc(len(upload.entries))
        self.metrics.bytes.inc(upload.payload_bytes)
        self.metrics.count_acks(collections.Counter(status for status, _ in acks.values()))
        self._observe(200, started)
        as_json = p.JSON in request.headers.get(hdrs.ACCEPT, "")
        body = p.encode_acks(upload.acks, as_json)
        return web.Response(body=body, content_type=p.JSON if as_json else p.MSGPACK)

    def _precheck(self, request: web.Request) -> None:
        self.authorize(request)
        # Not request.content_type: aiohttp parses it with the email package, ~1 ms a request.
        media_type = parse_options_header(request.headers.get(hdrs.CONTENT_TYPE, ""))[0]
        if media_type != "multipart/form-data":
            raise p.bad(f"expected multipart/form-data, not {media_type or 'nothing'!r}")
        length = request.content_length
        if length is not None and length > self.config.max_request_bytes:
            raise RequestError(413, f"request of {length} bytes over the limit of {self.config.max_request_bytes}")

    async def _commit(self, upload: Upload) -> None:
        """Commit the parts received whole, and set the answer of every entry in its order."""
        staged = upload.take()
        verdicts: p.Acks = {}
        if staged:
            commit = functools.partial(self.store.commit, upload.client, staged, sync=self.config.fsync)
            try:
                verdicts = await asyncio.get_running_loop().run_in_executor(self.commits, commit)
            except OSError as exc:
                raise store_failure(exc) from None
        upload.acks = {e.id: verdicts.get(e.id) or upload.acks[e.id] for e in upload.entries}

    def _answer_error(self, err: RequestError, started: float, request: web.Request, client: str = "") -> web.Response:
        self.refused(request, err, client)
        headers = {}
        if err.status == 401:
            headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="dropr"'
        resp = web.Response(status=err.status, text=err.reason + "\n", headers=headers)
        if request.content.exception() is not None:
            # The rest of the body cannot be read (say, not in its Content-Encoding): aiohttp
            # would try to drain it, fail and log the failure, then wait for a next request
            # that its parser can no longer see. Answer and close instead.
            request.content.feed_eof()
            resp.force_close()
        self._observe(err.status, started)
        return resp

    def authorize(self, request: web.Request) -> None:
        """RequestError 401 unless the request carries the bearer token (when one is set)."""
        problem = self.token.problem(request.headers.get(hdrs.AUTHORIZATION, ""))
        if problem:
            raise RequestError(401, problem)

    def refused(self, request: web.Request, err: RequestError, client: str = "") -> None:
        """Log the refusal ``err`` of ``request`` (from ``client``, when it named one)."""
        who = request.remote or "?"
        self.refusals.refused(f"{who} (client {client})" if client else who, err.status, err.reason)

    def _observe(self, status: int, started: float) -> None:
        self.metrics.requests.labels(str(status)).inc()
        self.metrics.latency.observe(time.perf_counter() - started)

    async def health(self, request: web.Request) -> web.Response:
        """200 "ok" when the store takes files; 503 with the reason otherwise."""
        problem = self._store_problem()
        if problem:
            return web.Response(status=503, text=problem + "\n")
        return web.Response(text="ok\n")

    def _store_problem(self) -> str:
        try:
            if os.statvfs(self.store.staging_dir).f_bavail == 0:
                return "store file system is full"
            self.store.staging(UPLOADS).open().discard()
        except OSError as exc:
            return f"store not writable: {exc.strerror or exc}"
        return ""

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, self.metrics.render)  # counts the store
        resp = web.Response(body=body)
        resp.headers[hdrs.CONTENT_TYPE] = METRICS_TYPE
        return resp

    async def status(self, request: web.Request) -> web.Response:
        """The status page; with a token set, for a request carrying it (Basic or bearer)."""
        problem = self.token.problem(request.headers.get(hdrs.AUTHORIZATION, ""), basic=True)
        if problem:
            self.refused(request, RequestError(401, problem))
            return web.Response(
                status=401, text=problem + "\n", headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="dropr", charset="UTF-8"'}
            )
        counted = await asyncio.get_running_loop().run_in_executor(None, census, self.store)
        page = status_page.render(self.store.path, counted, self.activity, time.time())
        return web.Response(text=page, content_type="text/html", headers={hdrs.CACHE_CONTROL: "no-store"})


def make_app(store: Store, config: ServerConfig | None = None) -> web.Application:
    """The application for ``store``: GET /health, GET /metrics, GET /status, the consumer
    API under ``/v1/``, POST on any other path. Starting it removes unfinished uploads."""
    handlers = Handlers(store, config or ServerConfig())
    app = web.Application()
    app.on_startup.append(handlers.start)
    app.on_cleanup.append(handlers.stop)
    app.router.add_get("/health", handlers.health, allow_head=True)
    app.router.add_get("/metrics", handlers.metrics_page, allow_head=True)
    app.router.add_get("/status", handlers.status, allow_head=True)
    consumers = ConsumerAPI(store, handlers.authorize, handlers.refused)
    consumers.add_routes(app)
    handlers.stored = consumers.wakeups.arrived
    app.router.add_route("POST", "/{path:.*}", handlers.post, expect_handler=handlers.expect)
    return app
