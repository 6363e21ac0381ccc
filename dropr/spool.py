"""The producer side: a spool directory, :class:`Client` and :func:`fastput`.

A spool holds one file per message, or per batch of messages (``put_many``); the file name
carries the metadata (see ``dropr._codec_py``), so the directory listing is the queue::

    SPOOL/queue/BUCKET/  ready messages, in delivery order by name; BUCKET is the name's
                      priority digit and first 8 id digits (a 4.3 s slice of time)
    SPOOL/tmp/        puts in progress, named by message id
    SPOOL/sent/       acknowledged messages kept for a while
    SPOOL/free/       small acknowledged files, for puts to write new messages into
    SPOOL/failed/     messages rejected for good: NAME and NAME.reason
    SPOOL/names/      texts of peer and channel fields too long for a file name
    SPOOL/client-id   the name this spool goes by towards servers
    SPOOL/relay.lock  held by the running relay

A put is one file created in ``tmp/`` and renamed into its bucket in ``queue/`` (made on
demand): the relay and any reader see a message, or a whole batch, complete or not at all. Buckets keep the
first messages of a deep queue in a few small directories; the relay removes the empty ones.

The relay renames small acknowledged files into ``free/`` (up to :data:`FREE_FILES` of at
most :data:`REUSE_BYTES`) rather than unlinking them, and a put renames one of those into
``tmp/`` and writes over it (see ``dropr._drop_py``): a flowing spool then makes and frees
few inodes, which on a file system without a journal cost most after many deletes.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from . import limits as _limits
from ._files import DIR_FLAGS, DIR_MODE, publish, remove, remove_all
from ._impl import codec, putter
from .errors import InvalidMessage, SpoolError
from .limits import DEFAULT_CHANNEL, DEFAULT_PRIORITY
from .names import Names, check_channel, check_client_id, check_delay, check_peer, check_priority

if TYPE_CHECKING:
    from typing_extensions import Self

PathLike = str | os.PathLike[str]
Payload = bytes | bytearray | memoryview | str

FREE_FILES = 4096
"""At most this many acknowledged files wait in ``free/`` to be written again."""
REUSE_BYTES = 4096
"""Only files of at most this many bytes (one block) go to ``free/``; bigger ones are unlinked."""

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "spool directory missing",
    errno.ENOTDIR: "not a directory",
}


class SpoolMessage(NamedTuple):
    """A queued message, or a batch file of that many ``messages``, as its file name
    describes it (peer and channel as text; ``size`` and ``crc`` of the whole file; ``delay``
    in seconds)."""

    priority: int
    id: str
    peer: str
    channel: str
    size: int
    crc: int
    name: str
    time: float
    messages: int = 1
    delay: float = 0.0


class Spool:
    """A spool directory; with ``create`` its directories are made on first use."""

    def __init__(self, path: PathLike, create: bool = True, *, limits: _limits.Limits | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.limits = limits or _limits.DEFAULT
        self.queue_dir = os.path.join(self.path, "queue")
        self.tmp_dir = os.path.join(self.path, "tmp")
        self.sent_dir = os.path.join(self.path, "sent")
        self.free_dir = os.path.join(self.path, "free")
        self.failed_dir = os.path.join(self.path, "failed")
        self.names_dir = os.path.join(self.path, "names")
        self.client_id_file = os.path.join(self.path, "client-id")
        self._names = Names(self.names_dir)
        self._create = create
        if create:
            self._make_dirs()
        elif not os.path.isdir(self.queue_dir):
            raise SpoolError(errno.ENOENT, f"not a spool (no queue/ directory): {self.path}")

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    def _make_dirs(self) -> None:
        try:
            os.makedirs(self.path, DIR_MODE, exist_ok=True)
            for sub in (self.queue_dir, self.tmp_dir, self.sent_dir, self.free_dir, self.failed_dir, self.names_dir):
                if not os.path.isdir(sub):
                    os.makedirs(sub, DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise spool_error(exc, self.path) from exc

    @property
    def client_id(self) -> str:
        """The spool's client id, created (host name and a hash of the path) on first use."""
        text = self._read_client_id()
        if text:
            return text
        default = default_client_id(self.path)
        if not self._create:
            return default
        return self._write_client_id(default, replace=False)

    def set_client_id(self, client_id: str) -> str:
        """Make ``client_id`` the spool's client id (atomically replacing another one)."""
        check_client_id(client_id, self.limits)
        if self._read_client_id() == client_id:
            return client_id
        return self._write_client_id(client_id, replace=True)

    def _read_client_id(self) -> str:
        """The text of ``client-id``, "" when there is none."""
        try:
            with open(self.client_id_file, encoding="utf-8") as file:
                return file.read().strip()
        except FileNotFoundError:
            return ""

    def _write_client_id(self, client_id: str, replace: bool) -> str:
        try:
            publish(self.client_id_file, (client_id + "\n").encode("utf-8"), replace=replace)
            with open(self.client_id_file, encoding="utf-8") as file:
                return file.read().strip()
        except OSError as exc:
            raise spool_error(exc, self.path) from exc

    def register(self, text: str) -> str:
        """The file-name field of ``text``; a compact field's text is kept in ``names/``."""
        try:
            return self._names.register(text)
        except OSError as exc:
            raise spool_error(exc, self.path) from exc

    def resolve(self, field: str) -> str:
        """The text of a file-name field (read from ``names/`` for a compact one)."""
        return self._names.resolve(field)

    def decode(self, name: str) -> SpoolMessage:
        """A queued message's metadata from its file name; ValueError if it is not one."""
        priority, msg_id, peer, channel, size, crc, count, delay_ms = codec.parse_spool_name(name)
        return SpoolMessage(
            priority,
            msg_id,
            self.resolve(peer),
            self.resolve(channel),
            size,
            crc,
            name,
            codec.id_time_ns(msg_id) / 1e9,
            count,
            delay_ms / 1e3,
        )

    def queued_path(self, name: str) -> str:
        """The path of the queued message ``name``: ``queue/BUCKET/NAME``."""
        return f"{self.queue_dir}/{name[: codec.BUCKET_LEN]}/{name}"

    def fail(self, name: str, reason: str) -> None:
        """Move a queued message to ``failed/`` with its reason, written first as NAME.reason."""
        if "/" in name or name.startswith(".") or len(name) <= codec.BUCKET_LEN:
            raise ValueError(f"not a queued message name: {name!r}")
        source = self.queued_path(name)
        os.stat(source)
        reason_file = os.path.join(self.failed_dir, name + ".reason")
        publish(reason_file, (reason.rstrip("\n") + "\n").encode("utf-8"), replace=True)
        try:
            os.rename(source, os.path.join(self.failed_dir, name))
        except OSError:
            remove(reason_file)
            raise

    def failed(self) -> Iterator[tuple[SpoolMessage, str]]:
        """The failed messages in delivery order, each with its reason."""
        for name in sorted(os.listdir(self.failed_dir)):
            if name.startswith(".") or name.endswith(".reason"):
                continue
            try:
                message = self.decode(name)
            except ValueError:
                continue
            try:
                with open(os.path.join(self.failed_dir, name + ".reason"), encoding="utf-8") as file:
                    reason = file.read().strip()
            except FileNotFoundError:
                reason = ""
            yield message, reason

    def wipe_sent(self, minutes: float) -> int:
        """Remove sent messages put more than ``minutes`` ago; returns how many went."""
        cutoff = time.time_ns() - int(minutes * 60e9)
        expired = []
        with os.scandir(self.sent_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    put_ns = codec.id_time_ns(codec.parse_spool_name(entry.name)[1])
                except ValueError:
                    put_ns = entry.stat().st_mtime_ns
                if put_ns <= cutoff:
                    expired.append(entry.path)
        return remove_all(expired)


class Client:
    """Puts messages into one spool, holding its directories open.

    ``client_id`` sets the spool's client id; ``sync`` makes every put durable (file and
    directory flushed) before it returns.
    """

    def __init__(
        self,
        spool: PathLike | Spool,
        *,
        client_id: str | None = None,
        sync: bool = False,
        limits: _limits.Limits | None = None,
    ):
        self.spool = spool if isinstance(spool, Spool) else Spool(spool, limits=limits)
        self.limits = limits or self.spool.limits
        self.sync = bool(sync)
        if client_id is not None:
            self.spool.set_client_id(client_id)
        self._putter = _open_putter(self.spool, self.limits)

    def __repr__(self) -> str:
        return f"Client({self.spool.path!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the directory handles; further puts fail."""
        self._putter.close()

    def put(
        self,
        payload: Payload,
        *,
        peer: str,
        channel: str = DEFAULT_CHANNEL,
        priority: int = DEFAULT_PRIORITY,
        delay: float = 0,
    ) -> str:
        """Queue ``payload`` for ``peer`` and return the message id once it is in the spool;
        no consumer can claim it before ``delay`` seconds after now."""
        msg_id: str = self._putter.put(payload, peer, channel, priority, delay, self.sync)
        return msg_id

    def put_many(
        self,
        payloads: Iterable[Payload],
        *,
        peer: str,
        channel: str = DEFAULT_CHANNEL,
        priority: int = DEFAULT_PRIORITY,
        delay: float = 0,
    ) -> list[str]:
        """Queue ``payloads`` for ``peer`` as one batch and return their ids, in order, once
        the whole batch is in the spool (one file, shown at once or not at all); each is its
        own message downstream. At most ``batch_count`` messages of ``batch_bytes`` bytes."""
        ids: list[str] = self._putter.put_many(payloads, peer, channel, priority, delay, self.sync)
        return ids


def _open_putter(spool: Spool, limits: _limits.Limits) -> Any:
    """The put path of ``spool`` (a ``Putter`` of the loaded ``putter`` module): its ``tmp/``,
    ``queue/`` and, when there is one (a spool made before it was not given one), ``free/``
    held open, ``limits`` applied."""
    tmp_fd = -1
    try:
        tmp_fd = os.open(spool.tmp_dir, DIR_FLAGS)
        queue_fd = os.open(spool.queue_dir, DIR_FLAGS)
    except OSError as exc:
        if tmp_fd >= 0:
            os.close(tmp_fd)
        raise spool_error(exc, spool.path) from exc
    try:
        free_fd = os.open(spool.free_dir, DIR_FLAGS)
    except OSError:
        free_fd = -1
    fields = functools.partial(_fields, spool, limits)
    failed = functools.partial(spool_error, path=spool.path)
    return putter.Putter(tmp_fd, queue_fd, free_fd, limits, fields, _coerce, failed)


def _fields(spool: Spool, limits: _limits.Limits, peer: object, channel: object) -> tuple[str, str]:
    """The file-name fields of a (peer, channel) pair, checked; compact ones kept in ``names/``."""
    return spool.register(check_peer(peer, limits)), spool.register(check_channel(channel, limits))


def _coerce(payload: object, priority: object, delay: object, max_payload: int) -> tuple[bytes | memoryview, int, int]:
    """``payload`` as bytes, ``priority`` as an int and ``delay`` in milliseconds, checked;
    InvalidMessage if they are not."""
    priority = check_priority(priority)
    delay_ms = check_delay(delay)
    data = payload if type(payload) is bytes else _as_buffer(payload)
    if len(data) > max_payload:
        raise InvalidMessage(f"payload of {len(data)} bytes is over the limit of {max_payload}")
    return data, priority, delay_ms


def _open_for_fastput(spool: PathLike | None) -> Any:
    path = os.environ.get("DROPR_SPOOL") if spool is None else spool
    if not path:
        raise SpoolError(errno.EINVAL, "no spool given: pass spool= or set DROPR_SPOOL")
    opened = Spool(path)
    return _open_putter(opened, opened.limits)


_spools = putter.Spools(_open_for_fastput)

if TYPE_CHECKING:

    def fastput(
        payload: Payload,
        peer: str,
        channel: str = DEFAULT_CHANNEL,
        priority: int = DEFAULT_PRIORITY,
        *,
        spool: PathLike | None = None,
        sync: bool = False,
        delay: float = 0,
    ) -> str:
        """Queue ``payload`` for ``peer`` in ``spool`` and return the message id."""

    def fastput_many(
        payloads: Iterable[Payload],
        peer: str,
        channel: str = DEFAULT_CHANNEL,
        priority: int = DEFAULT_PRIORITY,
        *,
        spool: PathLike | None = None,
        sync: bool = False,
        delay: float = 0,
    ) -> list[str]:
        """Queue ``payloads`` for ``peer`` in ``spool`` as one batch and return their ids."""

else:
    fastput = _spools.fastput
    fastput_many = _spools.fastput_many


def default_client_id(path: PathLike) -> str:
    """``{hostname}-{8 hex}``: unique per host and spool path."""
    digest = hashlib.blake2b(os.path.realpath(path).encode("utf-8", "surrogateescape"), digest_size=4)
    return f"{os.uname().nodename or 'localhost'}-{digest.hexdigest()}"


def spool_error(exc: OSError, path: str) -> SpoolError:
    """A SpoolError that keeps ``exc``'s errno and says what went wrong with which spool."""
    if isinstance(exc, SpoolError):
        return exc
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return SpoolError(exc.errno or errno.EIO, f"{reason}: cannot put into spool {path}")


def _as_buffer(payload: object) -> bytes | memoryview:
    if isinstance(payload, str):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"payload is not valid text: {exc}") from None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        view = memoryview(payload)
        return view.cast("B") if view.c_contiguous else view.tobytes()
    raise InvalidMessage(f"payload must be bytes or str, not {type(payload).__name__}")
