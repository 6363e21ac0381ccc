"""Batches in the spool (``put_many``, ``fastput_many``) and delayed messages, on both twins.

A batch is one file in the queue, shown whole or not at all: its name says how many messages
it holds and when they are due, its index their ids, sizes and CRC-32s (read here with the
plain-Python codec, which the codec tests hold to the compiled one).
"""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import queued_files

from dropr import InvalidMessage, SpoolError, _codec_py, _drop_py, spool
from dropr.limits import MAX_DELAY_SECONDS, Limits

PEER = "http://127.0.0.1:8080/q"


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """``(queue, tmp_fd, queue_fd)`` of a bare spool layout."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "queue").mkdir()
    tmp_fd = os.open(tmp_path / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    queue_fd = os.open(tmp_path / "queue", os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path / "queue", tmp_fd, queue_fd
    os.close(tmp_fd)
    os.close(queue_fd)


@pytest.fixture
def twin(putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Client and fastput routed through the ``putter`` twin under test."""
    monkeypatch.setattr(spool, "putter", putter)
    return putter


def read_batch(path: Path) -> tuple[tuple[int, str, str, str, int, int, int, int], list[tuple[str, bytes]]]:
    """What a queued file's name says, and its messages ``(id, payload)``, each checked."""
    parsed = _codec_py.parse_spool_name(path.name)
    data = path.read_bytes()
    assert (len(data), zlib.crc32(data)) == parsed[4:6], path.name
    if parsed[6] == 1:
        return parsed, [(parsed[1], data)]
    index = _codec_py.parse_batch_index(data)
    assert [msg_id for msg_id, *_ in index] == _codec_py.batch_ids(parsed[1], parsed[6])
    messages = []
    for msg_id, offset, size, crc in index:
        payload = data[offset : offset + size]
        assert (len(payload), zlib.crc32(payload)) == (size, crc)
        messages.append((msg_id, payload))
    assert index[-1][1] + index[-1][2] == len(data)
    return parsed, messages


def queued_messages(root: Path) -> list[tuple[str, bytes]]:
    """Every queued message ``(id, payload)`` of a spool, batch files opened, by id."""
    return sorted(message for path in queued_files(root / "queue") for message in read_batch(path)[1])


def assert_untouched(root: Path) -> None:
    for sub in ("queue", "tmp"):
        assert os.listdir(root / sub) == [], sub


# -- the put path ------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True])
def test_put_many_writes_one_batch_file(drop: ModuleType, dirs: tuple, sync: bool) -> None:
    queue, tmp_fd, queue_fd = dirs
    payloads = [b"", b"a", bytes(range(256)) * 40, b"last"]
    ids = drop.put_many(tmp_fd, queue_fd, "peer", "ch", 4, payloads, sync, 0)
    (path,) = queued_files(queue)
    parsed, messages = read_batch(path)
    assert parsed[:4] == (4, ids[0], "peer", "ch") and parsed[6:] == (4, 0)
    assert messages == list(zip(ids, payloads, strict=True))
    assert ids == _codec_py.batch_ids(ids[0], 4) and ids == sorted(ids)
    assert os.listdir(queue.parent / "tmp") == []


def test_put_many_of_one_is_a_plain_message_and_of_none_nothing(drop: ModuleType, dirs: tuple) -> None:
    queue, tmp_fd, queue_fd = dirs
    assert drop.put_many(tmp_fd, queue_fd, "peer", "ch", 4, [], False, 0) == []
    assert queued_files(queue) == []
    [msg_id] = drop.put_many(tmp_fd, queue_fd, "peer", "ch", 4, [b"alone"], False, 2500)
    (path,) = queued_files(queue)
    assert path.name == _codec_py.spool_name(4, msg_id, "peer", "ch", 5, zlib.crc32(b"alone"), 1, 2500)
    assert path.read_bytes() == b"alone"


