"""The consumer side of a store over the network: :class:`RemoteStore` talks to a
``dropr-server`` (its consumer API, :mod:`dropr.consumer_api`) with the names and meanings of
:class:`dropr.Store`, so consumer code runs against either.

urllib3 carries the requests (the ``dropr[remote]`` extra): connections are pooled and
reused, TLS is verified (against ``ca_file`` when given). Every refusal is a
:class:`~dropr.StoreError` with the server's reason: a bad argument one that is a
``ValueError`` too (as :class:`~dropr.Store` raises), an unknown group or dead letter
``ENOENT``, a lost lease ``ESTALE``, a wrong token ``EACCES``, no server ``ECONNREFUSED``.
"""

from __future__ import annotations

import errno
import urllib.parse
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import msgpack

from . import consumer_api as api
from . import protocol as p
from .errors import StoreError
from .store.message import Message

try:
    import urllib3
except ImportError as exc:  # pragma: no cover - the extra is part of the test install
    raise ImportError("urllib3 is not installed: pip install 'dropr[remote]'") from exc

POOL_SIZE = 8
"""Connections kept per server (threads of one process claiming at once reuse them)."""
_STATUS_ERRNO = {401: errno.EACCES, 403: errno.EACCES, 404: errno.ENOENT, 409: errno.ESTALE, 507: errno.ENOSPC}


class RemoteMessage(Message):
    """A claimed (or dead) message as a server sent it: its payload came with it."""

    __slots__ = ("payload",)

    def __init__(self, fields: dict[str, Any]) -> None:
        lease_ns = None
        name = ""
        if fields.get("receipt") is not None:
            name, lease_ns = api.parse_receipt(fields["receipt"])
        super().__init__(
            fields["id"],
            fields["client"],
            fields["channel"],
            fields["priority"],
            fields["time"],
            name,
            "",
            fields.get("attempts", 0),
            tuple(fields.get("reasons", ())),
            group=fields.get("group"),
            lease_ns=lease_ns,
        )
        self.payload: bytes = fields["payload"]

    def read(self) -> bytes:
        """The payload."""
        return self.payload


class _BadArgument(StoreError, ValueError):
    """A request the server refused as malformed: a ValueError, as :class:`Store` raises."""


