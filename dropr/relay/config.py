"""The relay's settings: command-line options over a configuration file over defaults.

The configuration file is TOML (or JSON when its name ends in ``.json``)::

    token = "secret"                 # bearer token for every peer (also --token, $DROPR_TOKEN)
    ca_file = "/etc/ssl/our-ca.pem"  # trusted CA for https peers (also --ca-file)
    batch_count = 1000               # messages per request
    batch_bytes = 8388608            # payload bytes per request (one larger message goes alone)
    scan_limit = 4000                # names taken from the queue per scan, while it is shallow
    scan_limit_max = 16000           # the most per scan of a deep queue: bounds the relay's memory
    survey_bytes = 2097152           # directory bytes one look for peers not known yet reads
    parallel = 1                     # requests in flight per peer
    max_age_minutes = 10080          # older queued messages go to failed/ as "expired"
    keep_sent_minutes = 0            # 0: acknowledged messages are deleted in the background
    rescan_seconds = 1.0             # fallback rescan of the queue, besides inotify
    timeout_seconds = 60.0           # a request slower than this fails (peer backs off)
    connect_timeout_seconds = 5.0
    backoff_min_seconds = 0.1        # first delay after a failure; doubles, jittered
    backoff_max_seconds = 30.0
    retry_for_seconds = 30.0         # with --once: how long a failing peer is retried

    [peers."https://mq.example.org/"]
    token = "other-secret"           # a peer's own token wins over the general one
    ca_file = "/etc/ssl/mq-ca.pem"

    [peers."nats://n1:4222,n2:4222,n3:4222"]
    user = "dropr"                   # NATS credentials (or token = "..."), for nats:// peers
    password = "secret"
    subject_prefix = "dropr."        # subjects are PREFIX + the escaped channel

    [groups.orders]                  # producers address it as the peer "group:orders"
    peers = ["http://a:8850/", "http://b:8850/"]   # http(s), file or nats peers, not groups
    mode = "failover"                # or "spread"

Command-line options win over the file; the file's ``token`` wins over ``$DROPR_TOKEN``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import limits as _limits
from .. import names
from ..errors import InvalidMessage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - depends on the interpreter
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


class ConfigError(ValueError):
    """A configuration file or option the relay cannot use; the message says which key."""


GROUP_MODES = ("failover", "spread")
"""``failover``: the first member not failing, in order; ``spread``: round robin."""


@dataclass(frozen=True)
class PeerConfig:
    """What one peer needs beyond its URL (``user``, ``password``, ``subject_prefix``: NATS)."""

    token: str | None = None
    ca_file: str | None = None
    user: str | None = None
    password: str | None = None
    subject_prefix: str | None = None


@dataclass(frozen=True)
class GroupConfig:
    """A peer group: its members' URLs, in order, and how batches go to them."""

    peers: tuple[str, ...]
    mode: str = "failover"


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay worker needs; see the module docstring for the meaning of each."""

    spool: str
    once: bool = False
    token: str | None = None
    ca_file: str | None = None
    batch_count: int = _limits.DEFAULT.batch_count
    batch_bytes: int = _limits.DEFAULT.batch_bytes
    scan_limit: int = 4 * _limits.DEFAULT.batch_count
    scan_limit_max: int = 16_000
    survey_bytes: int = 2 << 20
    parallel: int = 1
    max_age_minutes: float = 7 * 24 * 60
    keep_sent_minutes: float = 0.0
    rescan_seconds: float = 1.0
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    backoff_min_seconds: float = 0.1
    backoff_max_seconds: float = 30.0
    retry_for_seconds: float = 30.0
    peers: Mapping[str, PeerConfig] = field(default_factory=dict)
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (``--metrics HOST:PORT``); None: nowhere."""

    def peer(self, url: str) -> PeerConfig:
        """The settings for ``url``: its own entry, filled in with the general ones."""
        own = self.peers.get(url, PeerConfig())
        return dataclasses.replace(own, token=own.token or self.token, ca_file=own.ca_file or self.ca_file)


_INTS = ("batch_count", "batch_bytes", "scan_limit", "scan_limit_max", "survey_bytes", "parallel")
_FLOATS = (
    "max_age_minutes",
    "keep_sent_minutes",
    "rescan_seconds",
    "timeout_seconds",
    "connect_timeout_seconds",
    "backoff_min_seconds",
    "backoff_max_seconds",
    "retry_for_seconds",
)
_TEXTS = ("token", "ca_file")
_PEER_TEXTS = tuple(f.name for f in dataclasses.fields(PeerConfig))
_NATS_ONLY = ("user", "password", "subject_prefix")
_SUBJECT_PREFIX = re.compile(r"(?:[^\s.*>]+\.)+")


