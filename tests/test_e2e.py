"""End to end: producers put, a real relay forwards over HTTP (real servers) and over the
local file:// transport, and the stores hold every message once, whole, in delivery order."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

import dropr

sys.path.insert(0, os.path.dirname(__file__))
from relaykit import (
    RelayProcess,
    check_stored_once,
    in_delivery_order,
    peer_for,
    queued,
    queued_path,
    run_relay,
    stored,
    stored_count,
    wait_until,
)
from support import start_server

pytestmark = pytest.mark.timeout(600)

CHANNELS = ("orders", "mails", "compact-" + "x" * 100)


def put_many(
    spool: Path, peers: list[str], count: int, seed: int = 7
) -> tuple[dict[str, bytes], dict[str, int], dict[str, tuple[str, str]]]:
    """``count`` messages spread over ``peers`` and CHANNELS with random priorities."""
    rng = random.Random(seed)
    sent: dict[str, bytes] = {}
    priority: dict[str, int] = {}
    where: dict[str, tuple[str, str]] = {}
    client = dropr.Client(spool)
    for i in range(count):
        peer = peers[i % len(peers)]
        channel = CHANNELS[rng.randrange(len(CHANNELS))]
        payload = f"message {i} ".encode() + os.urandom(rng.randrange(0, 300))
        prio = rng.randrange(10)
        msg_id = client.put(payload, peer=peer, channel=channel, priority=prio)
        sent[msg_id] = payload
        priority[msg_id] = prio
        where[msg_id] = (peer, channel)
    client.close()
    return sent, priority, where


def test_ten_thousand_messages_over_three_channels_and_two_servers(tmp_path: Path) -> None:
    stores = [tmp_path / "store-a", tmp_path / "store-b"]
    with start_server(stores[0]) as a, start_server(stores[1]) as b:
        sent, priority, where = put_many(tmp_path / "spool", [a.url, b.url], 10_000)
        done = run_relay(tmp_path / "spool", "--once", "--no-supervise", "--parallel", "2")
        assert done.returncode == 0, done.stderr
        assert queued(tmp_path / "spool") == []
        check_stored_once(stores, sent)
        for store_dir, url in zip(stores, (a.url, b.url), strict=True):
            held = stored(store_dir)
            assert set(held) == set(CHANNELS)
            for channel, messages in held.items():
                assert all(where[msg_id] == (url, channel) for msg_id, _ in messages)
                assert in_delivery_order(messages, priority)
    assert os.listdir(tmp_path / "spool" / "failed") == []


def test_local_transport_end_to_end(tmp_path: Path) -> None:
    peer = (tmp_path / "local store").as_uri()
    sent, priority, _ = put_many(tmp_path / "spool", [peer], 2000)
    done = run_relay(tmp_path / "spool", "--once", "--no-supervise", "--batch-count", "300")
    assert done.returncode == 0, done.stderr
    assert queued(tmp_path / "spool") == []
    check_stored_once([tmp_path / "local store"], sent)
    for messages in stored(tmp_path / "local store").values():
        assert in_delivery_order(messages, priority)
    assert not [n for n in os.listdir(tmp_path / "local store" / "tmp") if n.startswith("relay-")]
    assert os.listdir(tmp_path / "spool" / "sent") == []


@pytest.mark.parametrize("transport", ["http", "local"])
def test_channels_of_dots_and_slashes_are_just_channels(tmp_path: Path, transport: str) -> None:
    """The one rule set: what put accepts, the relay, the server and the store take as it is."""
    spool, store = tmp_path / "spool", tmp_path / "store"
    channels = ["..", ".", "../x", "/", "a b/ü", ".hidden"]
    with peer_for(transport, store) as peer:
        ids = {dropr.fastput(c.encode(), peer, c, spool=str(spool)): c for c in channels}
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
    held = stored(store)
    assert sorted(held) == sorted(channels)
    for channel, [(msg_id, payload)] in held.items():
        assert ids[msg_id] == channel and payload == channel.encode()
    assert sorted(os.listdir(tmp_path)) == ["spool", "store"]
    assert os.listdir(spool / "failed") == []


@pytest.mark.parametrize("transport", ["http", "local"])
def test_a_message_sent_again_is_acknowledged_and_kept_once(tmp_path: Path, transport: str) -> None:
    """As after a relay crash between the peer's answer and the removal from the queue."""
    spool = tmp_path / "spool"
    store = tmp_path / "store"
    with peer_for(transport, store) as peer:
        sent, _, _ = put_many(spool, [peer], 20)
        kept = {name: queued_path(spool, name).read_bytes() for name in queued(spool)}
        assert run_relay(spool, "--once", "--no-supervise").returncode == 0
        for name, payload in kept.items():
            queued_path(spool, name).parent.mkdir(exist_ok=True)
            queued_path(spool, name).write_bytes(payload)
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
        assert queued(spool) == []
        check_stored_once([store], sent)


