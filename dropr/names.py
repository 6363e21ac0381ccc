"""The one rule set for every text that becomes a name, and the registry of long names.

Producer, relay, server and store all check a channel, group, client id, peer, priority or
message id here, so a text is either refused at put with :class:`~dropr.errors.InvalidMessage`
or accepted everywhere downstream. The rules:

- **channel** and **group**: non-empty text of printable characters (``str.isprintable``: no
  control, separator other than the space, format or unassigned characters), at most
  ``max_channel`` bytes of UTF-8. Dots and slashes are just characters: ``..`` is a channel.
- **client id**: the same, without any white space, at most ``max_client`` bytes.
- **peer**: ``http://host[:port]/path``, ``https://…``, ``file:///absolute/path``,
  ``nats://host:port[,host:port...]`` (a NATS cluster: no credentials, no path) or
  ``group:NAME`` (a peer group of the relay's configuration, ``NAME`` by the client id's
  rule), at most ``max_peer`` bytes, no white space or control characters.
- **priority**: an ``int`` from 0 (first) to 9 (``bool`` is not one).
- **delay**: an ``int`` or ``float`` of seconds, zero up to ``MAX_DELAY_SECONDS`` (``bool``
  is not one); a file name carries it in whole milliseconds, rounded up so that it is never due early.
- **message id**: 30 lower-case hex digits.

Every such text becomes a file-name *field* by :func:`field`: bytes of its UTF-8 outside
``A-Za-z0-9._-`` as ``%XX``, a leading dot too (so no field is ``.``, ``..`` or hidden), and a
field longer than the codec's limit as ``~`` and a digest whose text :class:`Names` keeps in a
``names/`` directory. Fields never hold ``/``, NUL or ``+``: no name can lead outside the
directory it is made in.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import re
import urllib.parse

from . import limits as _limits
from ._files import publish, sync_directory
from ._impl import codec
from .errors import InvalidMessage

PRIORITIES = range(10)
PEER_SCHEMES = ("http", "https", "file")
"""The schemes of peers that are URLs; ``nats://`` and ``group:`` peers are told by their prefix."""
GROUP_PREFIX = "group:"
NATS_PREFIX = "nats://"

_WHITE_SPACE = re.compile(r"\s")
_COMPACT_FIELD = re.compile(r"~[0-9a-f]{32}")
CACHE_LIMIT = 4096


def check_priority(priority: object) -> int:
    """``priority`` as an int 0-9; InvalidMessage for anything else (bool included)."""
    if not isinstance(priority, bool):
        try:
            value = operator.index(priority)  # type: ignore[arg-type]
        except TypeError:
            value = -1
        if value in PRIORITIES:
            return value
    raise InvalidMessage(f"priority must be a whole number from 0 to 9, not {priority!r}")


def check_delay(delay: object) -> int:
    """``delay`` (seconds) in whole milliseconds, rounded up; InvalidMessage for anything but
    an int or float from 0 to ``MAX_DELAY_SECONDS`` (NaN, infinities and ``bool`` included)."""
    if isinstance(delay, (int, float)) and not isinstance(delay, bool) and 0 <= delay <= _limits.MAX_DELAY_SECONDS:
        # Rounded to the nanosecond first, so 0.1 s is 100 ms and not 101.
        return math.ceil(round(float(delay) * 1000, 6))
    raise InvalidMessage(f"delay must be a number of seconds from 0 to {_limits.MAX_DELAY_SECONDS:.0f}, not {delay!r}")


