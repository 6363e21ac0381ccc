"""Store files shared by several messages: what a request's small messages become (one file,
hard-linked under each message's name), read back one by one, claimed, settled, failed and
released one by one, without one message's lease or retry time ever showing on another's.

Real store directories, the real ingest side and consumer side, a real server for the
request; both twins of the hot path through the suite's two runs.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest
from support import start_server
from test_server import batch, msg, post

from dropr import _codec_py
from dropr._files import ARRIVING_MODE, SHARED_MODE
from dropr._impl import moves
from dropr.errors import StoreError
from dropr.store import Message, Store, claims
from dropr.store.ingest import Ingested, IngestSide, Move, Staged
from dropr.store.staging import write_held

CHANNEL = "shared"


def put_shared(
    store_dir: Path, payloads: list[bytes], channel: str = CHANNEL, ids: list[str] | None = None, priority: int = 5
) -> list[str]:
    """Ingest ``payloads`` as one request's messages held in memory: one shared file."""
    ingest = IngestSide(store_dir, create=True)
    staging = ingest.staging("test-")
    files = []
    for data in payloads:
        staged = staging.hold()
        staged.write(data)
        staged.close()
        files.append(staged)
    ids = ids or [_codec_py.new_id() for _ in payloads]
    write_held(files, [(msg_id, channel, priority) for msg_id in ids])
    staged_messages = [
        Staged(msg_id, channel, priority, len(data), zlib.crc32(data), file)
        for msg_id, data, file in zip(ids, payloads, files, strict=True)
    ]
    acks = ingest.commit("client", staged_messages)
    assert acks == dict.fromkeys(ids, ("stored", ""))
    ingest.close()
    return ids


def queue(store_dir: Path, channel: str = CHANNEL) -> Path:
    return store_dir / "channels" / channel / "queue"


def inodes(directory: Path) -> set[int]:
    return {os.lstat(directory / name).st_ino for name in os.listdir(directory) if not name.startswith(".")}


