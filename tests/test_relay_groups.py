"""Peer groups: the group transport with scripted members, then real servers behind a relay
(failover across a SIGKILL and a restart, spread, a group the configuration does not define).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from relaykit import RelayProcess, check_stored_once, queued, run_relay, server_on, stored, stored_count, wait_until
from support import free_port, start_server

import dropr
from dropr import protocol
from dropr.protocol import Acks, PeerFailure
from dropr.relay.backoff import Backoff
from dropr.relay.batches import Entry, SpoolFiles
from dropr.relay.config import GroupConfig, RelayConfig
from dropr.relay.group import GroupBackoff, GroupTransport, Member
from dropr.relay.transport import Transports, Unavailable

pytestmark = pytest.mark.timeout(300)

BATCH = [Entry(f"name{i}", f"{i:030x}", 9, "common", 1, 0) for i in range(3)]
Answer = Callable[[list[Entry]], Acks]


def stored_all(batch: list[Entry]) -> Acks:
    return {entry.id: (protocol.STORED, "") for entry in batch}


def refused(batch: list[Entry]) -> Acks:
    raise PeerFailure("connection refused")


class Scripted:
    """A member's transport that answers as ``answer`` says and counts its batches."""

    def __init__(self, url: str, answer: Answer = stored_all) -> None:
        self.url = url
        self.answer = answer
        self.batches = 0

    async def send(self, batch: list[Entry]) -> Acks:
        self.batches += 1
        return self.answer(batch)

    async def aclose(self) -> None:
        pass


def group(mode: str, *transports: Scripted | str) -> tuple[GroupTransport, list[Member]]:
    members = [
        Member(t if isinstance(t, str) else t.url, f"unavailable {t}" if isinstance(t, str) else t, Backoff(10, 10))
        for t in transports
    ]
    return GroupTransport("group:g", mode, members), members


def send(transport: GroupTransport) -> Acks:
    return asyncio.run(transport.send(BATCH))


def test_failover_uses_the_first_member_not_failing_and_returns_to_it() -> None:
    a, b = Scripted("http://a/", refused), Scripted("http://b/")
    transport, (member_a, member_b) = group("failover", a, b)
    assert send(transport) == stored_all(BATCH)
    assert (a.batches, b.batches) == (1, 1) and member_a.backoff.failures == 1
    send(transport)
    assert (a.batches, b.batches) == (1, 2)  # a backs off: the batch goes straight to b
    member_a.backoff.until = 0.0  # its backoff expired
    a.answer = stored_all
    send(transport)
    send(transport)
    assert (a.batches, b.batches) == (3, 2) and member_a.backoff.failures == 0
    assert member_b.backoff.failures == 0


def test_spread_takes_the_members_in_turn_leaving_out_those_failing() -> None:
    a, b, c = Scripted("http://a/"), Scripted("http://b/"), Scripted("http://c/")
    transport, members = group("spread", a, b, c)
    for _ in range(6):
        send(transport)
    assert (a.batches, b.batches, c.batches) == (2, 2, 2)
    b.answer = refused
    for _ in range(6):
        send(transport)
    assert b.batches == 3 and members[1].backoff.failures == 1
    assert (a.batches, c.batches) == (5, 5)


def test_every_member_failing_fails_the_request_until_the_first_may_be_tried_again() -> None:
    a, b = Scripted("http://a/", refused), Scripted("http://b/", refused)
    transport, (member_a, member_b) = group("failover", a, b)
    with pytest.raises(PeerFailure, match="every member failing"):
        send(transport)
    now = time.monotonic()
    delay = transport.backoff.fail(now)
    assert transport.backoff.until == min(member_a.backoff.until, member_b.backoff.until)
    assert delay == transport.backoff.until - now and transport.backoff.waiting(now)
    with pytest.raises(PeerFailure, match="every member failing"):
        send(transport)
    assert (a.batches, b.batches) == (1, 1)


def test_a_member_answering_retry_backs_off_and_its_answer_stands() -> None:
    def partly(batch: list[Entry]) -> Acks:
        return {batch[0].id: (protocol.STORED, "")}

    a, b = Scripted("http://a/", partly), Scripted("http://b/")
    transport, (member_a, _) = group("failover", a, b)
    assert send(transport) == {BATCH[0].id: (protocol.STORED, "")}
    assert member_a.backoff.failures == 1
    assert send(transport) == stored_all(BATCH) and b.batches == 1


def test_a_member_without_a_transport_is_left_out() -> None:
    b = Scripted("http://b/")
    transport, (held, _) = group("failover", "nats://n:4222", b)
    assert held.transport is None and held.backoff.waiting(time.monotonic())
    assert send(transport) == stored_all(BATCH) and b.batches == 1


# -- real servers ---------------------------------------------------------------------


def put(spool: Path, peer: str, count: int, start: int = 0) -> dict[str, bytes]:
    sent = {}
    with dropr.Client(spool) as client:
        for i in range(start, start + count):
            payload = f"message {i} ".encode() + os.urandom(i % 50)
            sent[client.put(payload, peer=peer, channel=f"channel {i % 3}", priority=i % 10)] = payload
    return sent


