"""The consumer API over HTTP (:mod:`dropr.consumer_api`), served from the store's consumer side.

Every store call blocks on the disk, so it runs on a thread of :data:`THREADS`. A claim that
finds nothing ready waits, up to its ``wait``, on :class:`Wakeups` — woken by this server's
own ingest of the channel, by inotify for what other processes move into its queue, and by
its own timer when a retry or an expired claim becomes due — then claims again: no busy
loop on either side. A claim answer is one msgpack array of maps, each message's payload
as msgpack bin read from its file, written as the files are read (at most :data:`CHUNK`
bytes held at a time); with ``Accept: application/octet-stream`` and limit 1 it is the raw
payload with the metadata in ``Dropr-*`` headers, or 204. A client that goes away mid-answer
loses nothing: its claims come back after their lease.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgpack
from aiohttp import hdrs, web
from multipart import parse_options_header

from .. import _inotify
from .. import consumer_api as api
from .. import protocol as p
from .._impl import moves
from ..errors import StoreError
from ..protocol import RequestError, bad
from ..store.consumer import STATUSES, ConsumerSide, check_wait
from ..store.layout import PROCESSED, QUEUE
from ..store.message import Message
from .receive import store_failure

log = logging.getLogger("dropr.server")

THREADS = 8
"""Store calls of the consumer API at once (claims, reads, settling)."""
CHUNK = 1 << 20
"""The most bytes of a claim answer read from the files before they are written out."""
READ_BATCH = 256
"""The most messages of a claim answer read in one batch (without the GIL)."""
MAX_BODY = 4 << 20
"""The largest request body of the consumer API (receipts, ids): 10k receipts take ~1 MiB."""
POLL = 0.1
"""How long a waiting claim sleeps at most where inotify is missing."""

_TEXTS = ("client", "channel", "group")  # names, percent-encoded in Dropr-* headers (the rest is ASCII)
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Wakeups:
    """What waiting claims wait on: :meth:`arrived`, which the server's own ingest calls, and
    one inotify descriptor for the whole server, whose watches are held while some claim
    waits on their directory (what other processes move in: releases, requeues, retries)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[Waiter]] = {}
        self._watch: _inotify.Inotify | None = None
        self._tried = False
        self._wd: dict[str, int] = {}  # watched directory -> its watch
        self._users: dict[str, int] = {}  # watched directory -> claims waiting on it
        self._channel: dict[int, str | None] = {}  # watch -> its channel (None: any)

    def waiter(self, channel: str, paths: Sequence[str]) -> Waiter:
        """A claim's wait for news of ``channel`` in ``paths`` (its queue, delayed and
        claimed directories, then the channels directory, watched only while the channel's
        do not exist)."""
        return Waiter(self, channel, paths)

    def arrived(self, channels: Iterable[str]) -> None:
        """Messages of ``channels`` were just stored (or put back) by this server."""
        for channel in channels:
            for waiter in self._waiting.get(channel, ()):
                waiter.wake()

    @property
    def watching(self) -> bool:
        """Whether inotify tells of arrivals (else waiting claims look every :data:`POLL` s)."""
        return self._watch is not None

    def close(self) -> None:
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()
            self._watch = None

    def _join(self, waiter: Waiter) -> None:
        self._waiting.setdefault(waiter.channel, set()).add(waiter)

    def _leave(self, waiter: Waiter) -> None:
        waiting = self._waiting[waiter.channel]
        waiting.discard(waiter)
        if not waiting:
            del self._waiting[waiter.channel]

    def hold(self, channel: str, paths: Sequence[str]) -> list[str]:
        """Watch the directories of ``channel`` (the channels directory instead while it has
        none); the directories now held for this claim."""
        if self._watch is None and not self._tried:
            self._tried = True
            fd = _inotify.create()
            if fd is not None:
                self._watch = _inotify.Inotify(fd)
                asyncio.get_running_loop().add_reader(fd, self._on_events)
        if self._watch is None:
            return []
        *own, channels_dir = paths
        held: list[str] = []
        try:
            for path in own:
                held.append(self._add(path, channel))
        except FileNotFoundError:
            self.drop(held)
            held = [self._add(channels_dir, None)]
        except OSError as exc:
            self.drop(held)
            if exc.errno not in _inotify.SHORT_OF_RESOURCES:
                raise
            log.warning("%s: waiting claims look every %.1f s", exc, POLL)
            return []
        return held

    def _add(self, path: str, channel: str | None) -> str:
        assert self._watch is not None
        if path not in self._wd:
            wd = self._watch.add(path)
            self._wd[path] = wd
            self._channel[wd] = channel
        self._users[path] = self._users.get(path, 0) + 1
        return path

    def drop(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._users[path] -= 1
            if self._users[path]:
                continue
            del self._users[path]
            wd = self._wd.pop(path)
            del self._channel[wd]
            if self._watch is not None:
                self._watch.remove(wd)

    def _on_events(self) -> None:
        assert self._watch is not None
        events = self._watch.events()
        woken: set[str | None] = {None} if events is None else {self._channel.get(event.wd, "") for event in events}
        if None in woken:
            woken = set(self._waiting)
        self.arrived(channel for channel in woken if channel)


class Waiter:
    """One claim's wait (see :meth:`Wakeups.waiter`): :meth:`arm` before each look at the
    queue, so that news arriving between that look and :meth:`wait` is not missed."""

    def __init__(self, wakeups: Wakeups, channel: str, paths: Sequence[str]) -> None:
        self.channel = channel
        self._wakeups = wakeups
        self._paths = paths
        self._held: list[str] = []
        self._future: asyncio.Future[None] | None = None

    def __enter__(self) -> Waiter:
        self._wakeups._join(self)
        self._held = self._wakeups.hold(self.channel, self._paths)
        return self

    def __exit__(self, *exc: object) -> None:
        self._wakeups._leave(self)
        self._wakeups.drop(self._held)

    def arm(self) -> None:
        """Be woken by what arrives from now on (and watch the channel once it exists)."""
        self._future = asyncio.get_running_loop().create_future()
        if self._held == [self._paths[-1]]:
            self._wakeups.drop(self._held)
            self._held = self._wakeups.hold(self.channel, self._paths)

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until woken (since :meth:`arm`) or ``timeout`` seconds passed."""
        assert self._future is not None
        if not self._wakeups.watching:
            timeout = min(timeout, POLL)
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except asyncio.TimeoutError:
            pass


class ConsumerAPI:
    """The handlers of the consumer API over one store; ``authorize`` refuses a request
    without the server's token (RequestError 401), ``refused`` logs each refusal."""

    def __init__(
        self,
        store: ConsumerSide,
        authorize: Callable[[web.Request], None],
        refused: Callable[[web.Request, RequestError], None],
    ) -> None:
        self.store = store
        self.authorize = authorize
        self.refused = refused
        self.wakeups = Wakeups()
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="dropr-consume")

    def add_routes(self, app: web.Application) -> None:
        """Register every route of the API (before the catch-all upload POST)."""
        posts: dict[str, Handler] = {
            api.CLAIM: self.claim,
            api.PROCESSED: functools.partial(self.settle, "processed"),
            api.FAILED: functools.partial(self.settle, "failed"),
            api.RELEASE: functools.partial(self.settle, "released"),
            api.REQUEUE: self.requeue,
            api.SUBSCRIBE: functools.partial(self.group_change, True),
            api.UNSUBSCRIBE: functools.partial(self.group_change, False),
        }
        gets: dict[str, Handler] = {
            api.STATUS: self.status,
            api.COUNTS: self.counts,
            api.DEAD: self.dead,
            api.GROUPS: self.groups,
            api.CHANNELS: self.channels,
        }
        for path, handler in posts.items():
            app.router.add_post(path, self._guarded(handler))
        for path, handler in gets.items():
            app.router.add_get(path, self._guarded(handler), allow_head=False)
        app.on_cleanup.append(self._stop)

    async def _stop(self, app: web.Application) -> None:
        self.wakeups.close()
        self.pool.shutdown(wait=True)

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the token, with every refusal a 4xx and a one-line reason."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                self.authorize(request)
                return await handler(request)
            except RequestError as err:
                refusal = err
            except StoreError as exc:
                refusal = RequestError(409 if exc.errno == errno.ESTALE else 404, str(exc))
            except ValueError as exc:
                refusal = RequestError(400, str(exc))
            except OSError as exc:
                refusal = store_failure(exc)
                log.error("consumer API: %d %s", refusal.status, refusal.reason)
            self.refused(request, refusal)
            return _refusal(refusal.status, refusal.reason)

        return guarded

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(call, *args, **kwargs))

    async def claim(self, request: web.Request) -> web.StreamResponse:
        params = await _params(request)
        channel, group = _text(params, "channel"), _optional(params, "group")
        limit = _whole(params, "limit", 1)
        lease = _seconds(params, "lease", None)
        wait = check_wait(_seconds(params, "wait", 0.0))
        if not 0 <= limit <= api.MAX_LIMIT:
            raise bad(f"limit must be from 0 to {api.MAX_LIMIT}, not {limit}")
        raw = _accepts_raw(request)
        if raw and limit != 1:
            raise bad("a raw answer (Accept: application/octet-stream) holds one message: limit must be 1")
        if not raw and _accepts(request, p.JSON) and not _accepts(request, p.MSGPACK):
            raise RequestError(406, "a claim answers msgpack (or, with limit 1, the raw payload), never JSON")
        messages = await self._claim(request, channel, group, limit, lease, wait)
        if raw:
            return await self._raw(request, messages)
        head = msgpack.Packer().pack_array_header(len(messages))
        packed, done = await self._run(_pack_messages, messages) if messages else (b"", 0)
        if done == len(messages):  # one chunk: sent with its length, not chunked
            return web.Response(body=head + packed, content_type=p.MSGPACK)
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: p.MSGPACK})
        try:
            await response.prepare(request)
            await response.write(head + packed)
            while done < len(messages):
                packed, done = await self._run(_pack_messages, messages, done)
                await response.write(packed)
            await response.write_eof()
        except ConnectionError:
            log.info("a consumer went away in the middle of a claim answer: its claims come back after the lease")
        return response

    async def _claim(
        self, request: web.Request, channel: str, group: str | None, limit: int, lease: float, wait: float
    ) -> list[Message]:
        """Claim, and while nothing is ready and ``wait`` is not over, wait for news (not
        for a client that went away meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        messages = await self._run(self.store.claim, channel, limit, lease, group=group)
        if messages or wait <= 0 or not limit:
            return messages
        with self.wakeups.waiter(channel, self.store.wake_paths(channel, group=group)) as waiter:
            while True:
                waiter.arm()
                self.store.look_again(channel, group=group)
                messages = await self._run(self.store.claim, channel, limit, lease, group=group)
                left = deadline - loop.time()
                if messages or left <= 0:
                    return messages
                await waiter.wait(min(left, max(0.0, self.store.due_in(channel, group=group))))
                if request.transport is None or request.transport.is_closing():
                    return []

    async def _raw(self, request: web.Request, messages: list[Message]) -> web.StreamResponse:
        if not messages:
            return web.Response(status=204)
        [message] = messages
        headers = {
            api.HEADER_PREFIX + key.capitalize(): urllib.parse.quote(str(value), safe=_HEADER_SAFE)
            if key in _TEXTS
            else str(value)
            for key, value in _meta(message).items()
            if value is not None
        }
        headers[hdrs.CONTENT_TYPE] = api.RAW
        if message.whole_file():
            return web.FileResponse(message.path, headers=headers)
        return web.Response(body=message.read(), headers=headers)

    async def settle(self, outcome: str, request: web.Request) -> web.StreamResponse:
        params = await _params(request)
        channel, group = _text(params, "channel"), _optional(params, "group")
        receipts = [api.parse_receipt(text) for text in _list(params, "receipts", "receipt")]
        if len(receipts) > api.MAX_RECEIPTS:
            raise RequestError(413, f"{len(receipts)} receipts, over the limit of {api.MAX_RECEIPTS}")
        reason = _text(params, "reason") if outcome == "failed" else ""
        results = await self._run(_settle, self.store, outcome, channel, group, receipts, reason)
        if outcome == "released":
            self.wakeups.arrived([channel])
        status = 409 if any(state == api.LOST for state, _ in results.values()) else 200
        return _answer(request, results, status)

    async def status(self, request: web.Request) -> web.StreamResponse:
        params = _query(request)
        channel, group, msg_id = _text(params, "channel"), _optional(params, "group"), _text(params, "id")
        state = await self._run(self.store.status, channel, msg_id, group=group)
        return _answer(request, {"id": msg_id, "status": state})

    async def counts(self, request: web.Request) -> web.StreamResponse:
        params = _query(request)
        found = await self._run(self.store.counts, _text(params, "channel"), group=_optional(params, "group"))
        return _answer(request, found)

    async def dead(self, request: web.Request) -> web.StreamResponse:
        params = _query(request)
        channel, group = _text(params, "channel"), _optional(params, "group")
        letters = await self._run(self.store.dead_letters, channel, group=group)
        if _accepts(request, p.JSON):
            return _answer(request, [{**_meta(m), "attempts": m.attempts, "reasons": list(m.reasons)} for m in letters])
        return web.Response(body=await self._run(_pack_dead, letters), content_type=p.MSGPACK)

    async def requeue(self, request: web.Request) -> web.StreamResponse:
        params = await _params(request)
        channel, group = _text(params, "channel"), _optional(params, "group")
        ids = _list(params, "ids", "id") if "ids" in params or "id" in params else None
        moved = await self._run(self.store.requeue_dead, channel, ids, group=group)
        if moved:
            self.wakeups.arrived([channel])
        return _answer(request, {"requeued": moved})

    async def groups(self, request: web.Request) -> web.StreamResponse:
        found = await self._run(self.store.groups, _text(_query(request), "channel"))
        return _answer(request, found)

    async def group_change(self, subscribe: bool, request: web.Request) -> web.StreamResponse:
        params = await _params(request)
        channel, group = _text(params, "channel"), _text(params, "group")
        if subscribe:
            made = await self._run(self.store.subscribe, channel, group)
            return _answer(request, {"subscribed": made})
        await self._run(self.store.unsubscribe, channel, group)
        return _answer(request, {"unsubscribed": True})

    async def channels(self, request: web.Request) -> web.StreamResponse:
        return _answer(request, await self._run(self.store.channels))


def _settle(
    store: ConsumerSide, outcome: str, channel: str, group: str | None, receipts: list[api.Receipt], reason: str
) -> dict[str, tuple[str, str]]:
    """Settle each receipt of ``channel`` as ``outcome`` says; its state after, or lost."""
    messages = [store.claimed_message(channel, receipt.name, receipt.lease_ns, group=group) for receipt in receipts]
    if outcome == "failed":
        lost: list[Message] = []
        for message in messages:
            try:
                store.set_failed(message, reason)
            except StoreError as exc:
                if exc.errno != errno.ESTALE:
                    raise
                lost.append(message)
    else:  # one batch: the claimed files of a channel move without the GIL
        lost = store.settle(messages, PROCESSED if outcome == "processed" else QUEUE)
    gone = {id(message) for message in lost}
    results: dict[str, tuple[str, str]] = {}
    for receipt, message in zip(receipts, messages, strict=True):
        if id(message) in gone:
            results[str(receipt)] = (api.LOST, "lease lost: the claim ran out and was taken back, or is another's")
        else:
            results[str(receipt)] = (STATUSES[os.path.basename(os.path.dirname(message.path))], "")
    return results


def _meta(message: Message) -> dict[str, Any]:
    """A message's metadata, by the names of :data:`dropr.consumer_api.MESSAGE_FIELDS`."""
    meta: dict[str, Any] = {
        "id": message.id,
        "client": message.client,
        "channel": message.channel,
        "group": message.group,
        "priority": message.priority,
        "time": message.time,
    }
    if message.lease_ns is not None:
        meta["lease"] = message.lease
        meta["receipt"] = str(api.Receipt(message.name, message.lease_ns))
    return meta


