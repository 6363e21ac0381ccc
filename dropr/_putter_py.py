"""The put front, one source for both implementations: :class:`Putter` is the front of
``Client.put``, :class:`Spools` the front of ``fastput``.

A Putter holds a spool's directories open and the file-name fields of the (peer, channel)
pairs used so far, and calls back into Python only for what needs converting or checking.
Spools keeps a Putter for each spool it is given.

This file runs as it is on the plain-Python put path (``dropr._drop_py.put``). Cython
compiles it, with the declarations of ``_putter.pxd``, into ``dropr._putter``: there the two
classes are extension types and ``put`` is the compiled ``dropr._drop.put``, called in C, so
a put whose arguments need no conversion runs no Python code at all. Compiled from here, the
front costs what the hand-written ``.pyx`` front it replaced cost: 14,680 against 14,681
user-space instructions per ``fastput`` and 15,267 against 15,297 per ``Client.put``
(callgrind, 200-byte payloads on tmpfs); ``bench/put.py`` gave median ratios to its C floor
of 1.00 and 1.02 without sync, 0.97 and 1.10 with it (two runs of five rounds).
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable

from ._drop_py import put, put_many
from .errors import InvalidMessage
from .limits import DEFAULT_CHANNEL, DEFAULT_PRIORITY, Limits

FIELDS_CACHE = 4096
LOOK_EVERY = 64
"""Puts between two looks into a ``free/`` found empty."""


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


class Putter:
    """One spool's put path, held open: ``tmp_fd``, ``queue_fd`` and ``free_fd`` (-1: none;
    closed with it), the names last seen in ``free/`` and not used yet (each put writes into
    one, see ``dropr._drop_py``) and the file-name fields of each (peer, channel) used so
    far, within ``limits``.

    ``coerce(payload, priority, delay, max_payload)`` is called for a payload that is not
    ``bytes`` within ``max_payload``, a priority that is not an ``int`` 0-9 or a delay that
    is not ``0``, and returns them usable (the delay in milliseconds) or raises;
    ``fields(peer, channel)`` checks a pair not seen yet and returns its fields;
    ``failed(exc)`` turns the OSError of a failed put into the exception to raise.
    """

    def __init__(
        self,
        tmp_fd: int,
        queue_fd: int,
        free_fd: int,
        limits: Limits,
        fields: Callable[[object, object], tuple[str, str]],
        coerce: Callable[[object, object, object, int], tuple[bytes | memoryview, int, int]],
        failed: Callable[[OSError], BaseException],
    ) -> None:
        self._tmp_fd, self._queue_fd, self._free_fd = tmp_fd, queue_fd, free_fd
        self._free: list[str] = []
        self._idle = 0
        self._max_payload, self._batch_count, self._batch_bytes = (
            limits.max_payload,
            limits.batch_count,
            limits.batch_bytes,
        )
        self._fields, self._coerce, self._failed = fields, coerce, failed
        self._known: dict[tuple[object, object], tuple[str, str]] = {}
        # Not __del__: a finalizer also runs at exit, before modules are torn down, and never twice.
        self._closer = weakref.finalize(self, _close, tmp_fd, queue_fd, free_fd)

    def close(self) -> None:
        """Close the spool's directories; further puts fail."""
        self._tmp_fd = self._queue_fd = self._free_fd = -1
        self._closer()

    def put(self, payload: object, peer: object, channel: object, priority: object, delay: object, sync: bool) -> str:
        """Queue ``payload`` for ``peer`` in ``channel``; returns the message id."""
        delay_ms = 0
        if not (
            type(payload) is bytes
            and len(payload) <= self._max_payload
            and type(priority) is int
            and 0 <= priority <= 9
            and type(delay) is int
            and delay == 0
        ):
            payload, priority, delay_ms = self._coerce(payload, priority, delay, self._max_payload)
        fields = self._fields_of(peer, channel)
        try:
            return put(
                self._tmp_fd,
                self._queue_fd,
                fields[0],
                fields[1],
                priority,
                payload,  # type: ignore[arg-type]
                sync,
                delay_ms,
                self._free_fd,
                self._reusable(),
            )
        except OSError as exc:
            raise self._failed(exc) from exc

    def put_many(
        self, payloads: object, peer: object, channel: object, priority: object, delay: object, sync: bool
    ) -> list[str]:
        """Queue ``payloads`` for ``peer`` in ``channel`` as one batch; returns their ids."""
        if isinstance(payloads, (str, bytes, bytearray, memoryview)):
            raise InvalidMessage(f"payloads must be a list of payloads, not one {type(payloads).__name__}")
        try:
            items = list(payloads)  # type: ignore[call-overload]
        except TypeError:
            raise InvalidMessage(f"payloads must be a list of payloads, not {type(payloads).__name__}") from None
        count = len(items)
        if count > self._batch_count:
            raise InvalidMessage(f"a batch of {count} messages is over the limit of {self._batch_count}")
        delay_ms = 0
        if not (type(priority) is int and 0 <= priority <= 9 and type(delay) is int and delay == 0):
            _, priority, delay_ms = self._coerce(b"", priority, delay, self._max_payload)
        total = 0
        for i in range(count):
            item = items[i]
            if not (type(item) is bytes and len(item) <= self._max_payload):
                item = items[i] = self._coerce(item, priority, 0, self._max_payload)[0]
            total += len(item)
        if total > self._batch_bytes:
            raise InvalidMessage(f"a batch of {total} payload bytes is over the limit of {self._batch_bytes}")
        fields = self._fields_of(peer, channel)
        try:
            return put_many(
                self._tmp_fd,
                self._queue_fd,
                fields[0],
                fields[1],
                priority,
                items,
                sync,
                delay_ms,
                self._free_fd,
                self._reusable(),
            )
        except OSError as exc:
            raise self._failed(exc) from exc

    def _reusable(self) -> str | None:
        """A name in ``free/`` to write the next put into, or None. The listing is taken in
        turn from a place of this process's own, so that producers sharing a spool try
        different names first."""
        if self._free:
            return self._free.pop()
        if self._free_fd < 0:
            return None
        if self._idle:
            self._idle -= 1
            return None
        try:
            names = os.listdir(self._free_fd)
        except OSError:
            names = []
        if not names:
            self._idle = LOOK_EVERY
            return None
        start = os.getpid() % len(names)
        self._free = names[start:] + names[:start]
        return self._free.pop()

    def _fields_of(self, peer: object, channel: object) -> tuple[str, str]:
        """The file-name fields of (peer, channel), checked when first seen."""
        try:
            fields = self._known.get((peer, channel))
        except TypeError:
            fields = None
        if fields is None:
            fields = self._fields(peer, channel)
            if len(self._known) >= FIELDS_CACHE:
                self._known.clear()
            self._known[peer, channel] = fields
        return fields


