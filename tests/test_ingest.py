"""The one way messages enter a store, and its steps: staged files, the check against what
their senders declared, moving in without replacing, the syncs and the answer; as the
server and the local transport use it."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from relaykit import (
    check_stored_once,
    kill_relays_then_drain,
)
from storekit import CLIENT, put, stage, tree

import dropr
from dropr import InvalidMessage, _files
from dropr._impl import codec
from dropr._impl import moves as real_moves
from dropr.relay.batches import Entry, SpoolFiles
from dropr.relay.local import LocalTransport
from dropr.store import Store
from dropr.store.ingest import Staged
from dropr.store.staging import remove_staged
from dropr.store.sync import SYNC_FILES_MAX, Flusher

STATES = ("queue", "claimed", "delayed", "processed", "dead")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True)


def arrival(
    store: Store,
    payload: bytes,
    channel: str = "common",
    *,
    msg_id: str | None = None,
    priority: int = 9,
    declared: tuple[int, int] | None = None,
) -> Staged:
    """A message as a sender hands it over: staged whole, with what it declared (by
    default the truth)."""
    file = store.staging("test-").open()
    file.write(payload)
    file.close()
    size, crc = declared or (len(payload), zlib.crc32(payload))
    return Staged(msg_id or codec.new_id(), channel, priority, size, crc, file)


def queued_payloads(store: Store, channel: str = "common") -> list[bytes]:
    return sorted(m.read() for m in store.messages(channel))


# -- the one path -----------------------------------------------------------------------


def test_commit_answers_each_message_and_takes_every_staged_file(store: Store) -> None:
    held = put(store, b"held")
    batch = [
        arrival(store, b"new"),
        arrival(store, b"again", msg_id=held),
        arrival(store, b"short", declared=(99, zlib.crc32(b"short"))),
        arrival(store, b"bent", declared=(4, zlib.crc32(b"tneb"))),
        arrival(store, b"as it is", declared=(-1, -1)),
        arrival(store, b"bad channel", channel="bad\nchannel"),
        arrival(store, b"elsewhere", channel="other"),
    ]
    acks = store.commit(CLIENT, batch)
    assert set(acks) == {m.id for m in batch}
    assert acks[batch[0].id] == ("stored", "")
    assert acks[held] == ("duplicate", "already held")
    assert acks[batch[2].id][0] == "rejected" and "size" in acks[batch[2].id][1]
    assert acks[batch[3].id][0] == "rejected" and "checksum" in acks[batch[3].id][1]
    assert acks[batch[4].id] == ("stored", "")
    assert acks[batch[5].id][0] == "rejected" and "control" in acks[batch[5].id][1]
    assert acks[batch[6].id] == ("stored", "")
    assert os.listdir(store.staging_dir) == []
    assert not any(m.file.path for m in batch)
    assert queued_payloads(store) == [b"as it is", b"held", b"new"]
    assert queued_payloads(store, "other") == [b"elsewhere"]
    assert store.commit(CLIENT, []) == {}


@pytest.mark.parametrize("sync", [True, False])
def test_a_message_due_later_waits_in_delayed_until_its_time(store: Store, sync: bool) -> None:
    later, past, now = arrival(store, b"later"), arrival(store, b"past"), arrival(store, b"now")
    batch = [later._replace(delay_ms=1500), past._replace(delay_ms=1), now]
    time.sleep(0.005)
    assert store.commit(CLIENT, batch, sync=sync) == dict.fromkeys((later.id, past.id, now.id), ("stored", ""))
    due = codec.id_time_ns(later.id) / 1e9 + 1.5
    (name,) = os.listdir(os.path.join(store.path, "channels", "common", "delayed"))
    assert name[1:31] == later.id
    assert os.stat(os.path.join(store.path, "channels", "common", "delayed", name)).st_mtime == pytest.approx(
        due, abs=1e-3
    )
    assert [m.id for m in store.claim("common", 10, 60)] == sorted([past.id, now.id])
    again = arrival(store, b"later", msg_id=later.id)
    assert store.commit(CLIENT, [again._replace(delay_ms=1500)]) == {later.id: ("duplicate", "already held")}
    empty, claimed = 0, []
    while not claimed and time.time() < due + 5:
        claimed = store.claim("common", 10, 60)
        if claimed:  # a claim that returns it ended after its time (checking first would race it)
            assert time.time() >= due
        else:
            empty += 1
            time.sleep(0.05)
    assert empty > 10 and [m.read() for m in claimed] == [b"later"]


def test_commit_for_a_client_the_store_refuses_changes_nothing(store: Store) -> None:
    put(store, b"already here")
    before = tree(store.path)
    batch = [arrival(store, b"x"), arrival(store, b"y", channel="new")]
    acks = store.commit("two words", batch)
    assert {status for status, _ in acks.values()} == {"rejected"}
    assert all("white space" in reason for _, reason in acks.values())
    assert tree(store.path) == before


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Store, list[tuple[str, str, bool]]]:
    """A store whose syncs are recorded instead of done: ``(kind, path, staged)``, where
    ``staged`` says whether the path was still in the staging directory then."""
    calls: list[tuple[str, str, bool]] = []
    for kind, name in (("data", "sync_data"), ("directory", "sync_directory"), ("file system", "sync_file_system")):
        monkeypatch.setattr(_files, name, lambda path, kind=kind: calls.append((kind, path, os.path.exists(path))))
    store = Store(tmp_path / "store", create=True)
    put(store, b"first")  # and the client's first id: its record made, synced once (.bounds)
    calls.clear()
    return store, calls


def test_a_small_batch_syncs_each_file_then_the_directories_it_changed(
    syncs: tuple[Store, list[tuple[str, str, bool]]],
) -> None:
    store, calls = syncs
    batch = [arrival(store, b"%d" % i) for i in range(SYNC_FILES_MAX)]
    paths = [m.file.path for m in batch]
    store.commit(CLIENT, batch)
    assert [kind for kind, _, _ in calls] == ["data"] * SYNC_FILES_MAX + ["directory"] * 2
    data, directories = calls[:SYNC_FILES_MAX], calls[SYNC_FILES_MAX:]
    assert sorted(path for _, path, _ in data) == sorted(paths)
    assert all(staged for _, _, staged in data)  # before the move
    queue = os.path.join(store.channels_dir, "common", "queue")
    assert sorted(path for _, path, _ in directories) == sorted([store.staging_dir, queue])
    assert len(queued_payloads(store)) == SYNC_FILES_MAX + 1


def test_a_large_batch_or_a_new_channel_syncs_the_file_system(
    syncs: tuple[Store, list[tuple[str, str, bool]]],
) -> None:
    store, calls = syncs
    store.commit(CLIENT, [arrival(store, b"%d" % i) for i in range(SYNC_FILES_MAX + 1)])
    assert calls == [("file system", store.path, True)] * 2
    calls.clear()
    store.commit(CLIENT, [arrival(store, b"new channel", channel="new")])
    assert [kind for kind, _, _ in calls] == ["data", "file system"]
    calls.clear()
    store.commit(CLIENT, [arrival(store, b"long names", channel="c" * 200)])
    assert [kind for kind, _, _ in calls] == ["data", "file system"]
    calls.clear()
    store.commit(CLIENT, [arrival(store, b"unsynced")], sync=False)
    assert calls == []
    assert len(queued_payloads(store)) == SYNC_FILES_MAX + 3


@pytest.mark.parametrize("failing", ["sync_data", "sync_directory"])
def test_a_failed_sync_acknowledges_nothing_and_leaves_no_staged_file(
    store: Store, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    put(store, b"first")

    def fail(path: str) -> None:
        raise OSError(errno.EIO, "the disk failed")

    monkeypatch.setattr(_files, failing, fail)
    batch = [arrival(store, b"one"), arrival(store, b"two")]
    with pytest.raises(OSError, match="disk failed"):
        store.commit(CLIENT, batch)
    assert os.listdir(store.staging_dir) == []
    monkeypatch.undo()
    # What got into the queue before the failure is a duplicate when sent again.
    moved = len(queued_payloads(store)) - 1
    assert moved == (2 if failing == "sync_directory" else 0)
    again = [arrival(store, payload, msg_id=m.id) for payload, m in zip((b"one", b"two"), batch, strict=True)]
    expected = "duplicate" if moved else "stored"
    assert {status for status, _ in store.commit(CLIENT, again).values()} == {expected}
    assert queued_payloads(store) == [b"first", b"one", b"two"]


# -- the group commit of syncfs ---------------------------------------------------------


class Waiters(threading.Condition):
    """A condition that counts the threads waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting += 1
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout * 100)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("timed out")