def test_twins_write_the_same_batch_format(drop: ModuleType, dirs: tuple) -> None:
    queue, tmp_fd, queue_fd = dirs
    payloads = [os.urandom(n) for n in (0, 7, 300, 5000)]
    for twin in (drop, _drop_py):
        twin.put_many(tmp_fd, queue_fd, "p", "c", 2, [memoryview(p) for p in payloads], True, 1000)
    files = queued_files(queue)
    assert len(files) == 2
    for path in files:
        parsed, messages = read_batch(path)
        assert parsed[6:] == (4, 1000) and [payload for _, payload in messages] == payloads
        index_size = _codec_py.batch_index_size(4)
        assert path.read_bytes()[index_size:] == b"".join(payloads)


def test_put_with_a_delay_names_it(drop: ModuleType, dirs: tuple) -> None:
    queue, tmp_fd, queue_fd = dirs
    msg_id = drop.put(tmp_fd, queue_fd, "p", "c", 1, b"later", False, 90_000)
    (path,) = queued_files(queue)
    assert path.name.endswith("+d15f90") and _codec_py.parse_spool_name(path.name)[1] == msg_id


def test_put_many_outside_the_name_format_writes_nothing(drop: ModuleType, dirs: tuple) -> None:
    queue, tmp_fd, queue_fd = dirs
    with pytest.raises(ValueError):
        drop.put_many(tmp_fd, queue_fd, "p/q", "c", 1, [b"a", b"b"], False, 0)
    with pytest.raises(ValueError):
        drop.put_many(tmp_fd, queue_fd, "p", "c", 10, [b"a", b"b"], False, 0)
    assert queued_files(queue) == [] and os.listdir(queue.parent / "tmp") == []


def test_put_many_into_a_removed_queue_leaves_nothing(drop: ModuleType, dirs: tuple) -> None:
    queue, tmp_fd, queue_fd = dirs
    shutil.rmtree(queue)
    with pytest.raises(OSError) as info:
        drop.put_many(tmp_fd, queue_fd, "p", "c", 5, [b"x", b"y"], False, 0)
    assert info.value.errno == errno.ENOENT
    assert os.listdir(queue.parent / "tmp") == []


# -- Client.put_many and fastput_many ----------------------------------------------------


def test_put_many_ids_are_in_order_and_unique(tmp_path: Path, twin: ModuleType) -> None:
    with spool.Client(tmp_path) as client:
        batches = [client.put_many([f"{b}-{i}" for i in range(50)], peer=PEER, channel=f"c{b % 3}") for b in range(20)]
        single = client.put(b"single", peer=PEER)
    ids = [msg_id for batch in batches for msg_id in batch]
    assert ids == sorted(ids) and len(set(ids)) == 1000 and single > ids[-1]
    assert len(queued_files(tmp_path / "queue")) == 21
    messages = dict(queued_messages(tmp_path))
    assert messages[batches[7][13]] == b"7-13" and messages[single] == b"single"
    for path in queued_files(tmp_path / "queue"):
        message = client.spool.decode(path.name)
        assert message.messages == (1 if message.id == single else 50)


def test_fastput_many_takes_the_spool_and_every_argument(tmp_path: Path, twin: ModuleType) -> None:
    fastput_many = twin.Spools(spool._open_for_fastput).fastput_many
    ids = fastput_many(("a", b"b", bytearray(b"c"), memoryview(b"xdxe")[1::2]), PEER, "ch", 3, spool=str(tmp_path))
    (path,) = queued_files(tmp_path / "queue")
    message = spool.Spool(tmp_path).decode(path.name)
    assert (message.priority, message.channel, message.peer, message.messages, message.delay) == (3, "ch", PEER, 4, 0)
    assert queued_messages(tmp_path) == list(zip(ids, [b"a", b"b", b"c", b"de"], strict=True))
    assert fastput_many([], PEER, spool=str(tmp_path)) == []
    assert len(queued_files(tmp_path / "queue")) == 1


