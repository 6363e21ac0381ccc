"""The relay's parts on their own (batches, backoff, configuration, inotify, the lock,
directory passes, disposal) and its command line: usage errors are one line and change
nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from dropr import _codec_py, _drop_py, protocol
from dropr._impl import scan
from dropr.cli import relay as relay_cli
from dropr.protocol import PeerFailure, parse_acks
from dropr.relay import backoff, batches, config, housekeeping, inotify, lock
from dropr.relay.disposal import Disposal
from dropr.relay.status import RelayStatus
from dropr.spool import REUSE_BYTES, Client, Spool

sys.path.insert(0, os.path.dirname(__file__))
from relaykit import run_relay, wait_until
from support import open_under


def entry(i: int, size: int) -> batches.Entry:
    return batches.Entry(f"name{i}", f"{i:030x}", 9, "common", size, 0)


def test_batches_keep_order_within_count_and_bytes() -> None:
    entries = [entry(i, 100) for i in range(25)]
    cut = list(batches.cut(entries, count=10, max_bytes=10_000))
    assert [len(b) for b in cut] == [10, 10, 5]
    assert [e for b in cut for e in b] == entries
    cut = list(batches.cut(entries, count=1000, max_bytes=350))
    assert [len(b) for b in cut] == [3] * 8 + [1]


def test_a_message_larger_than_the_byte_limit_travels_alone() -> None:
    cut = list(batches.cut([entry(0, 10), entry(1, 5000), entry(2, 10)], count=10, max_bytes=100))
    assert [[e.size for e in b] for b in cut] == [[10], [5000], [10]]
    assert list(batches.cut([], 10, 100)) == []


def test_a_batch_file_counts_as_its_messages_and_is_never_split() -> None:
    files = [
        batches.Entry(f"f{i}", f"{i:030x}", 9, "c", 100, 0, count) for i, count in enumerate([1, 60, 50, 3, 200, 1])
    ]
    cut = list(batches.cut(files, count=100, max_bytes=10_000))
    assert [[e.messages for e in b] for b in cut] == [[1, 60], [50, 3], [200], [1]]


def test_a_request_announces_each_message_and_leaves_out_a_file_not_as_named(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with Client(spool) as client:
        for payloads in ([b"a", b"b"], [b"alone"], [b"c", b"d", b"e"]):
            client.put_many(payloads, peer="http://h/")
    files = []
    for name in scan.scan_queue(spool.queue_dir, 10):
        priority, msg_id, _, channel, size, crc, count, delay_ms = _codec_py.parse_spool_name(name)
        files.append(batches.Entry(name, msg_id, priority, channel, size, crc, count, delay_ms))
    whole = batches.announce(files, spool.resolve, spool.queue_dir)
    assert whole.files == files and whole.refused == {}
    assert [entry[0] for entry in msgpack.unpackb(whole.manifest)] == [i for f in files for i in batches.ids(f)]
    Path(spool.queued_path(files[2].name)).write_bytes(b"not a batch file")
    partial = batches.announce(files, spool.resolve, spool.queue_dir)
    assert partial.files == files[:2] and sorted(partial.refused) == batches.ids(files[2])
    assert all(
        status == "rejected" and "unreadable: batch file" in reason for status, reason in partial.refused.values()
    )
    assert [entry[0] for entry in msgpack.unpackb(partial.manifest)] == [i for f in files[:2] for i in batches.ids(f)]


def test_a_request_joins_its_small_plain_messages_ahead_of_the_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with Client(spool) as client:
        client.put(b"x" * 50, peer="http://h/")
        client.put_many([b"a", b"b"], peer="http://h/")
        client.put(b"small", peer="http://h/", priority=3)
        client.put(b"", peer="http://h/", priority=4, delay=2)
    files = []
    for name in scan.scan_queue(spool.queue_dir, 10):
        priority, msg_id, _, channel, size, crc, count, delay_ms = _codec_py.parse_spool_name(name)
        files.append(batches.Entry(name, msg_id, priority, channel, size, crc, count, delay_ms))
    plain = [f for f in files if f.messages == 1 and f.size < 10]
    request = batches.announce(files, spool.resolve, spool.queue_dir, join_below=10)
    assert request.joined == 2 and request.files == plain + [f for f in files if f not in plain]
    entries = [protocol.Entry(*item) for item in msgpack.unpackb(request.manifest)]
    assert [(e.part, e.offset) for e in entries[:2]] == [(batches.JOINED_PART, 0), (batches.JOINED_PART, plain[0].size)]
    assert entries[1].delay_ms == plain[1].delay_ms == 2000
    assert all(e.part != batches.JOINED_PART for e in entries[2:])
    assert batches.announce(files, spool.resolve, spool.queue_dir).joined == 0
    batch = next(f for f in files if f.messages > 1)
    Path(spool.queued_path(batch.name)).write_bytes(b"not a batch file")
    partial = batches.announce(files, spool.resolve, spool.queue_dir, join_below=10)
    assert partial.joined == 2 and partial.files == [f for f in request.files if f != batch]
    assert sorted(partial.refused) == batches.ids(batch)


def test_backoff_grows_jittered_up_to_its_cap_and_resets() -> None:
    b = backoff.Backoff(0.1, 2.0)
    delays = [b.fail(now=100.0) for _ in range(10)]
    for i, delay in enumerate(delays):
        nominal = min(2.0, 0.1 * 2**i)
        assert nominal / 2 <= delay <= nominal
    assert b.failures == 10 and b.waiting(100.0) and not b.waiting(102.1)
    b.succeed()
    assert b.failures == 0 and not b.waiting(0.0)
    assert len({round(backoff.Backoff(1, 1).fail(), 9) for _ in range(20)}) > 1


def test_config_file_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text(
        'token = "general"\nbatch_count = 50\nmax_age_minutes = 1.5\n[peers."http://a:1/"]\ntoken = "own"\n'
    )
    settings = config.read_file(str(toml))
    built = config.build("/spool", settings, {"batch_count": 7, "token": None})
    assert built.batch_count == 7 and built.max_age_minutes == 1.5
    assert built.peer("http://a:1/").token == "own"
    assert built.peer("http://b:2/").token == "general"
    js = tmp_path / "relay.json"
    js.write_text(json.dumps({"parallel": 3, "peers": {"file:///s": {"token": "t"}}}))
    built = config.build("/spool", config.read_file(str(js)), {})
    assert built.parallel == 3 and built.peer("file:///s").token == "t"


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_count = 0", "batch_count must be a whole number"),
        ("scan_limit_max = 0", "scan_limit_max must be a whole number"),
        ("colour = 1", "unknown setting 'colour'"),
        ('[peers."http://a/"]\nsecret = "x"', "unknown setting 'secret'"),
        ("token = 3", "token must be a non-empty string"),
        ("not toml at all [", "not valid"),
        ('ca_file = "/nonexistent/ca.pem"', "cannot read CA file"),
    ],
)
def test_bad_configuration_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.build("/spool", config.read_file(str(path)), {})


def test_answers_are_checked() -> None:
    assert parse_acks({"a": ["stored", ""], "b": ["rejected", "bad crc"], "c": ["retry"]}) == {
        "a": ("stored", ""),
        "b": ("rejected", "bad crc"),
        "c": ("retry", ""),
    }
    for bad in ([], {"a": ["maybe", ""]}, {"a": []}, {1: ["stored", ""]}):
        with pytest.raises(PeerFailure):
            parse_acks(bad)


def test_inotify_reports_arrivals_by_name(tmp_path: Path) -> None:
    watch = inotify.watch(str(tmp_path))
    if watch is None:
        pytest.skip("no inotify here")
    try:
        assert watch.read() == []
        (tmp_path / ".tmp").write_bytes(b"x")
        os.rename(tmp_path / ".tmp", tmp_path / "9abc+peer+ch+1+00000000")
        names = watch.read()
        assert names is not None and "9abc+peer+ch+1+00000000" in names
        odd = b"caf\xc3\xa9+\xff\xfe"  # named as os.fsdecode names it, not UTF-8 and all
        os.rename(tmp_path / "9abc+peer+ch+1+00000000", os.path.join(os.fsencode(tmp_path), odd))
        assert watch.read() == [os.fsdecode(odd)]
    finally:
        watch.close()


def test_inotify_reports_puts_into_new_and_existing_buckets(tmp_path: Path) -> None:
    with Client(tmp_path / "spool") as client:
        queue = client.spool.queue_dir
        watch = inotify.watch_queue(queue)
        if watch is None:
            pytest.skip("no inotify here")
        try:
            assert watch.read() == []
            ids = [client.put(b"x", peer="http://h/", priority=p) for p in (3, 3, 5)]
            names = watch.read()
            assert names is not None
            assert sorted({name[1:31] for name in names}) == sorted(ids)
        finally:
            watch.close()
        later = inotify.watch_queue(queue)  # buckets that exist already are watched too
        assert later is not None
        try:
            msg_id = client.put(b"y", peer="http://h/", priority=3)
            names = later.read()
            assert names is not None and [name[1:31] for name in names] == [msg_id]
        finally:
            later.close()


def _bucket(queue: Path, priority: int, seconds_ago: float) -> Path:
    slot = int((time.time() - seconds_ago) * 1e9) >> 32
    path = queue / f"{priority}{slot:08x}"
    path.mkdir()
    return path


def test_prune_removes_only_old_empty_buckets(tmp_path: Path) -> None:
    old_empty = _bucket(tmp_path, 9, 600)
    old_full = _bucket(tmp_path, 1, 600)
    (old_full / "message").write_bytes(b"")
    recent_empty = _bucket(tmp_path, 0, 0)
    (tmp_path / "not-a-bucket").mkdir()
    assert housekeeping.prune_buckets(str(tmp_path), scan.buckets(str(tmp_path))) == 1
    assert not old_empty.exists()
    assert old_full.is_dir() and recent_empty.is_dir() and (tmp_path / "not-a-bucket").is_dir()


def test_prune_keeps_a_bucket_a_put_that_is_not_stale_may_still_enter(tmp_path: Path) -> None:
    """A bucket is removed only once a put into it would be stale, so it flushes queue/."""
    slot = housekeeping.SLOT_NS / 1e9
    stale = _drop_py.STALE_PUT_NS / 1e9
    within_reach = _bucket(tmp_path, 5, stale)  # its slice ended at most ``stale`` s ago
    out_of_reach = _bucket(tmp_path, 6, housekeeping.BUCKET_KEEP_SECONDS + slot + 1)
    assert housekeeping.prune_buckets(str(tmp_path), scan.buckets(str(tmp_path))) == 1
    assert within_reach.is_dir() and not out_of_reach.exists()
    assert housekeeping.BUCKET_KEEP_SECONDS >= stale  # for every phase of the clock, not just this one


def test_prune_stops_at_the_bucket_given(tmp_path: Path) -> None:
    first, second, third = (_bucket(tmp_path, priority, 600) for priority in (2, 3, 4))
    assert housekeeping.prune_buckets(str(tmp_path), scan.buckets(str(tmp_path)), before=third.name) == 2
    assert not first.exists() and not second.exists() and third.is_dir()


def test_a_survey_reads_the_next_buckets_up_to_its_budget_then_starts_over(tmp_path: Path) -> None:
    buckets = [_bucket(tmp_path, 9, 600 - 10 * i) for i in range(5)]
    for i, bucket in enumerate(buckets):
        for n in range(200 * (i + 1)):
            (bucket / f"message-with-a-long-name-{n:06d}").write_bytes(b"")
    names = [bucket.name for bucket in buckets]
    sizes = [bucket.stat().st_size for bucket in buckets]
    assert sizes == sorted(sizes) and sizes[0] < sizes[1]
    queue = str(tmp_path)
    assert housekeeping.survey_part(queue, names, "", sizes[0] + 1) == names[:2]
    assert housekeeping.survey_part(queue, names, names[1], sizes[2]) == names[2:3]
    assert housekeeping.survey_part(queue, names, names[2], 1 << 40) == names[3:]
    assert housekeeping.survey_part(queue, names, names[4], 1) == names[:1]
    shutil.rmtree(buckets[3])  # listed, then removed before the survey reads it
    assert housekeeping.survey_part(queue, names, names[2], 1) == names[4:]
    assert housekeeping.survey_part(queue, [], "", 1) == []


def test_expired_reads_only_buckets_older_than_the_cut_off(tmp_path: Path) -> None:
    stale_ns, fresh_ns = time.time_ns() - 3600 * 10**9, time.time_ns()
    names = {
        "old_a": f"5{stale_ns:016x}{0:014x}+a+c+1+00000000",
        "old_b": f"5{stale_ns:016x}{1:014x}+b+c+1+00000000",
        "new_a": f"5{fresh_ns:016x}{2:014x}+a+c+1+00000000",
    }
    for name in names.values():
        (tmp_path / name[: _codec_py.BUCKET_LEN]).mkdir(exist_ok=True)
        (tmp_path / name[: _codec_py.BUCKET_LEN] / name).write_bytes(b"")
    cutoff = time.time_ns() - 60 * 10**9
    assert housekeeping.expired(str(tmp_path), {"a"}, cutoff, 100) == [names["old_a"]]
    assert sorted(housekeeping.expired(str(tmp_path), {"a", "b"}, cutoff, 100)) == sorted(
        [names["old_a"], names["old_b"]]
    )
    assert len(housekeeping.expired(str(tmp_path), {"a", "b"}, cutoff, 1)) == 1


def test_prefetch_passes_over_files_gone_and_leaves_no_descriptor_open(tmp_path: Path) -> None:
    from dropr.relay.disposal import _prefetch

    present = [tmp_path / f"m{i}" for i in range(50)]
    for path in present:
        path.write_bytes(b"x" * 200)
    _prefetch([str(tmp_path / "gone"), *map(str, present), str(tmp_path / "gone-too")])
    assert open_under(tmp_path) == 0
    assert all(path.read_bytes() == b"x" * 200 for path in present)


def _queued(tmp_path: Path, count: int) -> tuple[Spool, list[str]]:
    with Client(tmp_path / "spool") as client:
        for _ in range(count):
            client.put(b"x", peer="http://h/")
    return client.spool, scan.scan_queue(client.spool.queue_dir, count)


def test_names_finished_while_a_threaded_scan_reads_are_remembered_until_it_ends(tmp_path: Path) -> None:
    spool, names = _queued(tmp_path, 5)
    disposal = Disposal(config.RelayConfig(spool=spool.path, keep_sent_minutes=1.0), spool, RelayStatus(None, spool))

    async def finish() -> None:
        await disposal.remove([names[0]])
        disposal.fail(names[1], "bad")
        assert disposal.scan_ended() == ()  # no scan was out
        disposal.scan_started()
        await disposal.remove([names[2]])
        disposal.fail(names[3], "bad")
        disposal.fail(names[0], "gone already")
        assert sorted(disposal.scan_ended()) == names[2:4]
        disposal.fail(names[4], "bad")
        assert disposal.scan_ended() == ()

    try:
        asyncio.run(finish())
    finally:
        disposal.close()
    assert sorted(os.listdir(spool.sent_dir)) == [names[0], names[2]]
    assert disposal.failed == 3
    assert sorted(message.name for message, _ in spool.failed()) == [names[1], names[3], names[4]]


def _put_an_hour_ago(spool: Spool, name: str) -> str:
    """Rename queued ``name`` to the name it would have had if put an hour ago; that name."""
    old_id = f"{time.time_ns() - 3600 * 10**9:016x}{name[17 : 1 + _codec_py.ID_LEN]}"
    old = name[0] + old_id + name[1 + _codec_py.ID_LEN :]
    os.makedirs(os.path.dirname(spool.queued_path(old)), exist_ok=True)
    os.rename(spool.queued_path(name), spool.queued_path(old))
    return old


def test_without_a_retention_fresh_files_are_unlinked_and_old_ones_deleted_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dropr.spool.FREE_FILES", 0)  # free/ full: none goes there
    spool, names = _queued(tmp_path, 9)
    old = _put_an_hour_ago(spool, names[0])
    leftover = os.path.join(spool.sent_dir, names[0])
    Path(leftover).write_bytes(b"x")  # left by an earlier run: only a sweep removes it
    disposal = Disposal(config.RelayConfig(spool=spool.path), spool, RelayStatus(None, spool))
    try:
        asyncio.run(disposal.remove(names[1:]))
        assert scan.scan_queue(spool.queue_dir, 10) == [old]
        assert os.listdir(spool.sent_dir) == [names[0]]  # unlinked at once: nothing moved, no sweep
        asyncio.run(disposal.remove([old]))
        assert scan.count_queue(spool.queue_dir) == 0
        wait_until(lambda: os.listdir(spool.sent_dir) == [])
    finally:
        disposal.close()


def test_without_a_retention_small_files_go_to_free_while_it_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dropr.spool.FREE_FILES", 4)
    monkeypatch.setattr("dropr.relay.disposal.RECOUNT_SECONDS", 0.0)
    spool, names = _queued(tmp_path, 6)
    old = _put_an_hour_ago(spool, names[0])
    with Client(spool.path) as client:
        client.put(b"b" * (REUSE_BYTES + 1), peer="http://h/")
    big = next(name for name in scan.scan_queue(spool.queue_dir, 10) if name not in names and name != old)
    disposal = Disposal(config.RelayConfig(spool=spool.path), spool, RelayStatus(None, spool))
    try:
        asyncio.run(disposal.remove([big, old, *names[1:4]]))
        assert sorted(os.listdir(spool.free_dir)) == sorted([old, *names[1:4]])  # not the big one
        assert os.listdir(spool.sent_dir) == []  # the big one, fresh, unlinked
        assert scan.scan_queue(spool.queue_dir, 10) == names[4:]
        asyncio.run(disposal.remove([names[4]]))  # free/ is full: unlinked
        assert len(os.listdir(spool.free_dir)) == 4
        os.unlink(os.path.join(spool.free_dir, old))  # a put took one: counted again, room for one
        asyncio.run(disposal.remove([names[5]]))
        assert sorted(os.listdir(spool.free_dir)) == sorted(names[1:4] + names[5:])
        assert scan.count_queue(spool.queue_dir) == 0
    finally:
        disposal.close()


def test_a_file_linked_elsewhere_never_goes_to_free(tmp_path: Path) -> None:
    spool, names = _queued(tmp_path, 2)
    stored = tmp_path / "stored"  # a link the local transport left in a store
    os.link(spool.queued_path(names[0]), stored)
    disposal = Disposal(config.RelayConfig(spool=spool.path), spool, RelayStatus(None, spool))
    try:
        asyncio.run(disposal.remove(names))
    finally:
        disposal.close()
    assert os.listdir(spool.free_dir) == [names[1]]  # a put writing into it would change the stored one
    assert stored.read_bytes() == b"x" and os.lstat(stored).st_nlink == 1


def test_with_a_retention_nothing_goes_to_free(tmp_path: Path) -> None:
    spool, names = _queued(tmp_path, 3)
    disposal = Disposal(config.RelayConfig(spool=spool.path, keep_sent_minutes=1.0), spool, RelayStatus(None, spool))
    try:
        asyncio.run(disposal.remove(names))
    finally:
        disposal.close()
    assert os.listdir(spool.free_dir) == []
    assert sorted(os.listdir(spool.sent_dir)) == sorted(names)


def test_clean_tmp_keeps_a_free_file_a_put_just_took(tmp_path: Path) -> None:
    hour_ago = time.time() - 3600 - 60
    taken = tmp_path / _codec_py.new_id()  # renamed from free/ a moment ago: an old mtime, a new id
    crashed = tmp_path / f"{int(hour_ago * 1e9):016x}{_codec_py.new_id()[16:]}"
    stray = tmp_path / "not-an-id"
    for path in (taken, crashed, stray):
        path.write_bytes(b"x")
        os.utime(path, (hour_ago, hour_ago))
    assert housekeeping.clean_tmp(str(tmp_path)) == 2
    assert os.listdir(tmp_path) == [taken.name]


def test_prefetch_reads_ahead_only_files_older_than_the_fresh_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, names = _queued(tmp_path, 3)
    old = _put_an_hour_ago(spool, names[0])
    read_ahead: list[list[str]] = []
    monkeypatch.setattr("dropr.relay.disposal._prefetch", read_ahead.append)
    disposal = Disposal(config.RelayConfig(spool=spool.path), spool, RelayStatus(None, spool))
    try:
        disposal.prefetch(names[1:])
        disposal.prefetch([names[1], old, names[2]])
    finally:
        disposal.close()
    assert read_ahead == [[spool.queued_path(old)]]


def test_lock_refuses_a_second_holder_with_the_pid(tmp_path: Path) -> None:
    fd = lock.acquire(str(tmp_path))
    try:
        with pytest.raises(lock.LockHeld, match=rf"another relay is running for {tmp_path} \(pid {os.getpid()}\)"):
            lock.acquire(str(tmp_path))
    finally:
        os.close(fd)
    os.close(lock.acquire(str(tmp_path)))


def test_the_lock_holder_is_read_from_the_kernel(tmp_path: Path) -> None:
    assert lock.holder(str(tmp_path)) is None  # no lock file
    os.close(lock.acquire(str(tmp_path)))
    assert lock.holder(str(tmp_path)) is None  # the file stays, unlocked
    code = "import sys; from dropr.relay import lock; lock.acquire(sys.argv[1]); print(flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as other:
        assert other.stdout is not None and other.stdin is not None
        other.stdout.readline()
        assert lock.holder(str(tmp_path)) == other.pid
        other.stdin.close()
    assert lock.holder(str(tmp_path)) is None


def test_reading_the_lock_holder_never_makes_a_starting_relay_refuse(tmp_path: Path) -> None:
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            lock.holder(str(tmp_path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):
            os.close(lock.acquire(str(tmp_path)))
    finally:
        stop.set()
        reader.join()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: --spool"),
        (["--spool", "S", "--batch-count", "0"], "must be 1 or more"),
        (["--spool", "S", "--max-age", "-1"], "minutes must be zero or more"),
        (["--spool", "S", "--rescan", "0"], "must be more than zero"),
        (["--spool", "S", "--log-level", "loud"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_and_change_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        relay_cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("dropr-relay: ")
    assert os.listdir(tmp_path) == []


def test_a_bad_config_file_is_one_line_and_creates_no_spool(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("batch_bytes = -5\n")
    done = run_relay(tmp_path / "spool", "--config", str(path), "--once")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "batch_bytes" in done.stderr
    assert not (tmp_path / "spool").exists()
    done = run_relay(tmp_path / "spool", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 1 and "cannot read configuration" in done.stderr
    assert not (tmp_path / "spool").exists()


def test_an_empty_spool_drains_at_once(tmp_path: Path) -> None:
    done = run_relay(tmp_path / "spool", "--once")
    assert done.returncode == 0, done.stderr
    assert {"queue", "tmp", "sent", "failed", "names"} <= set(os.listdir(tmp_path / "spool"))