def test_callers_during_a_flush_share_the_next_one(store: Store) -> None:
    """Five callers arrive while a flush runs: one more flush serves them all, and none of
    them returns before a flush that started after its call has ended."""
    running, go_on = threading.Event(), threading.Event()
    started: list[int] = []
    ended: list[int] = []

    def flush() -> None:
        started.append(len(started))
        if len(started) == 1:
            running.set()
            go_on.wait(30)
        ended.append(len(ended))

    flusher = Flusher(flush)
    flusher._changed = waiters = Waiters()
    returned: list[tuple[int, int]] = []

    def call() -> None:
        before = len(started)
        flusher.flush()
        returned.append((before, len(ended)))  # flushes started before the call, ended after

    first = threading.Thread(target=call)
    first.start()
    running.wait(30)
    later = [threading.Thread(target=call) for _ in range(5)]
    for thread in later:
        thread.start()
    wait_for(lambda: waiters.waiting == 5)
    go_on.set()
    for thread in [first, *later]:
        thread.join(30)
    assert len(started) == len(ended) == 2
    assert len(returned) == 6 and all(after > before for before, after in returned)


def test_a_failed_flush_fails_its_callers_only() -> None:
    outcomes = iter([OSError(errno.EIO, "the disk failed"), None])

    def flush() -> None:
        error = next(outcomes)
        if error:
            raise error

    flusher = Flusher(flush)
    with pytest.raises(OSError, match="disk failed"):
        flusher.flush()
    flusher.flush()