def test_fastput_many_is_the_one_dropr_exports(tmp_path: Path) -> None:
    import dropr

    ids = dropr.fastput_many([b"1", b"2"], PEER, spool=str(tmp_path), sync=True, delay=1)
    (path,) = queued_files(tmp_path / "queue")
    assert path.name.endswith("+n2.d3e8") and [i for i, _ in queued_messages(tmp_path)] == ids


def test_threads_put_batches_at_once(tmp_path: Path, twin: ModuleType) -> None:
    with spool.Client(tmp_path) as client:
        found: list[list[str]] = [[] for _ in range(4)]

        def work(out: list[str]) -> None:
            for i in range(40):
                out += client.put_many([os.urandom(i % 50) for _ in range(i % 7)], peer=PEER)
                out.append(client.put(b"one", peer=PEER))

        workers = [threading.Thread(target=work, args=(out,)) for out in found]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    ids = [msg_id for out in found for msg_id in out]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == [msg_id for msg_id, _ in queued_messages(tmp_path)]


BAD_BATCHES = [
    pytest.param({"payloads": [b"a", 5]}, "payload", id="item-int"),
    pytest.param({"payloads": [b"a", None]}, "payload", id="item-none"),
    pytest.param({"payloads": [b"a", "\ud800"]}, "payload", id="item-surrogate"),
    pytest.param({"payloads": [b"a", b"x" * 101]}, "payload", id="item-over-max-payload"),
    pytest.param({"payloads": [b"x"] * 11}, "batch of 11 messages", id="over-batch-count"),
    pytest.param({"payloads": [b"x" * 100, b"x" * 100, b"x"]}, "201 payload bytes", id="over-batch-bytes"),
    pytest.param({"payloads": b"abc"}, "payloads", id="payloads-bytes"),
    pytest.param({"payloads": "abc"}, "payloads", id="payloads-str"),
    pytest.param({"payloads": 5}, "payloads", id="payloads-int"),
    pytest.param({"payloads": None}, "payloads", id="payloads-none"),
    pytest.param({"priority": 10}, "priority", id="priority-10"),
    pytest.param({"priority": "5"}, "priority", id="priority-str"),
    pytest.param({"priority": True}, "priority", id="priority-bool"),
    pytest.param({"channel": ""}, "channel", id="channel-empty"),
    pytest.param({"peer": "ftp://h/"}, "peer", id="peer-ftp"),
    pytest.param({"delay": -1}, "delay", id="delay-negative"),
    pytest.param({"delay": math.nan}, "delay", id="delay-nan"),
    pytest.param({"delay": math.inf}, "delay", id="delay-inf"),
    pytest.param({"delay": "5"}, "delay", id="delay-str"),
    pytest.param({"delay": True}, "delay", id="delay-bool"),
    pytest.param({"delay": None}, "delay", id="delay-none"),
    pytest.param({"delay": MAX_DELAY_SECONDS + 1}, "delay", id="delay-over-the-most"),
    pytest.param({"delay": 10**400}, "delay", id="delay-huge-int"),
]
LIMITS = Limits(max_payload=100, batch_count=10, batch_bytes=200)


@pytest.mark.parametrize(("change", "word"), BAD_BATCHES)
def test_bad_batch_is_refused_and_changes_nothing(tmp_path: Path, twin: ModuleType, change: dict, word: str) -> None:
    args = {"payloads": [b"a", b"b"], "peer": PEER, "channel": "common", "priority": 9, **change}
    with spool.Client(tmp_path, limits=LIMITS) as client, pytest.raises(InvalidMessage, match=word):
        client.put_many(args.pop("payloads"), **args)
    assert_untouched(tmp_path)


@pytest.mark.parametrize(("change", "word"), BAD_BATCHES)
def test_fastput_many_refuses_a_bad_batch_and_changes_nothing(
    tmp_path: Path, twin: ModuleType, monkeypatch: pytest.MonkeyPatch, change: dict, word: str
) -> None:
    monkeypatch.setattr(spool._limits, "DEFAULT", LIMITS)
    fastput_many = twin.Spools(spool._open_for_fastput).fastput_many
    args = {"payloads": [b"a", b"b"], "peer": PEER, "channel": "common", "priority": 9, **change}
    with pytest.raises(InvalidMessage, match=word):
        fastput_many(args.pop("payloads"), spool=str(tmp_path), **args)
    assert_untouched(tmp_path)