def read_file(path: str) -> dict[str, Any]:
    """The settings held in a TOML or JSON configuration file, checked."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            raw = json.loads(data)
        elif tomllib is None:
            raise ConfigError("a TOML configuration needs Python 3.11 or tomli; or use a .json file")
        else:
            raw = tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"configuration {path} is not valid: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {path} must hold a table of settings")
    return _check(raw, path)


def _check(raw: dict[str, Any], path: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "peers":
            settings["peers"] = _check_peers(value, path)
        elif key == "groups":
            settings["groups"] = _check_groups(value, path)
        elif key in _INTS:
            if type(value) is not int or value < 1:
                raise ConfigError(f"{path}: {key} must be a whole number of 1 or more")
            settings[key] = value
        elif key in _FLOATS:
            if type(value) not in (int, float) or not value >= 0:
                raise ConfigError(f"{path}: {key} must be a number of 0 or more")
            settings[key] = float(value)
        elif key in _TEXTS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: {key} must be a non-empty string")
            settings[key] = value
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return settings


def _check_peers(value: Any, path: str) -> dict[str, PeerConfig]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: peers must be a table of peer URLs")
    peers = {}
    for url, entry in value.items():
        where = f"{path}: peers.{url!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(entry) - set(_PEER_TEXTS)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {min(unknown)!r}")
        for key, text in entry.items():
            if not isinstance(text, str) or not text:
                raise ConfigError(f"{where}.{key} must be a non-empty string")
            if key in _NATS_ONLY and not url.startswith(names.NATS_PREFIX):
                raise ConfigError(f"{where}.{key} is for nats:// peers only")
        if "password" in entry and "user" not in entry:
            raise ConfigError(f"{where}.password needs a user")
        prefix = entry.get("subject_prefix")
        if prefix is not None and not _SUBJECT_PREFIX.fullmatch(prefix):
            raise ConfigError(f"{where}.subject_prefix must be subject tokens each ending with a dot, like 'dropr.'")
        peers[url] = PeerConfig(**entry)
    return peers


def _check_groups(value: Any, path: str) -> dict[str, GroupConfig]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: groups must be a table of group names")
    groups = {}
    for name, entry in value.items():
        where = f"{path}: groups.{name!r}"
        try:
            names.check_peer(names.GROUP_PREFIX + name)
        except InvalidMessage as exc:
            raise ConfigError(f"{where}: not a usable group name: {exc}") from None
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(entry) - {"peers", "mode"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting {min(unknown)!r}")
        mode = entry.get("mode", "failover")
        if mode not in GROUP_MODES:
            raise ConfigError(f"{where}.mode must be one of {', '.join(map(repr, GROUP_MODES))}")
        members = entry.get("peers")
        if not isinstance(members, list) or not members:
            raise ConfigError(f"{where}.peers must be a non-empty list of peer URLs")
        for member in members:
            try:
                names.check_peer(member)
            except InvalidMessage as exc:
                raise ConfigError(f"{where}.peers: {exc}") from None
            if member.startswith(names.GROUP_PREFIX):
                raise ConfigError(f"{where}.peers: a group cannot be a member of a group: {member!r}")
        if len(set(members)) < len(members):
            raise ConfigError(f"{where}.peers names a member twice")
        groups[name] = GroupConfig(tuple(members), mode)
    return groups


def build(spool: str, file_settings: Mapping[str, Any], options: Mapping[str, Any]) -> RelayConfig:
    """A RelayConfig from the file's settings and the options given (None = not given)."""
    settings = dict(file_settings)
    settings.update({key: value for key, value in options.items() if value is not None})
    known = {f.name for f in dataclasses.fields(RelayConfig)}
    config = RelayConfig(spool=spool, **{k: v for k, v in settings.items() if k in known})
    if config.backoff_min_seconds <= 0 or config.backoff_max_seconds < config.backoff_min_seconds:
        raise ConfigError("backoff needs 0 < backoff_min_seconds <= backoff_max_seconds")
    if config.rescan_seconds <= 0 or config.timeout_seconds <= 0:
        raise ConfigError("rescan_seconds and timeout_seconds must be more than 0")
    for ca_file in [config.ca_file, *(peer.ca_file for peer in config.peers.values())]:
        if ca_file and not os.access(ca_file, os.R_OK):
            raise ConfigError(f"cannot read CA file {ca_file}")
    return config