# -- staged files -----------------------------------------------------------------------


def test_a_staged_link_is_the_same_file_measured(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "queued"
    source.write_bytes(b"payload" * 1000)
    staged = store.staging("relay-x+").link(str(source))
    assert os.path.samefile(staged.path, source)
    assert os.path.basename(staged.path).startswith("relay-x+")
    assert (staged.size, staged.crc) == (7000, zlib.crc32(b"payload" * 1000))
    with pytest.raises(FileNotFoundError):
        store.staging("relay-x+").link(str(tmp_path / "gone"))
    assert os.listdir(store.staging_dir) == [os.path.basename(staged.path)]
    staged.discard()
    staged.discard()
    assert os.listdir(store.staging_dir) == [] and source.exists()


def test_a_staged_link_across_file_systems_is_a_copy_measured(store: Store) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(store.path).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    source = shm / f"dropr-test-{os.getpid()}-{os.urandom(4).hex()}"
    payload = os.urandom(3 * 1024 * 1024 + 5)
    source.write_bytes(payload)
    try:
        staged = store.staging("relay-x+").link(str(source))
        assert not os.path.samefile(staged.path, source)
        assert Path(staged.path).read_bytes() == payload
        assert (staged.size, staged.crc) == (len(payload), zlib.crc32(payload))
    finally:
        source.unlink()


def test_leftovers_are_found_by_their_prefix_only(store: Store) -> None:
    for prefix in ("relay-a+", "relay-a-b+", "upload-"):
        store.staging(prefix).open().close()
    assert remove_staged(store.staging_dir, "relay-a+") == 1
    left = sorted(os.listdir(store.staging_dir))
    assert len(left) == 2 and left[0].startswith("relay-a-b+") and left[1].startswith("upload-")


# -- the local transport ----------------------------------------------------------------


def entry_of(spool: Path, payload: bytes, channel: str = "common", **lie: int) -> Entry:
    """A spool file and the relay's entry for it (its name's ``size`` or ``crc`` may lie)."""
    msg_id = codec.new_id()
    size, crc = lie.get("size", len(payload)), lie.get("crc", zlib.crc32(payload))
    name = codec.spool_name(5, msg_id, "p", channel, size, crc)
    (spool / name).write_bytes(payload)
    return Entry(name, msg_id, 5, channel, size, crc)


def test_the_local_transport_commits_through_the_same_path(tmp_path: Path) -> None:
    spool, store_dir = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    store = Store(store_dir, create=True)
    other = store.staging("relay-a-b+").open()  # another client's relay, in the middle of a batch
    mine = store.staging("relay-a+").open()  # what this one left when it died
    batch = [
        entry_of(spool, b"one"),
        entry_of(spool, b"two", "~" + "0" * 32),
        entry_of(spool, b"lies", crc=0),
    ]

    async def send(entries: list[Entry]) -> dict[str, tuple[str, str]]:
        with ThreadPoolExecutor(1) as executor:
            files = SpoolFiles("a", str(spool), lambda name: str(spool / name), resolve)
            transport = LocalTransport(store_dir.as_uri(), executor, files)
            try:
                return await transport.send(entries)
            finally:
                await transport.aclose()

    def resolve(channel_field: str) -> str:
        if channel_field.startswith("~"):
            raise ValueError("the text of this field is missing")
        return channel_field

    acks = asyncio.run(send(batch))
    assert acks[batch[0].id] == ("stored", "")
    assert acks[batch[1].id][0] == "rejected" and "missing" in acks[batch[1].id][1]
    assert acks[batch[2].id][0] == "rejected" and "checksum" in acks[batch[2].id][1]
    assert queued_payloads(store) == [b"one"]
    assert os.listdir(store.staging_dir) == [os.path.basename(other.path)]
    assert not os.path.exists(mine.path)
    assert asyncio.run(send(batch[:1])) == {batch[0].id: ("duplicate", "already held")}
    assert all((spool / e.name).exists() for e in batch)  # the relay moves its files itself


@pytest.mark.timeout(600)
def test_kill_9_of_a_relay_storing_locally_loses_nothing_and_leaves_nothing_staged(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    client = dropr.Client(spool)
    sent = {}
    for i in range(1500):
        payload = f"{i} ".encode() + os.urandom(random.randrange(1, 200))
        sent[client.put(payload, peer=store.as_uri(), priority=i % 10)] = payload
    client.close()
    kill_relays_then_drain(spool, store, len(sent), rounds=3)
    check_stored_once([store], sent)
    assert os.listdir(store / "tmp") == []  # what the killed relays staged went when the last one started


# -- the steps ------------------------------------------------------------------------


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
    assert b"again" not in {p.read_bytes() for p in held if codec.parse_store_name(p.name)[1] in ids}


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


def test_flush(store: Store) -> None:
    put(store, b"x")
    store.flush()
    assert [m.read() for m in store.messages("common")] == [b"x"]


# -- a file system without hard links ---------------------------------------------------


class _NoLinks:
    """``dropr._impl.moves`` as on a file system without hard links (FAT, some network
    file systems): every link fails with EPERM before it made anything, the rest is real."""

    def __init__(self) -> None:
        self.refused = 0

    def link_files(
        self, staged: list[str], names: list[str], target_fds: tuple[int, ...], keep: bool = False
    ) -> tuple[list[bool], int]:
        self.refused += 1
        return [], errno.EPERM

    def __getattr__(self, name: str) -> Any:
        return getattr(real_moves, name)


@pytest.fixture
def no_links(monkeypatch: pytest.MonkeyPatch) -> _NoLinks:
    moves = _NoLinks()
    monkeypatch.setattr("dropr.store.ingest.moves", moves)
    return moves


def test_without_hard_links_each_message_is_renamed_in_once(store: Store, no_links: _NoLinks) -> None:
    held = put(store, b"held")
    assert no_links.refused == 1
    batch = [arrival(store, b"%d" % i) for i in range(5)]
    batch.insert(2, arrival(store, b"again", msg_id=held))
    batch.append(arrival(store, b"later")._replace(delay_ms=60_000))
    acks = store.commit(CLIENT, batch)
    assert acks[held] == ("duplicate", "already held")
    assert [acks[m.id] for m in batch if m.id != held] == [("stored", "")] * 6
    assert queued_payloads(store) == [b"0", b"1", b"2", b"3", b"4", b"held"]
    [later] = Path(store.path, "channels", "common", "delayed").iterdir()
    assert later.stat().st_mtime > time.time() + 50
    assert os.listdir(store.staging_dir) == []
    assert store.commit(CLIENT, [arrival(store, b"again", msg_id=batch[0].id)])[batch[0].id][0] == "duplicate"
    assert queued_payloads(store) == [b"0", b"1", b"2", b"3", b"4", b"held"]


def test_without_hard_links_every_group_gets_a_copy_of_its_own(store: Store, no_links: _NoLinks) -> None:
    assert store.subscribe("common", "a") and store.subscribe("common", "b")
    batch = [arrival(store, b"%d" % i) for i in range(3)]
    assert set(store.commit(CLIENT, batch).values()) == {("stored", "")}
    assert os.listdir(store.staging_dir) == []
    for group in ("a", "b"):
        queued = store.messages("common", group=group)
        assert [(m.id, m.client, m.read()) for m in queued] == [(m.id, CLIENT, b"%d" % i) for i, m in enumerate(batch)]
        assert {os.stat(m.path).st_nlink for m in queued} == {1}
        assert not [n for n in os.listdir(Path(queued[0].path).parent) if n.startswith(".")]
    [first] = store.claim("common", 1, 60, group="a")
    store.set_processed(first)
    assert store.commit(CLIENT, [arrival(store, b"again", msg_id=first.id)])[first.id][0] == "duplicate"
    assert store.count_queued("common", group="b") == 3
