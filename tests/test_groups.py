"""Consumer groups of a channel: fan-out at ingest, independent consumption, takeover of what
waits, subscribing and unsubscribing while messages arrive."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from storekit import CLIENT, put, stage, tree

from dropr import StoreError, _files
from dropr._impl import codec
from dropr.store import Message, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True, retry_delay=0.2, max_attempts=2)


def ids(messages: list[Message]) -> list[str]:
    return [m.id for m in messages]


def test_two_groups_each_consume_every_message_once(store: Store) -> None:
    assert store.subscribe("orders", "billing")
    assert store.subscribe("orders", "shipping")
    assert not store.subscribe("orders", "billing")
    assert store.groups("orders") == ["billing", "shipping"]
    sent = [put(store, b"%d" % i, channel="orders") for i in range(20)]
    assert store.messages("orders") == []  # nothing lands in the channel's own queue
    # One message, one file: each group's queue holds a hard link of it until claimed.
    assert {os.stat(m.path).st_nlink for m in store.messages("orders", group="billing")} == {2}
    billing = store.claim("orders", 100, 60, group="billing")
    assert ids(billing) == sent and all(m.group == "billing" for m in billing)
    assert store.claim("orders", 100, 60, group="billing") == []
    store.set_processed(*billing[:15])
    store.set_failed(billing[15], "no")
    store.release(*billing[16:])
    assert store.counts("orders", group="billing") == {
        "queued": 4,
        "claimed": 0,
        "delayed": 1,
        "processed": 15,
        "dead": 0,
    }
    other = Store(store.path)
    shipping = other.claim("orders", 7, 60, group="shipping") + other.claim("orders", 100, 60, group="shipping")
    assert ids(shipping) == sent
    other.set_processed(*shipping)
    assert other.count_processed("orders", group="shipping") == 20
    assert store.count_queued("orders", group="billing") == 4
    assert store.status("orders", sent[15], group="billing") == "delayed"
    assert store.status("orders", sent[15], group="shipping") == "processed"
    assert store.status("orders", sent[15]) is None
    # The first group's claim took a copy of its own; the last group has the file alone.
    [processed] = [m for m in other.processed("orders", group="shipping") if m.id == sent[0]]
    assert os.stat(processed.path).st_nlink == 1


def test_claims_of_one_message_in_two_groups_at_once_keep_their_own_leases(store: Store) -> None:
    """A lease, a retry time, are a file's mtime: a group's claim of a message whose file
    another group still links must not show in the other's claim (each takes its own copy)."""
    store.subscribe("c", "a")
    store.subscribe("c", "b")
    store.subscribe("c", "z")
    sent = [put(store, b"payload %d" % i, channel="c") for i in range(3)]
    in_a = store.claim("c", 10, 60, group="a")
    in_b = Store(store.path).claim("c", 10, 30, group="b")
    assert ids(in_a) == ids(in_b) == sent
    assert [m.read() for m in in_a] == [m.read() for m in in_b] == [b"payload %d" % i for i in range(3)]
    assert all(abs(os.stat(m.path).st_mtime_ns - m.lease_ns) == 0 for m in in_a + in_b)
    store.set_failed(in_b[0], "later")  # its retry time is b's alone
    store.release(in_b[1])
    store.set_processed(in_a[0], in_a[1])
    store.set_failed(in_a[2], "again")
    store.set_processed(in_b[2])
    assert store.status("c", sent[0], group="a") == "processed"
    assert store.status("c", sent[0], group="b") == "delayed"
    assert store.status("c", sent[1], group="b") == "queued"
    assert store.status("c", sent[2], group="a") == "delayed"
    assert store.dead_letters("c", group="a") == []  # max_attempts 2: not dead yet
    in_z = store.claim("c", 10, 60, group="z")  # the last group: the file ingest wrote
    assert ids(in_z) == sent and {os.stat(m.path).st_nlink for m in in_z} == {1}
    store.set_processed(*in_z)
    assert [m.read() for m in store.processed("c", group="z")] == [b"payload %d" % i for i in range(3)]