def _pack_messages(
    messages: list[Message], start: int = 0, extra: Callable[[Message], dict[str, Any]] | None = None
) -> tuple[bytes, int]:
    """The msgpack maps of ``messages`` from ``start`` on, each with its payload read from
    its file, until about :data:`CHUNK` bytes of payloads; and where the next chunk starts.
    A message gone meanwhile (its lease run out, taken and processed) has an empty payload.

    One packer holds the chunk (a payload is copied into it once): packing each map whole
    takes 4 µs a message of 200 bytes, key by key 9 µs.
    """
    packer = msgpack.Packer(autoreset=False)
    batch = messages[start : start + READ_BATCH]
    payloads, read = moves.read_files([message.path for message in batch], CHUNK)
    for message, payload in zip(batch[:read], payloads, strict=True):
        fields = _meta(message)
        if extra is not None:
            fields.update(extra(message))
        fields["payload"] = b"" if payload is None else payload
        packer.pack(fields)
    return packer.bytes(), start + read


def _pack_dead(letters: list[Message]) -> bytes:
    body: bytes = msgpack.Packer().pack_array_header(len(letters))
    done = 0
    while done < len(letters):
        packed, done = _pack_messages(letters, done, lambda m: {"attempts": m.attempts, "reasons": list(m.reasons)})
        body += packed
    return body


