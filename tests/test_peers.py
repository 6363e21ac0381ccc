"""The peers beyond one server: ``group:NAME`` and ``nats://`` names, accepted by every put
path, and the relay configuration that defines groups and NATS settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from relaykit import queued

import dropr
from dropr import spool
from dropr.errors import InvalidMessage
from dropr.names import check_peer, nats_servers
from dropr.relay import config

GOOD = [
    "group:orders",
    "group:eu.orders-2",
    "group:ü",
    "nats://127.0.0.1:4222",
    "nats://a.example:4222,b.example:4223,[::1]:4224",
]
BAD = [
    ("group:", "non-empty"),
    ("group:a b", "white space"),
    ("group:a\u2028b", "white space or control"),
    ("nats://a.example", "nats://host:port"),
    ("nats://a:4222,", "nats://host:port"),
    ("nats://a:4222,,b:1", "nats://host:port"),
    ("nats://:4222", "nats://host:port"),
    ("nats://a:0", "nats://host:port"),
    ("nats://a:65536", "bad NATS server"),
    ("nats://a:x", "bad NATS server"),
    ("nats://user:secret@a:4222", "nats://host:port"),
    ("nats://a:4222/dropr", "nats://host:port"),
    ("nats://a:4222?x=1", "nats://host:port"),
    ("NATS://a:4222", "peer must be"),
    ("nats:/a:4222", "peer must be"),
    ("group", "peer must be"),
]


@pytest.mark.parametrize("peer", GOOD)
def test_group_and_nats_peers_are_taken_by_put(tmp_path: Path, peer: str) -> None:
    assert check_peer(peer) == peer
    with spool.Client(tmp_path) as client:
        client.put(b"x", peer=peer)
    (name,) = queued(tmp_path)
    assert client.spool.decode(name).peer == peer


@pytest.mark.parametrize(("peer", "word"), BAD)
def test_bad_group_and_nats_peers_are_refused_and_write_nothing(tmp_path: Path, peer: str, word: str) -> None:
    with pytest.raises(InvalidMessage, match=word):
        check_peer(peer)
    with spool.Client(tmp_path) as client, pytest.raises(InvalidMessage):
        client.put(b"x", peer=peer)
    assert queued(tmp_path) == [] and os.listdir(tmp_path / "tmp") == []


def test_fastput_takes_a_group_and_a_nats_peer(tmp_path: Path) -> None:
    msg_id = dropr.fastput(b"x", "group:orders", spool=str(tmp_path))
    with pytest.raises(InvalidMessage):
        dropr.fastput(b"x", "group:a b", spool=str(tmp_path))
    (name,) = queued(tmp_path)
    assert spool.Spool(tmp_path).decode(name)[:3] == (9, msg_id, "group:orders")
    dropr.fastput(b"y", "nats://127.0.0.1:4222", spool=str(tmp_path / "other"))
    (name,) = queued(tmp_path / "other")
    assert spool.Spool(tmp_path / "other").decode(name).peer == "nats://127.0.0.1:4222"


@pytest.mark.parametrize("peer", ["group:orders", "nats://127.0.0.1:4222,127.0.0.1:4223"])
def test_dropr_put_takes_group_and_nats_peers(tmp_path: Path, peer: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dropr.cli.main", "put", "--spool", str(tmp_path), "--peer", peer],
        input="payload", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (name,) = queued(tmp_path)
    assert spool.Spool(tmp_path).decode(name).peer == peer


def test_a_nats_peer_lists_its_servers() -> None:
    assert nats_servers("nats://a:4222,b:4223") == ["nats://a:4222", "nats://b:4223"]
    assert nats_servers("nats://[::1]:4222") == ["nats://[::1]:4222"]


def read(tmp_path: Path, text: str) -> config.RelayConfig:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return config.build(str(tmp_path / "spool"), config.read_file(str(path)), {})


def test_groups_and_nats_settings_in_the_configuration(tmp_path: Path) -> None:
    built = read(
        tmp_path,
        'token = "general"\n'
        '[groups.orders]\npeers = ["http://a:1/", "nats://n:4222"]\nmode = "spread"\n'
        '[groups."eu.orders"]\npeers = ["file:///var/lib/dropr/store"]\n'
        '[peers."nats://n:4222"]\nuser = "dropr"\npassword = "pw"\nsubject_prefix = "mq.dropr."\n',
    )
    assert built.groups == {
        "orders": config.GroupConfig(("http://a:1/", "nats://n:4222"), "spread"),
        "eu.orders": config.GroupConfig(("file:///var/lib/dropr/store",), "failover"),
    }
    nats = built.peer("nats://n:4222")
    assert (nats.user, nats.password, nats.subject_prefix, nats.token) == ("dropr", "pw", "mq.dropr.", "general")
    assert built.peer("http://a:1/") == config.PeerConfig(token="general")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups = 1", "groups must be a table"),
        ("[groups.orders]\nmode = 'failover'", r"groups.'orders'.peers must be a non-empty list"),
        ("[groups.orders]\npeers = []", r"groups.'orders'.peers must be a non-empty list"),
        ("[groups.orders]\npeers = ['ftp://a/']", r"groups.'orders'.peers: peer must be"),
        ("[groups.orders]\npeers = [3]", r"groups.'orders'.peers: peer must be a URL"),
        ("[groups.orders]\npeers = ['group:other']", "a group cannot be a member of a group"),
        ("[groups.orders]\npeers = ['http://a/', 'http://a/']", "names a member twice"),
        ("[groups.orders]\npeers = ['http://a/']\nmode = 'random'", r"groups.'orders'.mode must be one of"),
        ("[groups.orders]\npeers = ['http://a/']\nweight = 2", r"groups.'orders': unknown setting 'weight'"),
        ("[groups.'a b']\npeers = ['http://a/']", r"groups.'a b': not a usable group name"),
        ("[groups]\norders = 'http://a/'", r"groups.'orders' must be a table"),
        ("[peers.'http://a/']\nuser = 'u'", r"peers.'http://a/'.user is for nats:// peers only"),
        ("[peers.'http://a/']\nsubject_prefix = 'x.'", r"subject_prefix is for nats:// peers only"),
        ("[peers.'nats://n:1']\npassword = 'p'", r"peers.'nats://n:1'.password needs a user"),
        ("[peers.'nats://n:1']\nsubject_prefix = 'dropr'", "subject_prefix must be subject tokens"),
        ("[peers.'nats://n:1']\nsubject_prefix = 'a..'", "subject_prefix must be subject tokens"),
        ("[peers.'nats://n:1']\nsubject_prefix = 'a.>.'", "subject_prefix must be subject tokens"),
        ("[peers.'nats://n:1']\nuser = ''", r"peers.'nats://n:1'.user must be a non-empty string"),
        ("retry_for_seconds = -1", "retry_for_seconds must be a number of 0 or more"),
    ],
)
def test_bad_group_and_peer_settings_are_one_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message) as info:
        read(tmp_path, text)
    assert "\n" not in str(info.value)


def test_the_example_configuration_s_commented_examples_are_what_the_relay_takes(tmp_path: Path) -> None:
    """Uncommented, the group and NATS examples of scripts/relay.toml configure the relay."""
    example = Path(__file__).resolve().parent.parent / "scripts" / "relay.toml"
    lines = [
        re.sub(r"^# (?=\[|[a-z_]+ = )", "", line)
        for line in example.read_text().splitlines()
        if "ca_file" not in line  # a CA file that exists on every machine is not the example's point
    ]
    built = read(tmp_path, "\n".join(lines) + "\n")
    assert built.groups["orders"].mode == "failover" and len(built.groups["orders"].peers) == 2
    (nats_url,) = (url for url in built.peers if url.startswith("nats://"))
    assert built.peer(nats_url).user == "dropr" and built.peer(nats_url).subject_prefix == "dropr."