def group_config(tmp_path: Path, mode: str, *urls: str, extra: str = "") -> str:
    path = tmp_path / "relay.toml"
    members = ", ".join(f'"{url}"' for url in urls)
    path.write_text(
        "backoff_min_seconds = 0.05\nbackoff_max_seconds = 0.5\ntimeout_seconds = 5\n"
        f'[groups.orders]\npeers = [{members}]\nmode = "{mode}"\n' + extra
    )
    return str(path)


def held_at_most_once(store_dir: Path) -> set[str]:
    ids = [msg_id for messages in stored(store_dir).values() for msg_id, _ in messages]
    assert len(ids) == len(set(ids)), f"{store_dir.name} holds a message twice"
    return set(ids)


def test_failover_across_a_sigkill_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first_port = free_port()
    first = server_on(tmp_path / "first", first_port)
    try:
        with start_server(tmp_path / "second") as second:
            config = group_config(tmp_path, "failover", first.url, second.url)
            sent = put(spool, "group:orders", 3000)
            with RelayProcess(spool, "--no-supervise", "--config", config, "--batch-count", "100") as relay:
                relay.wait_started()
                wait_until(lambda: stored_count(tmp_path / "first") >= 500, timeout=60)
                first.close()  # SIGKILL mid-flow: what it had not acknowledged goes to the second
                sent.update(put(spool, "group:orders", 1000, start=3000))
                wait_until(lambda: not queued(spool), timeout=60)
                assert stored_count(tmp_path / "second") > 0
                assert "member http://127.0.0.1:" in relay.log() and "backing off" in relay.log()
                first = server_on(tmp_path / "first", first_port)
                time.sleep(1.0)  # its backoff (0.5 s at most) expires
                before = stored_count(tmp_path / "second")
                later = put(spool, "group:orders", 300, start=4000)
                sent.update(later)
                wait_until(lambda: not queued(spool), timeout=60)
                assert set(later) <= held_at_most_once(tmp_path / "first")
                assert stored_count(tmp_path / "second") == before
                assert "delivering again" in relay.log()
                assert relay.stop() == 0, relay.log()
    finally:
        first.close()
    in_first, in_second = held_at_most_once(tmp_path / "first"), held_at_most_once(tmp_path / "second")
    assert in_first | in_second == set(sent)
    for store_dir in ("first", "second"):
        for messages in stored(tmp_path / store_dir).values():
            assert all(payload == sent[msg_id] for msg_id, payload in messages)


def test_spread_gives_every_member_a_share(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "a") as a, start_server(tmp_path / "b") as b:
        sent = put(spool, "group:orders", 2000)
        config = group_config(tmp_path, "spread", a.url, b.url)
        done = run_relay(spool, "--once", "--no-supervise", "--config", config, "--batch-count", "100")
        assert done.returncode == 0, done.stderr
    counts = stored_count(tmp_path / "a"), stored_count(tmp_path / "b")
    assert sum(counts) == 2000 and min(counts) >= 500, counts
    check_stored_once([tmp_path / "a", tmp_path / "b"], sent)


def test_a_group_not_defined_waits_says_so_once_and_expires_at_its_maximum_age(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    put(spool, "group:elsewhere", 50)
    config = group_config(tmp_path, "failover", f"http://127.0.0.1:{free_port()}/")
    with RelayProcess(spool, "--no-supervise", "--config", config, "--rescan", "0.05") as relay:
        relay.wait_started()
        wait_until(lambda: "not defined" in relay.log())
        time.sleep(1.0)
        assert len(queued(spool)) == 50 and os.listdir(spool / "failed") == []
        assert relay.log().count("group:elsewhere") == 1, relay.log()
        assert relay.stop() == 0
    done = run_relay(spool, "--once", "--no-supervise", "--config", config)
    assert done.returncode == 1 and len(queued(spool)) == 50
    assert "still queued: 50 for group:elsewhere (peer group 'elsewhere' is not defined" in done.stderr
    done = run_relay(spool, "--once", "--no-supervise", "--config", config, "--max-age", "0.001")
    assert done.returncode == 1 and queued(spool) == []
    reasons = [path.read_text() for path in (spool / "failed").glob("*.reason")]
    assert len(reasons) == 50 and all(reason.startswith("expired") for reason in reasons)


def test_a_group_none_of_whose_members_can_be_used_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("nats", "nats.errors", "nats.js.errors", "nats.aio.client"):
        monkeypatch.setitem(sys.modules, module, None)  # as if nats-py were not installed
    monkeypatch.delitem(sys.modules, "dropr.relay.nats", raising=False)
    config = RelayConfig(spool="/nonexistent", groups={"g": GroupConfig(("nats://n:4222",))})
    transports = Transports(config, SpoolFiles("c", "/nonexistent", str, str))
    try:
        with pytest.raises(Unavailable, match="no member of peer group 'g' can be used: nats:// peers need nats-py"):
            transports.open("group:g")
    finally:
        asyncio.run(transports.aclose())


def test_a_group_whose_members_backoffs_ended_during_the_send_may_be_tried_again_at_once() -> None:
    members = [Backoff(1, 1), Backoff(1, 1)]
    members[0].until, members[1].until = 5.0, 7.0
    group_backoff = GroupBackoff(members)
    assert group_backoff.fail(10.0) == 0.0 and not group_backoff.waiting(10.0)
    assert group_backoff.failures == 1 and group_backoff.since == 10.0