def test_the_first_group_takes_over_what_waits_a_later_one_starts_empty(store: Store) -> None:
    early = [put(store, b"early %d" % i, channel="c") for i in range(6)]
    claimed = store.claim("c", 3, 60)
    store.set_failed(claimed[0], "try again")
    dying = Store(store.path, max_attempts=1)
    dying.set_failed(claimed[1], "dead")
    assert store.subscribe("c", "first")
    assert store.counts("c") == dict.fromkeys(("queued", "claimed", "delayed", "processed", "dead"), 0)
    assert store.counts("c", group="first") == {"queued": 3, "claimed": 1, "delayed": 1, "processed": 0, "dead": 1}
    [letter] = store.dead_letters("c", group="first")
    assert letter.id == early[1] and letter.reasons == ("dead",)
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(claimed[2])  # its claim moved to the group, lease running on
    assert store.subscribe("c", "second")
    late = put(store, b"late", channel="c")
    assert ids(store.messages("c", group="second")) == [late]
    assert ids(store.messages("c", group="first")) == early[3:] + [late]
    assert store.requeue_dead("c", group="first") == 1
    assert store.status("c", early[1], group="first") == "queued"


def test_a_failure_without_a_claim_in_one_group_leaves_the_other_alone(store: Store) -> None:
    store.subscribe("c", "a")
    store.subscribe("c", "b")
    msg_id = put(store, b"x", channel="c")
    [held] = store.claim("c", 1, 60, group="b")
    [listed] = store.messages("c", group="a")
    store.set_failed(listed, "not claimed")
    assert store.status("c", msg_id, group="a") == "delayed"
    assert store.messages("c", group="a") == [] and store.claim("c", 1, 60, group="a") == []
    store.set_processed(held)  # b's lease untouched
    assert store.status("c", msg_id, group="b") == "processed"
    with pytest.raises(StoreError, match="no longer held"):
        store.set_failed(listed, "again, no longer queued")


def test_unsubscribing_drops_a_group_and_the_last_one_gives_the_channel_back(store: Store) -> None:
    store.subscribe("c", "a")
    store.subscribe("c", "b")
    first = put(store, b"1", channel="c")
    [held] = store.claim("c", 1, 60, group="b")
    store.unsubscribe("c", "b")
    assert store.groups("c") == ["a"]
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(held)
    for call in (
        lambda: store.claim("c", 1, 60, group="b"),
        lambda: store.count_queued("c", group="b"),
        lambda: store.status("c", first, group="b"),
        lambda: store.unsubscribe("c", "b"),
        lambda: store.unsubscribe("nothing", "b"),
        lambda: store.messages("c", group="b"),
    ):
        with pytest.raises(StoreError, match="no group"):
            call()
    assert ids(store.messages("c", group="a")) == [first]
    store.unsubscribe("c", "a")
    assert store.groups("c") == []
    second = put(store, b"2", channel="c")
    assert ids(store.messages("c")) == [second]
    assert list((Path(store.path) / "channels" / "c" / "groups").iterdir()) == []


def test_a_resend_is_a_duplicate_whichever_group_still_holds_it(store: Store) -> None:
    store.subscribe("c", "a")
    store.subscribe("c", "b")
    msg_id = put(store, b"x", channel="c")
    [message] = store.claim("c", 1, 60, group="a")
    store.set_processed(message)
    store.wipe_processed(0)
    assert not store.ingest("c", CLIENT, msg_id, 9, stage(store))
    [message] = store.claim("c", 1, 60, group="b")
    store.set_processed(message)
    assert store.wipe_processed(0) == 1
    assert store.ingest("c", CLIENT, msg_id, 9, stage(store))
    assert store.count_queued("c", group="a") == store.count_queued("c", group="b") == 1


@pytest.mark.parametrize("group", ["..", ".", "../../escape", "a/b", "~x", "%2E", "g" * 255, "é ü"])
def test_a_group_name_is_just_a_name(store: Store, group: str) -> None:
    outside = tree(Path(store.path).parent)
    assert store.subscribe("c", group)
    assert store.groups("c") == [group]
    msg_id = put(store, b"x", channel="c")
    [message] = store.claim("c", 1, 60, group=group)
    assert message.id == msg_id and message.group == group
    assert Path(message.path).resolve().is_relative_to(Path(store.path, "channels", "c", "groups").resolve())
    store.set_processed(message)
    assert store.status("c", msg_id, group=group) == "processed"
    store.unsubscribe("c", group)
    after = {k: v for k, v in tree(Path(store.path).parent).items() if not k.startswith("store/")}
    assert after == {k: v for k, v in outside.items() if not k.startswith("store/")}