class RemoteStore:
    """The consumer side of the store of the ``dropr-server`` at ``url``
    (``http://host:port/`` or ``https://…``; a path is the prefix the server is behind).

    ``token`` is sent as the bearer token; ``ca_file`` names the CAs trusted for HTTPS
    (default: the system's); ``timeout`` bounds connecting and each answer, in seconds (a
    claim's ``wait`` comes on top). Safe to use from several threads.
    """

    def __init__(
        self, url: str, *, token: str | None = None, ca_file: str | None = None, timeout: float = 30.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a server URL is http://host:port/ or https://..., not {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds above 0, not {timeout!r}")
        self.url = url
        self.timeout = float(timeout)
        self._base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        headers = {"Accept": p.MSGPACK, "User-Agent": "dropr-remote"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file} if parts.scheme == "https" else {}
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=POOL_SIZE,
            headers=headers,
            retries=urllib3.Retry(total=2, read=0, redirect=0, status=0, other=0),
            **tls,
        )

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def channels(self) -> list[str]:
        """The channels that have received messages (or groups), sorted."""
        return list(self._get(api.CHANNELS, {}))

    def claim(
        self, channel: str, limit: int, lease: float, *, group: str | None = None, wait: float = 0.0
    ) -> list[Message]:
        """Take up to ``limit`` messages of ``channel`` for ``lease`` seconds, waiting up to
        ``wait`` seconds for one when none is ready (see :meth:`dropr.Store.claim`)."""
        params = {"channel": channel, "group": group, "limit": limit, "lease": lease, "wait": wait}
        found = self._call("POST", api.CLAIM, params, extra_time=wait if isinstance(wait, (int, float)) else 0)
        return [RemoteMessage(fields) for fields in found]

    def release(self, *messages: Message) -> None:
        """Return claimed messages to the queue at once; StoreError, after the others went
        back, for one whose lease was lost."""
        self._settle(api.RELEASE, messages, {})

    def set_processed(self, *messages: Message) -> None:
        """Mark claimed messages done; StoreError, after the others were marked, for one
        whose lease was lost."""
        self._settle(api.PROCESSED, messages, {})

    def set_failed(self, message: Message, reason: str) -> None:
        """Record a failed attempt: the message is retried later, or becomes a dead letter."""
        self._settle(api.FAILED, [message], {"reason": str(reason)})

    def status(self, channel: str, msg_id: str, *, group: str | None = None) -> str | None:
        """The state of message ``msg_id``: "queued", "claimed", "delayed", "processed",
        "dead", or None when the store does not hold it."""
        answer = self._get(api.STATUS, {"channel": channel, "id": msg_id, "group": group})
        state = answer["status"]
        return None if state is None else str(state)

    def counts(self, channel: str, *, group: str | None = None) -> dict[str, int]:
        """How many messages of ``channel`` each state holds."""
        return dict(self._get(api.COUNTS, {"channel": channel, "group": group}))

    def count_queued(self, channel: str, *, group: str | None = None) -> int:
        """How many messages of ``channel`` wait in its queue."""
        return self.counts(channel, group=group)["queued"]

    def count_processed(self, channel: str, *, group: str | None = None) -> int:
        """How many processed messages of ``channel`` are kept."""
        return self.counts(channel, group=group)["processed"]

    def dead_letters(self, channel: str, *, group: str | None = None) -> list[Message]:
        """The dead letters of ``channel`` in delivery order, with attempts, reasons, payloads."""
        return [RemoteMessage(fields) for fields in self._get(api.DEAD, {"channel": channel, "group": group})]

    def requeue_dead(self, channel: str, ids: Iterable[str] | None = None, *, group: str | None = None) -> int:
        """Put dead letters back in the queue (all, or those with these ids); how many moved."""
        params = {"channel": channel, "group": group, "ids": None if ids is None else list(ids)}
        return int(self._call("POST", api.REQUEUE, params)["requeued"])

    def groups(self, channel: str) -> list[str]:
        """The consumer groups of ``channel``, sorted."""
        return list(self._get(api.GROUPS, {"channel": channel}))

    def subscribe(self, channel: str, group: str) -> bool:
        """Make ``group`` a consumer group of ``channel``; False when it was one already."""
        return bool(self._call("POST", api.SUBSCRIBE, {"channel": channel, "group": group})["subscribed"])

    def unsubscribe(self, channel: str, group: str) -> None:
        """Remove ``group`` from ``channel``, with every message it holds."""
        self._call("POST", api.UNSUBSCRIBE, {"channel": channel, "group": group})

    def _settle(self, path: str, messages: Iterable[Message], extra: dict[str, Any]) -> None:
        """Settle claimed messages, one request per channel and group."""
        batches: dict[tuple[str, str | None], list[Message]] = {}
        for message in messages:
            if message.lease_ns is None:
                raise _BadArgument(errno.EINVAL, f"message {message.id} was not claimed: nothing to settle")
            batches.setdefault((message.channel, message.group), []).append(message)
        lost: list[str] = []
        for (channel, group), batch in batches.items():
            receipts = {str(api.Receipt(m.name, m.lease_ns)): m for m in batch if m.lease_ns is not None}
            params = {"channel": channel, "group": group, "receipts": list(receipts), **extra}
            results = self._call("POST", path, params, lost_ok=True)
            lost += [receipts[r].id for r, (state, _) in results.items() if state == api.LOST and r in receipts]
        if lost:
            raise StoreError(errno.ESTALE, f"lease lost: {', '.join(lost)} no longer held by this claimant")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        return self._call("GET", path, params)

    def _call(
        self, method: str, path: str, params: dict[str, Any], *, extra_time: float = 0.0, lost_ok: bool = False
    ) -> Any:
        """One request; its decoded answer, or the StoreError of a refusal."""
        present = {key: value for key, value in params.items() if value is not None}
        url = self._base + path
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout + max(0.0, extra_time))
        try:
            if method == "GET":
                response = self._pool.request("GET", url, fields=present, timeout=timeout)
            else:
                body = msgpack.packb(present)
                headers = {**self._pool.headers, "Content-Type": p.MSGPACK}
                response = self._pool.request(method, url, body=body, headers=headers, timeout=timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(errno.ECONNREFUSED, f"server {self.url} unreachable or gone: {_cause(exc)}") from None
        if response.status == 200 or (lost_ok and response.status == 409):
            try:
                return msgpack.unpackb(response.data, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                raise StoreError(errno.EPROTO, f"server {self.url} sent an answer that is not msgpack: {exc}") from None
        reason = response.data.decode("utf-8", "replace").strip() or response.reason or "no reason given"
        number = _STATUS_ERRNO.get(response.status, errno.EIO)
        kind = _BadArgument if response.status in (400, 413, 415) else StoreError
        raise kind(number, f"{reason} (HTTP {response.status} from {self.url})")


def _cause(exc: Exception) -> str:
    """The innermost reason of a urllib3 error, in one line."""
    reason = getattr(exc, "reason", None) or exc
    return str(reason).splitlines()[0] if str(reason) else type(reason).__name__