def test_a_batch_at_the_limits_is_taken(tmp_path: Path, twin: ModuleType) -> None:
    with spool.Client(tmp_path, limits=LIMITS) as client:
        ids = client.put_many([b"x" * 100, b"y" * 100] + [b""] * 8, peer=PEER)
    assert len(ids) == 10 and len(queued_messages(tmp_path)) == 10


# -- delays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "suffix"),
    [(0, ""), (0.0, ""), (1, "+d3e8"), (0.1, "+d64"), (0.0001, "+d1"), (1.5, "+d5dc"), (3600, "+d36ee80")],
)
def test_a_delay_is_named_in_milliseconds_rounded_up(
    tmp_path: Path, twin: ModuleType, delay: float, suffix: str
) -> None:
    with spool.Client(tmp_path) as client:
        client.put(b"x", peer=PEER, delay=delay)
    (path,) = queued_files(tmp_path / "queue")
    assert path.name.endswith(suffix) and path.name.count("+") == (5 if suffix else 4)


def test_every_put_takes_a_delay(tmp_path: Path, twin: ModuleType) -> None:
    spools = twin.Spools(spool._open_for_fastput)
    with spool.Client(tmp_path) as client:
        client.put(b"a", peer=PEER, delay=2)
        client.put_many([b"b", b"c"], peer=PEER, delay=2)
    spools.fastput(b"d", PEER, spool=str(tmp_path), delay=2)
    spools.fastput_many([b"e", b"f"], PEER, spool=str(tmp_path), delay=2)
    decoded = [spool.Spool(tmp_path).decode(path.name) for path in queued_files(tmp_path / "queue")]
    assert [(m.messages, m.delay) for m in decoded] == [(1, 2.0), (2, 2.0), (1, 2.0), (2, 2.0)]


@pytest.mark.parametrize(("change", "word"), [p for p in BAD_BATCHES if "delay" in str(p.id)])
def test_a_bad_delay_on_put_is_refused_and_changes_nothing(
    tmp_path: Path, twin: ModuleType, change: dict, word: str
) -> None:
    with spool.Client(tmp_path) as client, pytest.raises(InvalidMessage, match=word):
        client.put(b"x", peer=PEER, **change)
    with pytest.raises(InvalidMessage, match=word):
        twin.Spools(spool._open_for_fastput).fastput(b"x", PEER, spool=str(tmp_path), **change)
    assert_untouched(tmp_path)


# -- durability and crashes --------------------------------------------------------------

SYNCS_CHILD = textwrap.dedent(
    """
    import sys
    import dropr
    client = dropr.Client(sys.argv[1], sync=True)
    if sys.argv[2] == "many":
        client.put_many([b"x" * 100] * 200, peer="http://127.0.0.1:1/")
    else:
        client.put(b"x" * 100, peer="http://127.0.0.1:1/")
    """
)


def _syncs(root: Path, what: str, env: dict[str, str]) -> list[str]:
    trace = root.parent / f"{root.name}.trace"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs,sync", "-o", str(trace)]
        + [sys.executable, "-c", SYNCS_CHILD, str(root), what],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot trace system calls here: {done.stderr.strip()[-200:]}")
    return sorted(line.split(None, 1)[1].split("(", 1)[0] for line in trace.read_text().splitlines())


def test_a_durable_batch_costs_the_flushes_of_one_put(tmp_path: Path, kind: str) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    env = dict(os.environ)
    if kind == "python":
        env["DROPR_NO_EXTENSIONS"] = "1"
        env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    one = _syncs(tmp_path / "one", "one", env)
    many = _syncs(tmp_path / "many", "many", env)
    assert one == many == ["fdatasync", "fsync", "fsync"]  # the file, its new bucket, queue/


