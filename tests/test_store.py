"""The store as the server and a single consumer see it: ingest, duplicates, validation,
delivery order, processed messages and their wiping."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from storekit import CLIENT, put, tree

from dropr import InvalidMessage, StoreError
from dropr._impl import codec
from dropr.store import Message, Store

STATES = ("queue", "claimed", "delayed", "processed", "dead")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True)


def stage(store: Store, payload: bytes = b"payload") -> str:
    path = os.path.join(store.staging_dir, os.urandom(6).hex())
    Path(path).write_bytes(payload)
    return path


def test_a_missing_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a store"):
        Store(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_create_makes_the_layout_and_reopens(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", create=True)
    assert sorted(os.listdir(tmp_path / "s")) == ["channels", "names", "tmp"]
    assert store.staging_dir == str(tmp_path / "s" / "tmp")
    assert Store(tmp_path / "s").channels() == []


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


@pytest.mark.parametrize("state", STATES)
def test_a_message_held_in_any_state_is_a_duplicate(store: Store, state: str) -> None:
    msg_id = put(store, b"first")
    [message] = store.messages("common")
    channel_dir = Path(store.path, "channels", "common")
    if state != "queue":
        os.rename(message.path, channel_dir / state / message.name)
    staged = stage(store, b"second")
    assert store.ingest("common", CLIENT, msg_id, 9, staged) is False
    assert not os.path.exists(staged)
    held = [p for s in STATES for p in (channel_dir / s).iterdir()]
    assert [p.read_bytes() for p in held] == [b"first"]


def test_the_same_id_from_another_client_or_priority_is_another_message(store: Store) -> None:
    msg_id = put(store, b"a")
    assert store.ingest("common", "someone-else", msg_id, 9, stage(store))
    assert store.ingest("common", CLIENT, msg_id, 4, stage(store))
    assert store.count_queued("common") == 3


BAD = [
    ("channel", ""),
    ("channel", "a\u2028b"),
    ("channel", "\u200b"),
    ("channel", "a\x00b"),
    ("channel", "line\nbreak"),
    ("channel", "x" * 256),
    ("channel", "\udc80"),
    ("channel", None),
    ("client", ""),
    ("client", "two words"),
    ("client", "nul\x00"),
    ("client", "c" * 256),
    ("id", "xyz"),
    ("id", "18EAB4AE509AEF7843F2E9A7000000"),
    ("id", "18eab4ae509aef7843f2e9a700000"),
    ("id", "../../../../etc/passwd"),
    ("id", 5),
    ("priority", 10),
    ("priority", -1),
    ("priority", True),
    ("priority", "5"),
    ("priority", 1.0),
]


@pytest.mark.parametrize(("what", "value"), BAD)
def test_bad_input_is_refused_and_changes_nothing(store: Store, what: str, value: object) -> None:
    put(store, b"already here")
    staged = stage(store, b"new")
    before = tree(store.path)
    args: dict[str, object] = {
        "channel": "common",
        "client": CLIENT,
        "msg_id": codec.new_id(),
        "priority": 5,
    }
    args["msg_id" if what == "id" else what] = value
    with pytest.raises(InvalidMessage):
        store.ingest(staged=staged, **args)  # type: ignore[arg-type]
    assert tree(store.path) == before


def test_ingest_many_answers_each_message(store: Store) -> None:
    held = put(store, b"held")
    [message] = store.messages("common")
    store.set_processed(message)
    batch = [
        ("common", codec.new_id(), 5, stage(store, b"new")),
        ("common", held, 9, stage(store, b"again")),
        ("other", codec.new_id(), 0, stage(store, b"elsewhere")),
        ("common", "not-an-id", 5, stage(store, b"bad id")),
        ("bad\nchannel", codec.new_id(), 5, stage(store, b"bad channel")),
        ("common", codec.new_id(), 10, stage(store, b"bad priority")),
    ]
    ingested = store.ingest_many(CLIENT, batch)
    stored, duplicate, elsewhere, *refused = ingested.results
    assert (stored, duplicate, elsewhere) == (True, False, True)
    assert all(isinstance(reason, str) and reason for reason in refused)
    left = sorted(os.path.basename(staged) for *_, staged in batch[3:])
    assert sorted(os.listdir(store.staging_dir)) == left
    channels = Path(store.path, "channels")
    assert set(ingested.directories) == {
        store.staging_dir,
        str(channels / "common" / "queue"),
        str(channels / "other" / "queue"),
    }
    assert ingested.created  # "other" is new
    assert store.channels() == ["common", "other"]
    assert [m.read() for m in store.messages("common")] == [b"new"]
    again = store.ingest_many(CLIENT, [("other", codec.new_id(), 1, stage(store))])
    assert again.results == [True] and not again.created
    for directory in again.directories:
        store.sync_directory(directory)


def test_ingest_many_with_a_bad_client_changes_nothing(store: Store) -> None:
    put(store, b"already here")
    batch = [("common", codec.new_id(), 5, stage(store)), ("new", codec.new_id(), 5, stage(store))]
    before = tree(store.path)
    ingested = store.ingest_many("two words", batch)
    assert len(ingested.results) == 2 and all(isinstance(r, str) for r in ingested.results)
    assert (ingested.directories, ingested.created) == ((), False)
    assert tree(store.path) == before


def test_ingest_many_finds_duplicates_in_large_batches(store: Store) -> None:
    """Large batches list small state directories instead of probing each name: duplicates
    in every state are still found, and so is a message sent twice in one batch."""
    ids = [put(store, b"%d" % i) for i in range(50)]
    channel_dir = Path(store.path, "channels", "common")
    for index, message in enumerate(store.messages("common")):
        state = STATES[index % len(STATES)]
        if state != "queue":
            os.rename(message.path, channel_dir / state / message.name)
    fresh = [codec.new_id() for _ in range(30)]
    batch = [("common", msg_id, 9, stage(store, b"again")) for msg_id in ids + fresh + fresh[:1]]
    results = store.ingest_many(CLIENT, batch).results
    assert results == [False] * 50 + [True] * 30 + [False]
    assert os.listdir(store.staging_dir) == []
    held = [p for s in STATES for p in (channel_dir / s).iterdir()]
    assert len(held) == 80
    assert b"again" not in {p.read_bytes() for p in held if p.name[1:31] in ids}


def test_ingest_after_the_channel_was_removed_under_the_store(store: Store) -> None:
    put(store, b"first", channel="gone")
    shutil.rmtree(Path(store.path, "channels", "gone"))
    msg_id = put(store, b"second", channel="gone")
    assert [m.id for m in store.messages("gone")] == [msg_id]
    store.close()
    assert put(store, b"third", channel="gone")
    assert store.count_queued("gone") == 2


def test_sync_data_and_sync_directory(store: Store) -> None:
    path = stage(store)
    store.sync_data(path)
    store.sync_directory(store.staging_dir)
    with pytest.raises(FileNotFoundError):
        store.sync_data(os.path.join(store.staging_dir, "gone"))
    link = path + ".link"
    os.symlink(path, link)
    with pytest.raises(OSError):  # a symlink is refused
        store.sync_data(link)
    with pytest.raises(NotADirectoryError):
        store.sync_directory(path)


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


def test_long_fields_are_kept_in_names(store: Store) -> None:
    channel, client = "channel-" * 20, "client-" * 20
    put(store, b"x", channel=channel, client=client)
    names = os.listdir(Path(store.path, "names"))
    assert len(names) == 2 and all(name.startswith("~") for name in names)
    [message] = Store(store.path).messages(channel)
    assert (message.channel, message.client) == (channel, client)


def test_a_missing_staged_file_is_an_error(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.ingest("common", CLIENT, codec.new_id(), 9, os.path.join(store.staging_dir, "gone"))
    with pytest.raises(FileNotFoundError):
        store.ingest("new-channel", CLIENT, codec.new_id(), 9, os.path.join(store.staging_dir, "gone"))


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


def test_flush(store: Store) -> None:
    put(store, b"x")
    store.flush()
    assert [m.read() for m in store.messages("common")] == [b"x"]


def test_importing_dropr_does_not_load_the_store() -> None:
    import subprocess

    code = "import sys, dropr; print('dropr.store' in sys.modules); dropr.Store; print('dropr.store' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