def test_a_queue_deeper_than_the_scan_window_is_sent_once(tmp_path: Path) -> None:
    """The window grows and shrinks while draining; no name comes back from a scan to be resent."""
    config = tmp_path / "relay.toml"
    config.write_text("scan_limit = 40\nscan_limit_max = 300\nbatch_count = 50\n")
    with start_server(tmp_path / "store") as server:
        sent, priority, _ = put_many(tmp_path / "spool", [server.url], 3000)
        done = run_relay(
            tmp_path / "spool", "--once", "--no-supervise", "--config", str(config), "--log-level", "debug"
        )
        assert done.returncode == 0, done.stderr
    assert queued(tmp_path / "spool") == []
    assert " sent in " in done.stderr and "'duplicate'" not in done.stderr
    check_stored_once([tmp_path / "store"], sent)
    for messages in stored(tmp_path / "store").values():
        assert in_delivery_order(messages, priority)


def backdate(spool: Path, sent: dict[str, bytes], buckets: int) -> dict[str, bytes]:
    """Renames the queued messages as if put ten minutes ago, over ``buckets`` time slices."""
    aged: dict[str, bytes] = {}
    for i, name in enumerate(queued(spool)):
        msg_id = name[1:31]
        put_ns = int(msg_id[:16], 16) - 600 * 10**9 + (i * buckets // len(sent)) * 5 * 10**9
        new_id = f"{put_ns:016x}{msg_id[16:]}"
        target = queued_path(spool, name[0] + new_id + name[31:])
        target.parent.mkdir(exist_ok=True)
        queued_path(spool, name).rename(target)
        aged[new_id] = sent[msg_id]
    return aged


def test_drained_buckets_are_removed_as_the_relay_goes(tmp_path: Path) -> None:
    """Each scan removes the empty old buckets before its first name; none holding a message."""
    config = tmp_path / "relay.toml"
    config.write_text("scan_limit = 40\nscan_limit_max = 100\nbatch_count = 20\n")
    spool, store = tmp_path / "spool", tmp_path / "store"
    sent, _, _ = put_many(spool, [store.as_uri()], 1000)
    sent = backdate(spool, sent, buckets=8)
    for bucket in (spool / "queue").iterdir():
        if not any(bucket.iterdir()):
            bucket.rmdir()
    assert len(os.listdir(spool / "queue")) >= 8
    done = run_relay(spool, "--once", "--no-supervise", "--config", str(config), "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    assert os.listdir(spool / "queue") == []
    check_stored_once([store], sent)


def test_relay_forwards_while_producers_put(tmp_path: Path) -> None:
    """A running relay (supervised, as users run it) keeps up with puts and stores them all."""
    store = tmp_path / "store"
    with start_server(store) as server, RelayProcess(tmp_path / "spool", "--log-level", "debug") as relay:
        relay.wait_started()
        sent, _, _ = put_many(tmp_path / "spool", [server.url, (tmp_path / "local").as_uri()], 3000)
        wait_until(lambda: stored_count(store) + stored_count(tmp_path / "local") == 3000, timeout=120)
        wait_until(lambda: queued(tmp_path / "spool") == [], timeout=30)
        assert relay.stop() == 0, relay.log()
    check_stored_once([store, tmp_path / "local"], sent)