MANY_PRODUCER = textwrap.dedent(
    """
    import os, random, sys
    import dropr
    root, sync = sys.argv[1], sys.argv[2] == "sync"
    rnd = random.Random(os.getpid())
    while True:
        payloads = [os.urandom(rnd.choice((0, 10, 200, 5000, 60_000))) for _ in range(rnd.randrange(1, 60))]
        ids = dropr.fastput_many(payloads, "http://127.0.0.1:1/", channel="c", spool=root, sync=sync)
        sys.stdout.write(" ".join(ids) + "\\n")
        sys.stdout.flush()
    """
)


def _kill_rounds(root: Path, rounds: int, kind: str, free_files: int = 0) -> None:
    """Kill a producer of batches mid-put, ``rounds`` times, checking the queue after each;
    with ``free_files``, that many acknowledged files of old bytes wait in ``free/`` before
    each round, for its puts to write into."""
    env = dict(os.environ)
    if kind == "python":
        env["DROPR_NO_EXTENSIONS"] = "1"
        env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    rnd = random.Random()
    reported: set[tuple[str, ...]] = set()
    for round_no in range(rounds):
        if free_files:
            spool.Spool(root)
            for n in range(free_files):
                (root / "free" / f"old-{round_no}-{n}").write_bytes(b"\xee" * rnd.choice((1, 300, 4096)))
        with subprocess.Popen(
            [sys.executable, "-c", MANY_PRODUCER, str(root), "sync" if round_no % 2 else "relaxed"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(rnd.randrange(2, 20))]
            time.sleep(rnd.random() / 200)
            proc.send_signal(signal.SIGKILL)
            lines.append(proc.stdout.read())
        assert proc.returncode == -signal.SIGKILL
        reported |= {tuple(line.split()) for text in lines for line in text.splitlines() if line.strip()}
        # Every file in the queue is a whole batch; every batch a put returned is one of them.
        present = {tuple(msg_id for msg_id, _ in read_batch(path)[1]) for path in queued_files(root / "queue")}
        assert reported <= present
        assert len(present - reported) <= round_no + 1
    for leftover in os.listdir(root / "tmp"):
        assert _codec_py.is_message_id(leftover) and all(leftover != batch[0] for batch in reported)
    if free_files:
        assert len(os.listdir(root / "free")) < rounds * free_files  # the puts wrote into some


def test_kill_9_mid_put_many_shows_whole_batches_or_nothing(tmp_path: Path, kind: str) -> None:
    _kill_rounds(tmp_path, 6, kind)


def test_kill_9_mid_put_many_into_files_of_free_shows_whole_batches_or_nothing(tmp_path: Path, kind: str) -> None:
    _kill_rounds(tmp_path, 6, kind, free_files=30)


def test_a_batch_on_a_full_disk_raises_and_shows_nothing(tiny_fs: Path, twin: ModuleType) -> None:
    with spool.Client(tiny_fs / "spool") as client:
        client.put_many([b"x" * 1000] * 8, peer=PEER)
        with pytest.raises(SpoolError) as info:
            client.put_many([os.urandom(4000)] * 40, peer=PEER)
    assert info.value.errno == errno.ENOSPC
    assert len(queued_messages(tiny_fs / "spool")) == 8
    assert os.listdir(tiny_fs / "spool" / "tmp") == []


def test_a_batch_writes_into_a_file_of_free_too(tmp_path: Path, twin: ModuleType) -> None:
    spool.Spool(tmp_path)
    old = tmp_path / "free" / "old"
    old.write_bytes(b"o" * 9000)  # longer than the batch: cut to its length
    inode = old.stat().st_ino
    with spool.Client(tmp_path) as client:
        ids = client.put_many([b"a" * 3000, b"b" * 3000], peer=PEER)
    (path,) = queued_files(tmp_path / "queue")
    assert path.stat().st_ino == inode
    assert read_batch(path)[1] == [(ids[0], b"a" * 3000), (ids[1], b"b" * 3000)]
    assert os.listdir(tmp_path / "free") == []