def test_a_requests_small_messages_share_one_file_each_read_as_its_own(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        msgs = [msg(f"message {i}".encode() * (i % 7), CHANNEL, i % 10) for i in range(60)]
        assert post(server, batch("host-a", msgs)).acks() == {m.id: ["stored", ""] for m in msgs}
        names = sorted(os.listdir(queue(server.store_dir)))
        assert len(names) == 60
        priorities: dict[int, set[str]] = {}
        for name in names:
            priorities.setdefault(os.lstat(queue(server.store_dir) / name).st_ino, set()).add(name[0])
        assert 10 <= len(priorities) < 60  # a file a priority (and a chunk), not one a message
        assert all(len(held) == 1 for held in priorities.values())
        for m in msgs:
            path = queue(server.store_dir) / f"{m.priority}{m.id}+host-a"
            assert os.lstat(path).st_mode & 0o7777 == SHARED_MODE
            assert moves.read_files([str(path)], 0)[0] == [m.payload]
        assert not [n for n in os.listdir(server.store_dir / "tmp") if not n.startswith(".")]
        store = Store(server.store_dir)
        assert {m.id: m.read() for m in store.messages(CHANNEL)} == {m.id: m.payload for m in msgs}


def test_a_request_mixing_channels_and_priorities_shares_a_file_per_queue_each_claimed_whole(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        msgs = [msg(b"mixed %d" % i, ("left", "right")[i % 2], (1, 5)[i // 2 % 2]) for i in range(40)]
        assert post(server, batch("host-a", msgs)).acks() == {m.id: ["stored", ""] for m in msgs}
        store = Store(server.store_dir)
        for channel in ("left", "right"):
            claimed = store.claim(channel, 100, 60)
            assert sorted(m.id for m in claimed) == sorted(m.id for m in msgs if m.channel == channel)
            files: dict[int, list[Message]] = {}
            for m in claimed:
                files.setdefault(os.lstat(m.path).st_ino, []).append(m)
            assert len(files) < len(claimed)  # shared, and no message copied out of its file
            for shared in files.values():
                assert os.lstat(shared[0].path).st_nlink == len(shared)
                assert len({m.priority for m in shared}) == 1
            assert {m.id: m.read() for m in claimed} == {m.id: m.payload for m in msgs if m.channel == channel}
            store.set_processed(*claimed)


def test_a_shared_file_claimed_whole_keeps_one_inode_and_each_message_settles(tmp_path: Path) -> None:
    payloads = [b"one", b"", b"three" * 100]
    ids = put_shared(tmp_path / "store", payloads)
    store = Store(tmp_path / "store")
    claimed = store.claim(CHANNEL, 10, 60)
    assert [m.id for m in claimed] == sorted(ids)
    assert len({os.lstat(m.path).st_ino for m in claimed}) == 1
    assert [m.read() for m in claimed] == [payloads[ids.index(m.id)] for m in claimed]
    for message in claimed:
        store.set_processed(message)
    assert store.count_processed(CHANNEL) == 3 and store.count_queued(CHANNEL) == 0


def test_the_messages_of_a_claim_read_their_shared_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [f"message {i}".encode() * i for i in range(50)]
    ids = put_shared(tmp_path / "store", payloads)
    store = Store(tmp_path / "store")
    claimed = store.claim(CHANNEL, 50, 60)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kw: opened.append(path) or real_open(path, *args, **kw))
    assert [m.read() for m in reversed(claimed)] == [payloads[ids.index(m.id)] for m in reversed(claimed)]
    assert len(opened) == 1
    assert [m.read() for m in claimed[:2]] == [payloads[ids.index(m.id)] for m in claimed[:2]]  # again: from disk


def test_messages_of_one_claim_in_two_shared_files_under_the_same_ids_read_their_own(tmp_path: Path) -> None:
    """The same client and id at another priority is another message, in another file."""
    ids = put_shared(tmp_path / "store", [b"first %d" % i for i in range(3)], priority=5)
    put_shared(tmp_path / "store", [b"second %d" % i for i in range(3)], ids=ids, priority=3)
    store = Store(tmp_path / "store")
    claimed = store.claim(CHANNEL, 10, 60)
    assert len(claimed) == 6
    for message in sorted(claimed, key=lambda m: -m.priority):  # the priority-5 file read first
        kind = b"first" if message.priority == 5 else b"second"
        assert message.read() == b"%s %d" % (kind, ids.index(message.id))


def test_a_message_of_a_shared_claim_reads_its_own_after_a_release_a_settle_or_its_end(tmp_path: Path) -> None:
    payloads = [b"a", b"b", b"c"]
    ids = put_shared(tmp_path / "store", payloads)
    store = Store(tmp_path / "store")
    first, released, processed = store.claim(CHANNEL, 10, 60)
    assert first.read() == payloads[ids.index(first.id)]  # the others' payloads read with it
    store.release(released)
    assert os.lstat(released.path).st_mode & 0o7777 != SHARED_MODE  # a copy of its own now
    assert released.read() == payloads[ids.index(released.id)]
    store.set_processed(processed)
    os.unlink(processed.path)
    with pytest.raises(FileNotFoundError):
        processed.read()


def test_a_claim_of_part_of_a_shared_file_gives_each_message_taken_its_own(tmp_path: Path) -> None:
    payloads = [f"part {i}".encode() for i in range(6)]
    ids = put_shared(tmp_path / "store", payloads)
    store = Store(tmp_path / "store")
    first = store.claim(CHANNEL, 2, 60)
    assert len(first) == 2
    assert all(os.lstat(m.path).st_nlink == 1 for m in first)
    rest = store.claim(CHANNEL, 10, 120)
    assert len(rest) == 4 and len({os.lstat(m.path).st_ino for m in rest}) == 1
    store.set_processed(*first, *rest)  # neither claim's lease shows on the other's messages
    assert {m.id: m.read() for m in store.processed(CHANNEL)} == dict(zip(ids, payloads, strict=True))


def two_shared_files(store_dir: Path) -> tuple[Store, list[str], list[str]]:
    """A store holding a shared file of two messages, then one of three; their ids."""
    first = put_shared(store_dir, [b"a", b"b"])
    later = put_shared(store_dir, [b"c", b"d", b"e"])
    return Store(store_dir), first, later


def claim_whole_and_settle(store: Store, limit: int, later: list[str], claimed: list[Message]) -> None:
    """Claim the messages ``later`` of one shared file, whole, and settle them with ``claimed``."""
    again = store.claim(CHANNEL, limit, 60)
    assert sorted(m.id for m in again) == sorted(later)
    assert len({os.lstat(m.path).st_ino for m in again}) == 1
    store.set_processed(*claimed, *again)
    assert store.count_processed(CHANNEL) == len(claimed) + len(again)


def test_a_claim_that_would_cut_a_shared_file_after_others_gives_its_share_back(tmp_path: Path) -> None:
    store, plain, later = two_shared_files(tmp_path / "store")
    changed = [os.lstat(path).st_ctime_ns for path in sorted(queue(tmp_path / "store").iterdir())]
    claimed = store.claim(CHANNEL, 4, 60)
    assert sorted(m.id for m in claimed) == sorted(plain)  # short of the limit: the next file stays whole
    left = sorted(queue(tmp_path / "store").iterdir())
    assert [os.lstat(path).st_ctime_ns for path in left] == changed[2:]  # never moved: not taken, not given back
    claim_whole_and_settle(store, 4, later, claimed)


def test_a_claim_far_short_of_its_limit_takes_a_shared_file_in_part(tmp_path: Path) -> None:
    """One message, then a file of six: a claim of three stopping before the file would
    end with one. It takes two of the file (copies of their own); the file keeps the rest,
    which the next claim takes whole."""
    [single] = put_shared(tmp_path / "store", [b"alone"])
    shared = put_shared(tmp_path / "store", [b"%d" % i for i in range(6)])
    store = Store(tmp_path / "store")
    claimed = store.claim(CHANNEL, 3, 60)
    assert [m.id for m in claimed] == [single, *shared[:2]]
    assert {os.lstat(m.path).st_nlink for m in claimed} == {1}
    assert [m.read() for m in claimed] == [b"alone", b"0", b"1"]
    claim_whole_and_settle(store, 10, shared[2:], claimed)


def test_a_claim_ending_where_a_shared_file_is_still_arriving_gives_its_share_back(tmp_path: Path) -> None:
    store, plain, later = two_shared_files(tmp_path / "store")
    names = sorted(os.listdir(queue(tmp_path / "store")))
    aside = tmp_path / "aside"
    os.rename(queue(tmp_path / "store") / names[-1], aside)  # its last link not in the queue yet
    claimed = store.claim(CHANNEL, 10, 60)
    assert sorted(m.id for m in claimed) == sorted(plain)  # not copies of c and d: they wait for e
    assert sorted(os.listdir(queue(tmp_path / "store"))) == names[2:-1]
    os.rename(aside, queue(tmp_path / "store") / names[-1])
    store.look_again(CHANNEL)
    claim_whole_and_settle(store, 10, later, claimed)


def arriving(store_dir: Path) -> tuple[Store, list[str], Path]:
    """A store holding a shared file of three messages that ingest is still linking in, as
    a request's commit leaves it for a moment: its mode :data:`ARRIVING_MODE`, its staged
    name (another link) still in ``tmp/``; the ids and that name."""
    ids = put_shared(store_dir, [b"c", b"d", b"e"])
    first = queue(store_dir) / next(name for name in os.listdir(queue(store_dir)) if ids[0] in name)
    os.chmod(first, ARRIVING_MODE)
    staged = store_dir / "tmp" / "upload-still-linking"
    os.link(first, staged)
    return Store(store_dir), ids, staged


def arrived(staged: Path) -> None:
    """What ingest does once the file's last name is in: the staged name goes, then the mode."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.unlink(staged)
        os.fchmod(fd, SHARED_MODE)
    finally:
        os.close(fd)


def test_a_claim_leaves_a_shared_file_still_arriving_and_takes_it_whole_once_in(tmp_path: Path) -> None:
    store, ids, staged = arriving(tmp_path / "store")
    changed = {path.name: os.lstat(path).st_ctime_ns for path in queue(tmp_path / "store").iterdir()}
    assert store.claim(CHANNEL, 10, 60) == []  # no copies of some: all of them in a moment
    assert [m.read() for m in store.messages(CHANNEL)] == [b"c", b"d", b"e"]  # each its own, meanwhile too
    assert {path.name: os.lstat(path).st_ctime_ns for path in queue(tmp_path / "store").iterdir()} == changed
    arrived(staged)
    claimed = store.claim(CHANNEL, 10, 60)
    assert sorted(m.id for m in claimed) == sorted(ids)
    assert len({os.lstat(m.path).st_ino for m in claimed}) == 1
    store.set_processed(*claimed)
    assert store.count_processed(CHANNEL) == 3


def test_a_shared_file_shows_complete_only_with_its_staged_name_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment ingest gives a shared file its complete mode, its links are the queue's
    alone: a claim then (before the commit has answered) takes it whole, copying nothing."""
    store = Store(tmp_path / "store", create=True)
    seen: list[tuple[int, int]] = []
    claimed: list[Message] = []
    real = IngestSide.ingest_many

    def ingest_then_claim(self: IngestSide, client: str, messages: Iterable[Move]) -> Ingested:
        done = real(self, client, messages)
        for path in queue(tmp_path / "store").iterdir():
            info = os.lstat(path)
            seen.append((info.st_mode & 0o7777, info.st_nlink))
        claimed.extend(store.claim(CHANNEL, 10, 60))
        return done

    monkeypatch.setattr(IngestSide, "ingest_many", ingest_then_claim)
    ids = put_shared(tmp_path / "store", [b"a", b"b", b"c"])
    assert seen == [(SHARED_MODE, 3)] * 3
    assert sorted(m.id for m in claimed) == sorted(ids)
    assert {os.lstat(m.path).st_nlink for m in claimed} == {3}  # one file, no copy
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_a_claim_passes_over_a_shared_file_still_arriving_among_the_names_it_takes(tmp_path: Path) -> None:
    """Files of requests in flight at once: one still being linked in between two complete
    ones. The claim takes the complete ones whole and leaves that one to a later claim, whole
    too, instead of copying what it saw of it."""
    before = put_shared(tmp_path / "store", [b"a", b"b"])
    store, middle, staged = arriving(tmp_path / "store")
    after = put_shared(tmp_path / "store", [b"f", b"g"])
    claimed = store.claim(CHANNEL, 10, 60)
    assert sorted(m.id for m in claimed) == sorted(before + after)
    assert {os.lstat(m.path).st_nlink for m in claimed} == {2}  # two files whole, not one copy
    assert sorted(m.id for m in store.messages(CHANNEL)) == sorted(middle)
    assert {os.lstat(m.path).st_nlink for m in store.messages(CHANNEL)} == {4}  # three names and the staged one
    arrived(staged)
    claim_whole_and_settle(store, 10, middle, claimed)


def test_a_waiting_claim_takes_a_shared_file_once_it_arrived(tmp_path: Path) -> None:
    store, ids, staged = arriving(tmp_path / "store")
    got: list[Message] = []
    waiting = threading.Thread(target=lambda: got.extend(store.claim(CHANNEL, 10, 60, wait=30)))
    waiting.start()
    time.sleep(0.1)
    arrived(staged)  # no new name in the queue: the claim looks again by itself
    waiting.join()
    assert sorted(m.id for m in got) == sorted(ids)
    assert len({os.lstat(m.path).st_ino for m in got}) == 1


def test_a_shared_file_left_arriving_by_an_ingest_that_died_is_claimed_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, _ = arriving(tmp_path / "store")
    monkeypatch.setattr(claims, "ARRIVING_SECONDS", 0.05)
    time.sleep(0.1)  # older than that, and than a clock tick of the file system
    claimed = store.claim(CHANNEL, 10, 60)
    assert sorted(m.id for m in claimed) == sorted(ids)
    assert all(os.lstat(m.path).st_nlink == 1 for m in claimed)  # the leftover link shares it: copies
    store.set_processed(*claimed)
    assert store.count_processed(CHANNEL) == 3


def test_a_scan_ending_inside_a_shared_file_leaves_that_file_to_the_next_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [put_shared(tmp_path / "store", [f"{n}.{i}".encode() for i in range(10)]) for n in range(4)]
    monkeypatch.setattr(claims, "SCAN_WINDOW", 0)  # a scan sees 2 * 10 + 16 names: three files and part of one
    store = Store(tmp_path / "store", rescan_interval=60)  # the claims after the first take what it left
    for ids in files:
        claimed = store.claim(CHANNEL, 10, 60)
        assert [m.id for m in claimed] == ids
        assert {os.lstat(m.path).st_nlink for m in claimed} == {10}  # each file whole, not one copy made
        store.set_processed(*claimed)
    assert store.count_processed(CHANNEL) == 40


def test_releasing_or_failing_one_message_of_a_shared_claim_leaves_the_others_lease(tmp_path: Path) -> None:
    payloads = [b"x", b"y", b"z"]
    ids = put_shared(tmp_path / "store", payloads)
    store = Store(tmp_path / "store")
    claimed = store.claim(CHANNEL, 10, 60)
    released, failed, kept = claimed
    store.release(released)
    store.set_failed(failed, "not now")
    assert os.lstat(kept.path).st_mtime_ns == kept.lease_ns  # still its claimant's
    store.set_processed(kept)
    assert store.status(CHANNEL, released.id) == "queued"
    assert store.status(CHANNEL, failed.id) == "delayed"
    assert store.status(CHANNEL, kept.id) == "processed"
    assert sorted([released.id, failed.id, kept.id]) == sorted(ids)
    again = store.claim(CHANNEL, 10, 60)
    assert [m.id for m in again] == [released.id] and again[0].read() == payloads[ids.index(released.id)]


def test_an_expired_shared_claim_comes_back_whole(tmp_path: Path) -> None:
    put_shared(tmp_path / "store", [b"p", b"q"])
    store = Store(tmp_path / "store", sweep_interval=0.0)
    first = store.claim(CHANNEL, 10, 0.2)
    assert len(first) == 2
    time.sleep(0.3)
    again = store.claim(CHANNEL, 10, 60)
    assert sorted(m.id for m in again) == sorted(m.id for m in first)
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(first[0])
    store.set_processed(*again)
    assert store.count_processed(CHANNEL) == 2


def test_a_resent_shared_file_is_a_duplicate_for_each_message(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        msgs = [msg(f"resent {i}".encode(), CHANNEL, 5) for i in range(20)]
        assert post(server, batch("host-r", msgs)).acks() == {m.id: ["stored", ""] for m in msgs}
        again = post(server, batch("host-r", msgs)).acks()
        assert again == {m.id: ["duplicate", "already held"] for m in msgs}
        assert len(os.listdir(queue(server.store_dir))) == 20


def test_without_hard_links_each_message_of_a_shared_file_gets_a_copy_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_ingest import _NoLinks

    monkeypatch.setattr("dropr.store.ingest.moves", _NoLinks())
    payloads = [b"first", b"second", b""]
    ids = put_shared(tmp_path / "store", payloads)
    names = os.listdir(queue(tmp_path / "store"))
    assert len(names) == 3
    for name in names:
        info = os.lstat(queue(tmp_path / "store") / name)
        assert info.st_nlink == 1 and info.st_mode & 0o7777 != SHARED_MODE
    assert {m.id: m.read() for m in Store(tmp_path / "store").messages(CHANNEL)} == dict(
        zip(ids, payloads, strict=True)
    )
    assert not [n for n in os.listdir(tmp_path / "store" / "tmp") if not n.startswith(".")]
