"""The store as a consumer sees it, and the one object it is: its layout, delivery order,
processed messages and their wiping, and the two sides it is made of (ingest is
``test_ingest.py``'s, claims ``test_claims.py``'s)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from storekit import CLIENT, put, stage

from dropr import StoreError
from dropr.store import Message, Store
from dropr.store.consumer import ConsumerSide
from dropr.store.ingest import IngestSide
from dropr.store.layout import StoreDirectory


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True)


def test_a_missing_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a store"):
        Store(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_create_makes_the_layout_and_reopens(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", create=True)
    assert sorted(os.listdir(tmp_path / "s")) == ["channels", "ingested", "names", "tmp"]
    assert store.staging_dir == str(tmp_path / "s" / "tmp")
    assert Store(tmp_path / "s").channels() == []


def test_create_on_a_store_without_ingested_leaves_it_without(tmp_path: Path) -> None:
    """A store made before ingested/ existed has messages whose ids no record covers."""
    Store(tmp_path / "s", create=True)
    os.rmdir(tmp_path / "s" / "ingested")
    Store(tmp_path / "s", create=True)
    assert sorted(os.listdir(tmp_path / "s")) == ["channels", "names", "tmp"]


def test_ingest_queues_the_message(store: Store) -> None:
    before = time.time()
    msg_id = put(store, b"hello", channel="orders", priority=3)
    assert os.listdir(store.staging_dir) == []
    assert store.channels() == ["orders"]
    [message] = store.messages("orders")
    assert isinstance(message, Message)
    assert (message.id, message.client, message.channel, message.priority) == (
        msg_id,
        CLIENT,
        "orders",
        3,
    )
    assert before - 1 < message.time < time.time() + 1
    assert message.path == os.path.join(store.path, "channels", "orders", "queue", f"3{msg_id}+{CLIENT}")
    assert message.read() == b"hello"
    assert store.count_queued("orders") == 1


def test_delivery_order_is_priority_then_time(store: Store) -> None:
    expected = []
    for i, priority in enumerate([9, 0, 5, 0, 9, 1, 5]):
        expected.append((priority, put(store, b"%d" % i, priority=priority)))
    got = [(m.priority, m.id) for m in store.messages("common")]
    assert got == sorted(expected)
    assert [(m.priority, m.id) for m in store.messages("common", limit=3)] == sorted(expected)[:3]
    assert store.messages("common", limit=0) == []


TRICKY_CHANNELS = [
    "..",
    ".",
    "../../escape",
    "/etc",
    "a/b/../../..",
    ".hidden",
    "...",
    "~name",
    "%2E%2E",
    "ü/ñ",
    "c" * 255,
]


def test_channels_stay_inside_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", create=True)
    for channel in TRICKY_CHANNELS:
        put(store, channel.encode(), channel=channel)
    assert sorted(os.listdir(tmp_path)) == ["store"]
    channel_dirs = os.listdir(tmp_path / "store" / "channels")
    assert len(channel_dirs) == len(TRICKY_CHANNELS)
    assert all(not name.startswith(".") and "/" not in name for name in channel_dirs)
    reopened = Store(tmp_path / "store")
    assert reopened.channels() == sorted(TRICKY_CHANNELS)
    for channel in TRICKY_CHANNELS:
        [message] = reopened.messages(channel)
        assert (message.channel, message.read()) == (channel, channel.encode())


def test_unknown_channels_are_empty(store: Store) -> None:
    assert store.messages("nothing") == []
    assert store.count_queued("nothing") == store.count_processed("nothing") == 0
    assert not store.has_channel("nothing")
    assert store.channels() == []


def test_processed_messages_are_counted_and_wiped(store: Store) -> None:
    for i in range(5):
        put(store, b"%d" % i)
    put(store, b"other", channel="other")
    done = store.messages("common", limit=3)
    for message in done:
        store.set_processed(message)
        assert message.path.endswith(os.path.join("processed", message.name))
        assert message.read()
    store.set_processed(store.messages("other")[0])
    assert (store.count_queued("common"), store.count_processed("common")) == (2, 3)
    assert [m.id for m in store.processed("common")] == [m.id for m in done]
    assert store.wipe_processed(1) == 0
    assert store.wipe_processed(0, channel="common") == 3
    assert store.count_processed("common") == 0
    assert store.count_processed("other") == 1
    assert store.wipe_processed(0) == 1
    assert store.count_queued("common") == 2
    with pytest.raises(ValueError):
        store.wipe_processed(-1)


def test_counts_of_each_state_and_the_oldest_queued(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", create=True, max_attempts=1)
    assert store.counts("none") == dict.fromkeys(("queued", "claimed", "delayed", "processed", "dead"), 0)
    assert store.oldest_queued("none") is None
    ids = [put(store, b"%d" % i, priority=i % 3) for i in range(8)]
    oldest = min(int(msg_id[:16], 16) for msg_id in ids) / 1e9
    assert store.oldest_queued("common") == oldest
    first, second, third, *_ = store.claim("common", 4, lease=60)
    store.set_processed(first)
    store.set_failed(second, "no")  # max_attempts=1: dead at once
    again = Store(tmp_path / "store", max_attempts=3)
    again.set_failed(third, "later")
    assert store.counts("common") == {"queued": 4, "claimed": 1, "delayed": 1, "processed": 1, "dead": 1}
    remaining = {m.id for m in store.messages("common")}
    assert store.oldest_queued("common") == min(int(msg_id[:16], 16) for msg_id in remaining) / 1e9


def test_a_wiped_message_is_forgotten_and_a_resend_is_stored_again(store: Store) -> None:
    msg_id = put(store, b"x")
    store.set_processed(store.messages("common")[0])
    assert not store.ingest("common", CLIENT, msg_id, 9, stage(store))
    store.wipe_processed(0)
    assert store.ingest("common", CLIENT, msg_id, 9, stage(store))


def test_set_processed_twice_is_harmless_and_a_vanished_message_is_an_error(store: Store) -> None:
    put(store, b"x")
    [message] = store.messages("common")
    store.set_processed(message)
    store.set_processed(message)
    assert store.count_processed("common") == 1
    store.wipe_processed(0)
    with pytest.raises(StoreError, match="no longer held"):
        store.set_processed(message)


def test_the_two_sides_share_nothing_but_the_directory(tmp_path: Path) -> None:
    """A Store is both sides on one object: what each side keeps, and each of its methods,
    must be its own, or one side would silently use the other's."""
    shared = set(vars(StoreDirectory))
    assert set(vars(IngestSide)) & set(vars(ConsumerSide)) <= shared | {"__init__"}
    ingest = IngestSide(tmp_path / "store", create=True)
    consumer = ConsumerSide(tmp_path / "store")
    base = set(vars(StoreDirectory(tmp_path / "store")))
    assert set(vars(ingest)) & set(vars(consumer)) == base
    both = Store(tmp_path / "store")
    assert set(vars(both)) == set(vars(ingest)) | set(vars(consumer))


def test_importing_dropr_does_not_load_the_store() -> None:
    import subprocess

    code = "import sys, dropr; print('dropr.store' in sys.modules); dropr.Store; print('dropr.store' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