@pytest.mark.parametrize("group", ["", "a\nb", "a\0b", "\x7f", 5, None])
def test_a_bad_group_name_changes_nothing(store: Store, group: object) -> None:
    put(store, b"x", channel="c")
    before = tree(store.path)
    calls = [lambda: store.subscribe("c", group), lambda: store.unsubscribe("c", group)]  # type: ignore[arg-type]
    if group is not None:
        calls.append(lambda: store.claim("c", 1, 60, group=group))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert tree(store.path) == before


def test_subscribing_while_messages_arrive_loses_none(store: Store) -> None:
    count = 3000
    sent: list[str] = []
    ingest = Store(store.path)

    def produce() -> None:
        for i in range(count):
            sent.append(put(ingest, b"%d" % i, channel="busy"))

    producer = threading.Thread(target=produce)
    producer.start()
    while len(sent) < count // 3:
        time.sleep(0.001)
    store.subscribe("busy", "first")
    while len(sent) < 2 * count // 3:
        time.sleep(0.001)
    # A put listed before the subscribe began was stored before it; one listed after the
    # next put that began once it returned was stored after it (the producer thread may
    # run several puts, or list one stored before, between the subscribe and these reads).
    before = len(sent)
    store.subscribe("busy", "second")
    after = len(sent)
    producer.join()
    first = ids(store.messages("busy", group="first"))
    second = ids(store.messages("busy", group="second"))
    assert sorted(first) == sorted(sent)
    assert set(sent[after + 1 :]) <= set(second) <= set(sent[before:])
    assert len(second) >= count - after - 1
    assert store.messages("busy") == []


def test_a_claim_on_a_group_waits_for_its_messages(store: Store) -> None:
    store.subscribe("c", "g")
    result: list[Message] = []
    thread = threading.Thread(target=lambda: result.extend(Store(store.path).claim("c", 5, 60, group="g", wait=30)))
    thread.start()
    msg_id = put(store, b"x", channel="c")
    thread.join(60)
    assert ids(result) == [msg_id]


def test_groups_of_a_channel_made_before_groups_existed(store: Store) -> None:
    put(store, b"x", channel="old")
    groups_dir = Path(store.path, "channels", "old", "groups")
    groups_dir.rmdir()
    assert store.groups("old") == []
    assert store.subscribe("old", "g")
    assert store.count_queued("old", group="g") == 1
    assert codec.is_message_id(store.messages("old", group="g")[0].id)


def test_a_copy_left_by_a_claimant_that_died_is_removed_once_old(store: Store) -> None:
    store.subscribe("orders", "billing")
    put(store, b"x", channel="orders")
    (message,) = store.claim("orders", 1, 60, group="billing")
    claimed = os.path.dirname(message.path)
    old, fresh = os.path.join(claimed, ".old.1.ab"), os.path.join(claimed, ".fresh.1.cd")
    for path in (old, fresh):
        with open(path, "wb") as file:
            file.write(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    Store(store.path).counts("orders", group="billing")  # a first look sweeps the claims
    assert os.path.exists(fresh) and not os.path.exists(old)
    assert store.status("orders", message.id, group="billing") == "claimed"


def test_a_groups_claim_copies_its_messages_with_one_flush(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.subscribe("orders", "billing")
    store.subscribe("orders", "shipping")
    sent = {put(store, b"%d" % i, channel="orders"): b"%d" % i for i in range(50)}
    flushes: list[str] = []
    synced_files: list[int] = []
    sync_file_system, fdatasync = _files.sync_file_system, os.fdatasync
    monkeypatch.setattr(_files, "sync_file_system", lambda path: (flushes.append(path), sync_file_system(path)))
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced_files.append(fd), fdatasync(fd)))
    billing = store.claim("orders", 100, 60, group="billing")
    assert len(flushes) == 1 and not synced_files  # one flush for the fifty copies, not one each
    assert {os.stat(m.path).st_nlink for m in billing} == {1}
    assert {m.id: m.read() for m in billing} == sent
    assert {os.stat(m.path).st_nlink for m in store.messages("orders", group="shipping")} == {1}
    (one,) = store.claim("orders", 1, 60, group="shipping")  # the last link keeps the file ingest wrote
    assert len(flushes) == 1 and one.read() == sent[one.id]
    store.set_processed(*billing, one)
    assert store.count_processed("orders", group="billing") == 50
    assert not [name for name in os.listdir(os.path.dirname(billing[0].path)) if name.startswith(".")]
