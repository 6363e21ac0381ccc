"""Batches and delays end to end: ``put_many`` files and single puts through a real relay,
over HTTP to a real server and over the local ``file://`` transport, into real stores.

Downstream of the spool every message of a batch is its own message: stored once by
(client, id), in delivery order with the other messages of its channel, claimed,
processed, failed and dead-lettered one by one; a delayed one waits aside until it is due.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from relaykit import (
    check_stored_once,
    in_delivery_order,
    kill_relays_then_drain,
    kill_servers_while_relaying,
    peer_for,
    queued,
    queued_path,
    run_relay,
    stored,
    wait_until,
)
from support import free_port, start_server

import dropr
from dropr import _codec_py
from dropr.store import Store

pytestmark = pytest.mark.timeout(600)

CHANNELS = ("orders", "mails", "compact-" + "x" * 100)
TRANSPORTS = ["http", "local"]


def put_mixed(
    spool: Path, peer: str, count: int, seed: int = 3, delay: float = 0
) -> tuple[dict[str, bytes], dict[str, int]]:
    """About ``count`` messages: batches of 2 to 60 and single puts, over CHANNELS and
    random priorities; ``(payload by id, priority by id)``."""
    rng = random.Random(seed)
    sent: dict[str, bytes] = {}
    priority: dict[str, int] = {}
    with dropr.Client(spool) as client:
        while len(sent) < count:
            channel, prio = rng.choice(CHANNELS), rng.randrange(10)
            if rng.random() < 0.3:
                payloads = [os.urandom(rng.randrange(0, 300))]
                ids = [client.put(payloads[0], peer=peer, channel=channel, priority=prio, delay=delay)]
            else:
                payloads = [
                    f"{len(sent) + i} ".encode() + os.urandom(rng.randrange(0, 200))
                    for i in range(rng.randrange(2, 61))
                ]
                ids = client.put_many(payloads, peer=peer, channel=channel, priority=prio, delay=delay)
            sent.update(zip(ids, payloads, strict=True))
            priority.update(dict.fromkeys(ids, prio))
    return sent, priority


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_batches_mixed_with_single_puts_are_stored_once_in_delivery_order(tmp_path: Path, transport: str) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    with peer_for(transport, store) as peer:
        sent, priority = put_mixed(spool, peer, 3000)
        done = run_relay(spool, "--once", "--no-supervise", "--batch-count", "200")
        assert done.returncode == 0, done.stderr
    assert queued(spool) == [] and os.listdir(spool / "failed") == []
    check_stored_once([store], sent)
    held = stored(store)
    assert set(held) == set(CHANNELS)
    for messages in held.values():
        assert in_delivery_order(messages, priority)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_message_of_a_batch_is_claimed_processed_failed_and_dead_on_its_own(
    tmp_path: Path, transport: str
) -> None:
    spool, store_dir = tmp_path / "spool", tmp_path / "store"
    with peer_for(transport, store_dir) as peer:
        first = dropr.fastput_many([b"a", b"b", b"c", b"d"], peer, "jobs", 5, spool=str(spool))
        single = dropr.fastput(b"urgent", peer, "jobs", 0, spool=str(spool))
        second = dropr.fastput_many([b"e", b"f"], peer, "jobs", 5, spool=str(spool))
        assert run_relay(spool, "--once", "--no-supervise").returncode == 0
    store = Store(store_dir, max_attempts=2, retry_delay=0)
    assert [m.id for m in store.messages("jobs")] == [single, *first, *second]
    claimed = store.claim("jobs", 3, 60)
    assert [(m.id, m.read()) for m in claimed] == [(single, b"urgent"), (first[0], b"a"), (first[1], b"b")]
    store.set_processed(claimed[0])
    store.set_processed(claimed[1])
    store.set_failed(claimed[2], "first try")
    assert store.count_processed("jobs") == 2
    again = store.claim("jobs", 1, 60)
    assert [m.id for m in again] == [first[1]]
    store.set_failed(again[0], "second try")
    [dead] = store.dead_letters("jobs")
    assert (dead.id, dead.attempts, dead.reasons) == (first[1], 2, ("first try", "second try"))
    rest = store.claim("jobs", 10, 60)
    assert [m.id for m in rest] == [*first[2:], *second]
    store.release(rest[-1])
    assert [m.id for m in store.messages("jobs")] == [second[-1]]
    assert store.count_queued("jobs") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_batch_file_sent_again_is_acknowledged_and_kept_once(tmp_path: Path, transport: str) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    with peer_for(transport, store) as peer:
        sent, _ = put_mixed(spool, peer, 300)
        kept = {name: queued_path(spool, name).read_bytes() for name in queued(spool)}
        assert run_relay(spool, "--once", "--no-supervise").returncode == 0
        for name, data in kept.items():
            queued_path(spool, name).parent.mkdir(exist_ok=True)
            queued_path(spool, name).write_bytes(data)
        done = run_relay(spool, "--once", "--no-supervise", "--log-level", "debug")
        assert done.returncode == 0, done.stderr
    assert queued(spool) == []
    check_stored_once([store], sent)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_batch_file_with_a_bad_message_stores_the_others_and_fails_naming_it(tmp_path: Path, transport: str) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    with peer_for(transport, store) as peer:
        ids = dropr.fastput_many([b"good one", b"bad one", b"good two"], peer, spool=str(spool))
        (name,) = queued(spool)
        path = queued_path(spool, name)
        data = bytearray(path.read_bytes())
        data[_codec_py.batch_index_size(3) + len(b"good one")] ^= 0xFF  # the second payload's first byte
        path.write_bytes(bytes(data))
        done = run_relay(spool, "--once", "--no-supervise")
    assert done.returncode != 0  # not every message was accepted
    assert [(msg_id, payload) for msg_id, payload in stored(store)["common"]] == [
        (ids[0], b"good one"),
        (ids[2], b"good two"),
    ]
    reason = (spool / "failed" / f"{name}.reason").read_text()
    assert reason.startswith(f"{ids[1]}: checksum mismatch") and ids[0] not in reason and ids[2] not in reason
    assert queued(spool) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_delayed_message_is_not_claimable_before_its_time(tmp_path: Path, transport: str) -> None:
    spool, store_dir = tmp_path / "spool", tmp_path / "store"
    with peer_for(transport, store_dir) as peer:
        now_id = dropr.fastput(b"now", peer, "c", spool=str(spool))
        later = dropr.fastput_many([b"later 1", b"later 2"], peer, "c", spool=str(spool), delay=2.5)
        later_one = dropr.fastput(b"later 3", peer, "c", 0, spool=str(spool), delay=2.5)
        put_at = time.time()
        assert run_relay(spool, "--once", "--no-supervise").returncode == 0
    store = Store(store_dir)
    assert [m.id for m in store.claim("c", 10, 60)] == [now_id]
    delayed = store_dir / "channels" / "c" / "delayed"
    assert sorted(name[1:31] for name in os.listdir(delayed)) == sorted([*later, later_one])
    assert all(os.stat(delayed / name).st_mtime >= put_at + 2.4 for name in os.listdir(delayed))
    while time.time() < put_at + 2.0:
        assert store.claim("c", 10, 60) == []
        time.sleep(0.1)
    wait_until(lambda: store.count_queued("c") == 3, timeout=10)
    assert time.time() >= put_at + 2.4
    claimed = store.claim("c", 10, 60)
    assert [(m.id, m.read()) for m in claimed] == [
        (later_one, b"later 3"),
        (later[0], b"later 1"),
        (later[1], b"later 2"),
    ]


def test_a_message_whose_delay_has_passed_is_queued_at_once(tmp_path: Path) -> None:
    spool, store_dir = tmp_path / "spool", tmp_path / "store"
    msg_id = dropr.fastput(b"x", store_dir.as_uri(), spool=str(spool), delay=0.2)
    time.sleep(0.3)
    assert run_relay(spool, "--once", "--no-supervise").returncode == 0
    assert [m.id for m in Store(store_dir).claim("common", 10, 60)] == [msg_id]


def _put_batches(spool: Path, peer: str, count: int) -> dict[str, bytes]:
    sent: dict[str, bytes] = {}
    with dropr.Client(spool) as client:
        while len(sent) < count:
            payloads = [os.urandom(100) for _ in range(50)]
            sent.update(zip(client.put_many(payloads, peer=peer), payloads, strict=True))
    return sent


def test_kill_9_of_the_relay_during_batch_delivery_stores_each_id_once(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    with start_server(store) as server:
        sent = _put_batches(spool, server.url, 3000)
        kill_relays_then_drain(spool, store, len(sent), rounds=4)
    check_stored_once([store], sent)


def test_kill_9_of_the_server_during_batch_delivery_stores_each_id_once(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    port = free_port()
    sent = _put_batches(spool, f"http://127.0.0.1:{port}/", 3000)
    kill_servers_while_relaying(spool, store, port, len(sent), rounds=4)
    check_stored_once([store], sent)
