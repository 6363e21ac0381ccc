"""The relay's delivery on its own: a real spool and disposal, a scripted transport.

Each test queues messages, hands their names to :class:`Delivery` as a scan would, and runs
the event loop until no request is in flight; the transport answers as the test says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dropr import protocol
from dropr._impl import codec, scan
from dropr.protocol import Acks, PeerFailure
from dropr.relay import batches
from dropr.relay.backoff import Backoff
from dropr.relay.batches import Entry
from dropr.relay.config import RelayConfig
from dropr.relay.delivery import Delivery, Peer
from dropr.relay.disposal import Disposal
from dropr.relay.group import GroupBackoff
from dropr.relay.status import RelayStatus
from dropr.spool import Client, Spool

PEER = "http://h/"
Answer = Callable[[list[Entry]], Acks]


def stored(batch: list[Entry]) -> Acks:
    return {entry.id: (protocol.STORED, "") for entry in batch}


def down(batch: list[Entry]) -> Acks:
    raise PeerFailure("connection refused")


class Scripted:
    """A transport answering each batch with the next of ``answers`` (the last one repeats)."""

    def __init__(self, peers: dict[str, Peer], answers: list[Answer]) -> None:
        self.url = PEER
        self.sent: list[list[str]] = []
        self.most_in_flight = 0
        self._peers = peers
        self._answers = answers

    async def send(self, batch: list[Entry]) -> Acks:
        self.sent.append([entry.name for entry in batch])
        self.most_in_flight = max(self.most_in_flight, sum(peer.inflight for peer in self._peers.values()))
        await asyncio.sleep(0)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return answer(batch)

    async def aclose(self) -> None:
        pass


class Setup:
    """A spool with ``count`` messages for :data:`PEER`, and a Delivery for it."""

    def __init__(self, tmp_path: Path, count: int, **settings: Any) -> None:
        with Client(tmp_path / "spool") as client:
            for _ in range(count):
                client.put(b"payload", peer=PEER)
        self.spool: Spool = client.spool
        self.names = scan.scan_queue(self.spool.queue_dir, count)
        self.field = codec.parse_spool_name(self.names[0])[2] if self.names else ""
        config = RelayConfig(spool=self.spool.path, keep_sent_minutes=1.0, **settings)
        self.status = RelayStatus(None, self.spool)
        self.disposal = Disposal(config, self.spool, self.status)
        self.crashes: list[BaseException] = []
        self.delivery = Delivery(
            config, self.spool, self.disposal, status=self.status, wake=lambda: None, crash=self.crashes.append
        )

    def peer(self, *answers: Answer) -> tuple[Peer, Scripted]:
        transport = Scripted(self.delivery.peers, list(answers))
        peer = Peer(self.field, PEER, transport, "", Backoff(60.0, 60.0))
        self.delivery.peers[self.field] = peer
        return peer, transport

    def dispatch(self, names: list[str]) -> None:
        async def run() -> None:
            self.delivery.dispatch(names, prefetch=False)
            while self.delivery.busy:
                await self.delivery.finish()

        try:
            asyncio.run(run())
        finally:
            self.disposal.close()
        assert self.crashes == []

    def sent(self) -> list[str]:
        return sorted(os.listdir(self.spool.sent_dir))

    def failed(self) -> dict[str, str]:
        return {message.name: reason for message, reason in self.spool.failed()}


@pytest.mark.parametrize("parallel", [1, 3])
def test_names_go_in_batches_in_order_with_parallel_requests_at_most(tmp_path: Path, parallel: int) -> None:
    setup = Setup(tmp_path, 7, batch_count=2, parallel=parallel)
    peer, transport = setup.peer(stored)
    peer.news = False  # as the scan policy leaves it
    setup.dispatch(setup.names)
    assert transport.sent == [setup.names[i : i + 2] for i in range(0, 7, 2)]
    assert transport.most_in_flight == parallel
    assert setup.sent() == setup.names and scan.count_queue(setup.spool.queue_dir) == 0
    assert setup.delivery.delivered == 7 and setup.delivery.held == set()
    assert peer.inflight == 0 and not peer.pending and peer.news


def test_rejected_go_to_failed_and_those_missing_from_the_answer_stay_queued(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 3)
    rejected, missing, kept = setup.names

    def answer(batch: list[Entry]) -> Acks:
        ids = {entry.name: entry.id for entry in batch}
        return {ids[rejected]: (protocol.REJECTED, "bad crc"), ids[kept]: (protocol.DUPLICATE, "already held")}

    peer, _ = setup.peer(answer)
    setup.dispatch(setup.names)
    assert setup.sent() == [kept] and setup.failed() == {rejected: "bad crc"}
    assert scan.scan_queue(setup.spool.queue_dir, 10) == [missing]
    assert peer.backoff.failures == 1 and peer.news and setup.delivery.held == set()
    assert setup.delivery.delivered == 1 and setup.disposal.failed == 1
    setup.status.publish(force=True)
    record = setup.status.snapshot["peers"][PEER]
    assert (record["delivered"], record["failed"], record["retried"], record["inflight"]) == (1, 1, 1, 0)
    assert record["state"] == "backing off" and record["reason"] == "1 of 3 messages to be retried"


def test_an_answer_for_every_message_does_not_back_off_even_with_rejections(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 2)

    def answer(batch: list[Entry]) -> Acks:
        return {batch[0].id: (protocol.REJECTED, ""), batch[1].id: (protocol.STORED, "")}

    peer, _ = setup.peer(answer)
    setup.dispatch(setup.names)
    assert setup.failed() == {setup.names[0]: "rejected by the peer"} and setup.sent() == setup.names[1:]
    assert peer.backoff.failures == 0


def each_message(status: str, reason: str = "", but: dict[int, tuple[str, str]] | None = None) -> Answer:
    """An answer giving every message of a batch ``status``, the n-th of them (counted
    across its files) ``but[n]`` instead."""

    def answer(batch: list[Entry]) -> Acks:
        ids = [msg_id for entry in batch for msg_id in batches.ids(entry)]
        return {msg_id: (but or {}).get(n, (status, reason)) for n, msg_id in enumerate(ids)}

    return answer


def batch_files(tmp_path: Path, sizes: list[int], **settings: Any) -> Setup:
    """A Setup whose queue holds one file per size: a batch of that many messages."""
    setup = Setup(tmp_path, 0, **settings)
    with Client(setup.spool) as client:
        for size in sizes:
            client.put_many([b"m%d" % i for i in range(size)], peer=PEER)
    setup.names = scan.scan_queue(setup.spool.queue_dir, len(sizes))
    setup.field = codec.parse_spool_name(setup.names[0])[2]
    return setup


def test_a_batch_file_travels_whole_and_leaves_once_each_message_is_acknowledged(tmp_path: Path) -> None:
    setup = batch_files(tmp_path, [40, 1, 70, 30], batch_count=100)
    peer, transport = setup.peer(each_message(protocol.DUPLICATE, "already held", {5: (protocol.STORED, "")}))
    setup.dispatch(setup.names)
    assert transport.sent == [setup.names[:2], setup.names[2:]]  # 41 messages, then 100
    assert setup.sent() == setup.names and scan.count_queue(setup.spool.queue_dir) == 0
    assert setup.delivery.delivered == 141 and peer.backoff.failures == 0
    setup.status.publish(force=True)
    record = setup.status.snapshot["peers"][PEER]
    assert (record["delivered"], record["failed"], record["retried"]) == (141, 0, 0)


def test_a_batch_file_with_a_message_to_retry_stays_queued_whole(tmp_path: Path) -> None:
    setup = batch_files(tmp_path, [3, 4])
    peer, _ = setup.peer(each_message(protocol.STORED, but={1: (protocol.REJECTED, "bad"), 5: (protocol.RETRY, "")}))
    setup.dispatch(setup.names)
    assert setup.sent() == [] and setup.failed() == {setup.names[0]: f"{batches.ids(entry_of(setup, 0))[1]}: bad"}
    assert scan.scan_queue(setup.spool.queue_dir, 10) == setup.names[1:]
    assert peer.backoff.failures == 1 and setup.delivery.delivered == 0
    assert setup.disposal.failed == 3  # counted as messages, a batch file's each
    setup.status.publish(force=True)
    record = setup.status.snapshot["peers"][PEER]
    assert (record["delivered"], record["failed"], record["retried"]) == (0, 3, 4)


def test_a_batch_file_with_rejected_messages_fails_naming_each(tmp_path: Path) -> None:
    setup = batch_files(tmp_path, [5])
    ids = batches.ids(entry_of(setup, 0))
    rejections = {0: (protocol.REJECTED, "no"), 2: (protocol.REJECTED, "bad crc"), 4: (protocol.REJECTED, "no")}
    peer, _ = setup.peer(each_message(protocol.STORED, but=rejections))
    setup.dispatch(setup.names)
    assert setup.failed() == {setup.names[0]: f"{ids[0]}, {ids[4]}: no; {ids[2]}: bad crc"}
    assert peer.backoff.failures == 0 and scan.count_queue(setup.spool.queue_dir) == 0


def test_a_batch_file_answered_only_for_its_first_message_stays_queued(tmp_path: Path) -> None:
    setup = batch_files(tmp_path, [3])
    peer, _ = setup.peer(stored)
    setup.dispatch(setup.names)
    assert scan.scan_queue(setup.spool.queue_dir, 10) == setup.names and setup.failed() == {}
    assert peer.backoff.failures == 1


def entry_of(setup: Setup, index: int) -> Entry:
    name = setup.names[index]
    priority, msg_id, _, channel, size, crc, count, delay_ms = codec.parse_spool_name(name)
    return Entry(name, msg_id, priority, channel, size, crc, count, delay_ms)


def test_a_failed_request_backs_off_and_lets_the_waiting_batches_go(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 4, batch_count=1)
    peer, transport = setup.peer(down)
    setup.dispatch(setup.names)
    assert transport.sent == [setup.names[:1]]  # the others were let go, to be read again
    assert peer.backoff.failures == 1 and peer.backoff.waiting(time.monotonic())
    assert not peer.pending and peer.news and setup.delivery.held == set()
    assert scan.count_queue(setup.spool.queue_dir) == 4 and not peer.gave_up


def test_a_peer_answering_again_is_no_longer_backing_off(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 2, batch_count=1)
    peer, _ = setup.peer(stored)
    peer.backoff.fail()
    setup.dispatch(setup.names)
    assert peer.backoff.failures == 0 and setup.sent() == setup.names


def test_with_once_a_peer_failing_for_retry_for_seconds_is_given_up(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 1, once=True, retry_for_seconds=5.0)
    peer, _ = setup.peer(down)
    peer.backoff.fail(time.monotonic() - 4.0)
    setup.dispatch(setup.names)
    assert not peer.gave_up and setup.delivery.given_up() == []
    assert peer.backoff.until <= peer.backoff.since + 5.0  # one last try at the end of --retry-for
    peer.backoff.since -= 1.0
    setup.dispatch(setup.names)
    assert peer.gave_up and setup.delivery.given_up() == [peer]
    assert peer.reason == "connection refused"
    assert setup.delivery.resting(0.0) == {setup.field}
    setup.status.publish(force=True)
    record = setup.status.snapshot["peers"][PEER]
    assert (record["state"], record["reason"], record["failures"]) == ("given up", "connection refused", 3)


def test_names_that_cannot_be_sent_are_failed_at_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 0)
    unusable = codec.spool_name(5, codec.new_id(), "not-a-url", "c", 1, 0)
    unnamed = codec.spool_name(5, codec.new_id(), "not-a-url", "c", 1, 0)[:-9]
    lost_text = codec.spool_name(5, codec.new_id(), setup.spool.register(PEER), "~" + "0" * 32, 1, 0)
    for name in (unusable, unnamed, lost_text):
        path = Path(setup.spool.queued_path(name))
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    setup.field = setup.spool.register(PEER)
    _, transport = setup.peer(stored)
    setup.dispatch([unusable, unnamed, lost_text])
    assert transport.sent == [] and scan.count_queue(setup.spool.queue_dir) == 0
    reasons = {
        name: Path(setup.spool.failed_dir, name + ".reason").read_text() for name in (unusable, unnamed, lost_text)
    }
    assert reasons[unusable].startswith("unusable peer not-a-url: ")
    assert reasons[unnamed] == "not a message name\n"
    assert reasons[lost_text].startswith("the text of channel ~")
    assert setup.disposal.failed == 3 and setup.delivery.peers["not-a-url"].problem


def test_messages_queued_for_longer_than_max_age_expire_as_they_are_read(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 2, max_age_minutes=1e-6)
    _, transport = setup.peer(stored)
    time.sleep(0.001)
    setup.dispatch(setup.names)
    assert transport.sent == []
    assert setup.failed() == dict.fromkeys(setup.names, "expired: queued for more than 1e-06 minutes")
    setup.status.publish(force=True)
    assert setup.status.snapshot["peers"][PEER]["failed"] == 2  # by its URL, though no request went to it


def test_arrivals_give_known_peers_news_and_make_others_known(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 1)
    peer, _ = setup.peer(stored)
    peer.news = False
    other = codec.spool_name(5, codec.new_id(), setup.spool.register("http://other/"), "c", 1, 0)
    setup.delivery.arrived([setup.names[0], other, "not-a-name", "5" + "0" * 30 + "+only+three"])
    assert peer.news
    assert sorted(setup.delivery.peers) == sorted([setup.field, codec.parse_spool_name(other)[2]])
    assert setup.delivery.peers[codec.parse_spool_name(other)[2]].url == "http://other/"
    setup.disposal.close()


def test_the_status_follows_the_peer_and_logs_each_change_of_state_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = Setup(tmp_path, 3, batch_count=1)
    peer, _ = setup.peer(down, down, down, stored)
    snapshots = []

    async def run() -> None:
        for names in ([setup.names[0]], [setup.names[0]], [setup.names[0]], setup.names):
            setup.delivery.dispatch(names, prefetch=False)
            while setup.delivery.busy:
                await setup.delivery.finish()
            setup.status.publish(force=True)
            snapshots.append(setup.status.snapshot["peers"][PEER])

    caplog.set_level(logging.INFO, "dropr.relay")
    try:
        asyncio.run(run())
    finally:
        setup.disposal.close()
    backing_off, delivering = snapshots[2], snapshots[3]
    assert backing_off["state"] == "backing off" and backing_off["failures"] == 3
    assert backing_off["reason"] == "connection refused" and backing_off["until"] > time.time() + 10
    assert backing_off["since"] == snapshots[0]["since"] and backing_off["retried"] == 3
    assert delivering["state"] == "delivering" and delivering["since"] >= backing_off["since"]
    assert (delivering["delivered"], delivering["retried"], delivering["failures"]) == (3, 3, 0)
    assert sum(delivering["latency_counts"]) == 6 and delivering["last_batch_seconds"] is not None
    lines = [record.getMessage() for record in caplog.records]  # one a change of state, none per failure
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{PEER}: connection refused; backing off (next try in ")
    assert lines[1].startswith(f"{PEER}: delivering again after 3 failures in ")
    assert setup.sent() == setup.names


def test_without_once_a_failing_peer_is_never_given_up_even_when_it_may_be_tried_at_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 1)
    peer, _ = setup.peer(down)
    peer.backoff = GroupBackoff([Backoff(60.0, 60.0)])  # its one member's backoff long over: no delay
    setup.dispatch(setup.names)
    assert peer.backoff.failures == 1 and not peer.gave_up and setup.delivery.given_up() == []