def check_name(what: str, text: object, max_bytes: int, *, spaces: bool = True) -> str:
    """``text`` if it is a usable name: non-empty printable text within ``max_bytes`` of UTF-8
    (and without white space unless ``spaces``); InvalidMessage saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise InvalidMessage(f"{what} must be a non-empty string, not {text!r}")
    if not text.isprintable():
        raise InvalidMessage(f"{what} holds control or unprintable characters: {text!r}")
    if not spaces and _WHITE_SPACE.search(text):
        raise InvalidMessage(f"{what} holds white space: {text!r}")
    if len(text.encode("utf-8")) > max_bytes:
        raise InvalidMessage(f"{what} is longer than {max_bytes} bytes")
    return text


def check_channel(channel: object, limits: _limits.Limits = _limits.DEFAULT) -> str:
    """``channel`` if it is a usable channel name."""
    return check_name("channel", channel, limits.max_channel)


def check_group(group: object, limits: _limits.Limits = _limits.DEFAULT) -> str:
    """``group`` if it is a usable consumer group name (the rule of channels)."""
    return check_name("group", group, limits.max_channel)


def check_client_id(client_id: object, limits: _limits.Limits = _limits.DEFAULT) -> str:
    """``client_id`` if it is a usable client id."""
    return check_name("client id", client_id, limits.max_client, spaces=False)


def check_message_id(msg_id: object) -> str:
    """``msg_id`` if it has the form of a message id (30 lower-case hex digits)."""
    if not isinstance(msg_id, str) or not codec.is_message_id(msg_id):
        raise InvalidMessage(f"message id must be 30 lower-case hex digits, not {msg_id!r}")
    return msg_id


def check_peer(peer: object, limits: _limits.Limits = _limits.DEFAULT) -> str:
    """``peer`` if it is an ``http://``, ``https://``, ``file:///``, ``nats://`` or ``group:``
    peer dropr can use."""
    if not isinstance(peer, str) or not peer:
        raise InvalidMessage(f"peer must be a URL, not {peer!r}")
    if len(peer.encode("utf-8", "surrogatepass")) > limits.max_peer:
        raise InvalidMessage(f"peer URL is longer than {limits.max_peer} bytes")
    if _WHITE_SPACE.search(peer) or not peer.isprintable():
        raise InvalidMessage(f"peer URL holds white space or control characters: {peer!r}")
    if peer.startswith(GROUP_PREFIX):
        check_name("peer group name", peer[len(GROUP_PREFIX) :], limits.max_peer, spaces=False)
        return peer
    if peer.startswith(NATS_PREFIX):
        nats_servers(peer)
        return peer
    try:
        url = urllib.parse.urlsplit(peer)
        port = url.port
    except ValueError as exc:
        raise InvalidMessage(f"bad peer URL {peer!r}: {exc}") from None
    if url.scheme not in PEER_SCHEMES:
        raise InvalidMessage(f"peer must be an http://, https://, file:///, nats:// or group: peer, not {peer!r}")
    if url.scheme == "file":
        if url.netloc or not url.path.startswith("/") or url.query or url.fragment:
            raise InvalidMessage(f"a file peer is file:///absolute/path, not {peer!r}")
    elif not url.hostname:
        raise InvalidMessage(f"peer URL has no host: {peer!r}")
    elif port == 0:
        raise InvalidMessage(f"peer URL has port 0: {peer!r}")
    return peer


def nats_servers(peer: str) -> list[str]:
    """The server URLs of a ``nats://host:port[,host:port...]`` peer, each ``host:port``
    checked; InvalidMessage for a peer that is not one (credentials belong in the relay's
    configuration, not in every message's name)."""
    servers = []
    for part in peer[len(NATS_PREFIX) :].split(","):
        try:
            url = urllib.parse.urlsplit(NATS_PREFIX + part)
            port = url.port
        except ValueError as exc:
            raise InvalidMessage(f"bad NATS server {part!r} in {peer!r}: {exc}") from None
        if not url.hostname or not port or url.username is not None or url.password is not None:
            raise InvalidMessage(f"a NATS peer is nats://host:port[,host:port...], not {peer!r}")
        if url.path or url.query or url.fragment or part.endswith(":"):
            raise InvalidMessage(f"a NATS peer is nats://host:port[,host:port...], not {peer!r}")
        servers.append(NATS_PREFIX + part)
    return servers


def field(text: str) -> str:
    """The file-name field of a name's text: escaped, a leading dot too; compact when long."""
    escaped: str = codec.escape(text)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
        if len(escaped) > codec.MAX_FIELD:
            escaped = codec.compact(text)
    return escaped


class Names:
    """The texts of compact fields, kept in a ``names/`` directory: written once (durably:
    a message naming a field must never outlive its text), read once, cached.

    ``written`` counts the texts this object wrote, so a caller can tell that ``names/``
    changed.
    """

    def __init__(self, names_dir: str) -> None:
        self.dir = names_dir
        self.written = 0
        self._texts: dict[str, str] = {}

    def register(self, text: str) -> str:
        """The field of ``text``; for a compact one its text is stored first."""
        name = field(text)
        if name.startswith(codec.COMPACT) and name not in self._texts:
            publish(os.path.join(self.dir, name), text.encode("utf-8"), replace=False, sync=True)
            sync_directory(self.dir)
            self.written += 1
            self._remember(name, text)
        return name

    def resolve(self, name: str) -> str:
        """The text of a field: ValueError for one that is not a field, FileNotFoundError
        when a compact field's text is missing."""
        text = self._texts.get(name)
        if text is not None:
            return text
        if name.startswith(codec.COMPACT):
            if not _COMPACT_FIELD.fullmatch(name):
                raise ValueError(f"not a compact field: {name!r}")
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8") as file:
                    text = file.read()
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"the text of field {name} is missing") from None
        else:
            text = codec.unescape(name)
        self._remember(name, text)
        return text

    def _remember(self, name: str, text: str) -> None:
        if len(self._texts) >= CACHE_LIMIT:
            self._texts.clear()
        self._texts[name] = text