def _refusal(status: int, reason: str) -> web.Response:
    headers = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="dropr"'} if status == 401 else None
    return web.Response(status=status, text=reason.replace("\n", " ") + "\n", headers=headers)


def _accepts(request: web.Request, media_type: str) -> bool:
    return media_type in request.headers.get(hdrs.ACCEPT, "")


def _accepts_raw(request: web.Request) -> bool:
    return _accepts(request, api.RAW) and not _accepts(request, p.MSGPACK)


def _answer(request: web.Request, value: Any, status: int = 200) -> web.Response:
    """``value`` as JSON when the request accepts it, else as msgpack."""
    if _accepts(request, p.JSON):
        return web.Response(status=status, text=json.dumps(value), content_type=p.JSON)
    return web.Response(status=status, body=msgpack.packb(value), content_type=p.MSGPACK)


def _query(request: web.Request) -> dict[str, Any]:
    """The parameters of the query string (a repeated one as a list)."""
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        params[key] = values if len(values) > 1 else values[0]
    return params


async def _params(request: web.Request) -> dict[str, Any]:
    """The parameters of the query string and of a JSON or msgpack body (a map)."""
    params = _query(request)
    if not request.body_exists:
        return params
    media_type = parse_options_header(request.headers.get(hdrs.CONTENT_TYPE, ""))[0]
    if media_type not in (p.JSON, p.MSGPACK):
        raise RequestError(415, f"a body must be {p.JSON} or {p.MSGPACK}, not {media_type or 'untyped'!r}")
    if (request.content_length or 0) > MAX_BODY:
        raise RequestError(413, f"body larger than {MAX_BODY} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > MAX_BODY:
            raise RequestError(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(data) if media_type == p.JSON else msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise bad(f"body is not {media_type}: {exc}") from None
    if not isinstance(body, dict):
        raise bad("body must be a map of parameters")
    repeated = sorted(params.keys() & body.keys())
    if repeated:
        raise bad(f"parameter(s) {', '.join(repeated)} given twice")
    params.update(body)
    return params


def _optional(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    return None if value is None else _text(params, key)


def _text(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if value is None:
        raise bad(f"parameter {key!r} is missing")
    if not isinstance(value, str):
        raise bad(f"parameter {key!r} must be text, not {value!r}")
    return value


def _list(params: dict[str, Any], key: str, single: str) -> list[str]:
    """A list parameter: ``key`` as a list, or ``single`` given once or repeated."""
    value = params.get(key, params.get(single, []))
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in values):
        raise bad(f"parameter {key!r} must be a list of texts")
    return values


def _whole(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"parameter {key!r} must be a whole number, not {value!r}")
    return value


def _seconds(params: dict[str, Any], key: str, default: float | None) -> float:
    value = params.get(key, default)
    if value is None:
        raise bad(f"parameter {key!r} is missing")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"parameter {key!r} must be a number of seconds, not {value!r}")
    return float(value)