class Spools:
    """The spools of ``fastput``: ``putters`` maps each ``spool`` argument seen to its
    Putter, made by ``open(spool)`` on first use."""

    def __init__(self, open: Callable[[object], Putter]) -> None:
        self.putters: dict[object, Putter] = {}
        self._open_putter = open

    def fastput(
        self,
        payload: object,
        peer: object,
        channel: object = DEFAULT_CHANNEL,
        priority: object = DEFAULT_PRIORITY,
        *,
        spool: object = None,
        sync: bool = False,
        delay: object = 0,
    ) -> str:
        """Queue ``payload`` for ``peer`` in ``spool`` and return the message id.

        The spool defaults to ``$DROPR_SPOOL`` (read at the first call that relies on it).
        Each spool's directories stay open for the life of the process, so a put costs the
        file system's work: create, write, rename (and with ``sync`` two flushes).
        """
        putter: Putter = self.putters.get(spool) or self._open(spool)
        try:
            return putter.put(payload, peer, channel, priority, delay, sync)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # The spool was removed or replaced since its directories were opened: open it anew.
        return self._open(spool).put(payload, peer, channel, priority, delay, sync)

    def fastput_many(
        self,
        payloads: object,
        peer: object,
        channel: object = DEFAULT_CHANNEL,
        priority: object = DEFAULT_PRIORITY,
        *,
        spool: object = None,
        sync: bool = False,
        delay: object = 0,
    ) -> list[str]:
        """Queue ``payloads`` for ``peer`` in ``spool`` as one batch and return their ids, as
        :meth:`fastput` does for one message: one file, so one file system's work."""
        putter: Putter = self.putters.get(spool) or self._open(spool)
        try:
            return putter.put_many(payloads, peer, channel, priority, delay, sync)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        return self._open(spool).put_many(payloads, peer, channel, priority, delay, sync)

    def _open(self, spool: object) -> Putter:
        putter = self._open_putter(spool)
        self.putters[spool] = putter
        return putter
