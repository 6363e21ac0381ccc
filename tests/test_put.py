"""The put system-call path (``dropr._drop`` and its twin) and Client puts on real file systems."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import queued_files

from dropr import _codec_py, spool
from dropr.errors import InvalidMessage, SpoolError
from dropr.limits import Limits

PEER = "http://127.0.0.1:8080/q"


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path, int, int]]:
    """``(tmp, queue, tmp_fd, queue_fd)`` of a bare spool layout."""
    tmp, queue = tmp_path / "tmp", tmp_path / "queue"
    tmp.mkdir()
    queue.mkdir()
    tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    queue_fd = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp, queue, tmp_fd, queue_fd
    os.close(tmp_fd)
    os.close(queue_fd)


@pytest.fixture
def client(tmp_path: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[spool.Client]:
    """A Client whose puts go through the ``putter`` twin under test."""
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tmp_path / "spool") as client:
        yield client


def only_file(queue: Path) -> Path:
    files = queued_files(queue)
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(256)) * 300])
def test_put_writes_one_complete_named_file(drop: ModuleType, dirs: tuple, payload: bytes, sync: bool) -> None:
    tmp, queue, tmp_fd, queue_fd = dirs
    msg_id = drop.put(tmp_fd, queue_fd, "http%3A%2F%2Fh", "ch", 3, payload, sync)
    path = only_file(queue)
    assert path.name == _codec_py.spool_name(3, msg_id, "http%3A%2F%2Fh", "ch", len(payload), zlib.crc32(payload))
    assert path.read_bytes() == payload
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()
    assert path.parent.parent == queue and path.parent.name == path.name[: _codec_py.BUCKET_LEN]
    assert path.parent.stat().st_mode & 0o777 == 0o750 & ~_umask()
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("sync", [False, True])
def test_put_makes_again_a_bucket_removed_meanwhile(drop: ModuleType, dirs: tuple, sync: bool) -> None:
    """As when the relay removes a bucket it found empty just before a late put."""
    tmp, queue, tmp_fd, queue_fd = dirs
    drop.put(tmp_fd, queue_fd, "p", "c", 4, b"first", sync)
    first = only_file(queue)
    first.unlink()
    first.parent.rmdir()
    msg_id = drop.put(tmp_fd, queue_fd, "p", "c", 4, b"second", sync)
    second = only_file(queue)
    assert second.name[1:31] == msg_id and second.read_bytes() == b"second"
    assert list(tmp.iterdir()) == []
    assert _codec_py.is_message_id(msg_id)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_put_takes_any_byte_buffer(drop: ModuleType, dirs: tuple, kind: type) -> None:
    _, queue, tmp_fd, queue_fd = dirs
    drop.put(tmp_fd, queue_fd, "p", "c", 0, kind(b"abc"), False)
    path = only_file(queue)
    assert path.read_bytes() == b"abc"
    assert _codec_py.parse_spool_name(path.name)[4:] == (3, zlib.crc32(b"abc"), 1, 0)


def test_put_crc_matches_zlib_on_every_length(drop: ModuleType, dirs: tuple) -> None:
    _, queue, tmp_fd, queue_fd = dirs
    data = os.urandom(64)
    for size in range(len(data) + 1):
        drop.put(tmp_fd, queue_fd, "p", "c", 9, data[:size], False)
    for path in queued_files(queue):
        _, _, _, _, size, crc, _, _ = _codec_py.parse_spool_name(path.name)
        assert crc == zlib.crc32(data[:size]) and path.read_bytes() == data[:size]


def test_ids_are_unique_and_in_put_order(drop: ModuleType, dirs: tuple) -> None:
    _, queue, tmp_fd, queue_fd = dirs
    ids = [drop.put(tmp_fd, queue_fd, "p", "c", 5, b"x", False) for _ in range(2000)]
    assert ids == sorted(set(ids))
    assert sorted(_codec_py.parse_spool_name(p.name)[1] for p in queued_files(queue)) == ids


def test_put_into_removed_queue_leaves_nothing(drop: ModuleType, dirs: tuple) -> None:
    tmp, queue, tmp_fd, queue_fd = dirs
    queue.rmdir()
    with pytest.raises(FileNotFoundError) as info:
        drop.put(tmp_fd, queue_fd, "p", "c", 5, b"x", False)
    assert info.value.errno == errno.ENOENT
    assert list(tmp.iterdir()) == []


def test_put_with_bad_directory_handle_raises_oserror(drop: ModuleType, dirs: tuple) -> None:
    tmp, queue, _, queue_fd = dirs
    with pytest.raises(OSError) as info:
        drop.put(-1, queue_fd, "p", "c", 5, b"x", False)
    assert info.value.errno == errno.EBADF
    assert list(tmp.iterdir()) == list(queue.iterdir()) == []


@pytest.mark.parametrize(
    ("peer", "channel", "priority"),
    [
        ("p" * 81, "c", 5),
        ("p", "", 5),
        ("a/b", "c", 5),
        ("..%2F", "c+d", 5),
        ("p", "c", 10),
        ("p", "c", -1),
        ("é", "c", 0),
    ],
)
def test_put_outside_the_name_format_writes_nothing(
    drop: ModuleType, dirs: tuple, peer: str, channel: str, priority: int
) -> None:
    tmp, queue, tmp_fd, queue_fd = dirs
    with pytest.raises(ValueError, match="not a spool name"):
        drop.put(tmp_fd, queue_fd, peer, channel, priority, b"x", False)
    assert list(tmp.iterdir()) == list(queue.iterdir()) == []


def test_twins_name_the_same_message_alike(drop: ModuleType, dirs: tuple) -> None:
    from dropr import _drop_py

    _, queue, tmp_fd, queue_fd = dirs
    fields = ("p%2F", "~" + "0" * 32)
    ids = [twin.put(tmp_fd, queue_fd, *fields, 7, b"same", True) for twin in (drop, _drop_py)]
    expected = sorted(_codec_py.spool_name(7, i, *fields, 4, zlib.crc32(b"same")) for i in ids)
    assert sorted(p.name for p in queued_files(queue)) == expected


def test_client_put_round_trips_text_and_fields(client: spool.Client) -> None:
    channel = "ç/" * 60
    msg_id = client.put("héllo", peer=PEER, channel=channel, priority=0)
    name = only_file(Path(client.spool.queue_dir)).name
    message = client.spool.decode(name)
    assert (message.id, message.peer, message.channel, message.priority) == (msg_id, PEER, channel, 0)
    assert Path(client.spool.queued_path(name)).read_bytes() == "héllo".encode()
    assert message.size == len("héllo".encode())


def test_client_put_strided_memoryview(client: spool.Client) -> None:
    client.put(memoryview(b"abcdef")[::2], peer=PEER)
    assert only_file(Path(client.spool.queue_dir)).read_bytes() == b"ace"


def test_client_with_sync_puts_durably(tmp_path: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tmp_path, sync=True) as client:
        client.put(b"x", peer=PEER)
        client.put(b"y", peer=PEER)
    assert len(queued_files(tmp_path / "queue")) == 2


def test_oversized_payload_is_refused(tmp_path: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tmp_path, limits=Limits(max_payload=10)) as client:
        client.put(b"x" * 10, peer=PEER)
        with pytest.raises(InvalidMessage, match="over the limit"):
            client.put(b"x" * 11, peer=PEER)
        with pytest.raises(InvalidMessage, match="over the limit"):
            client.put("é" * 6, peer=PEER)
    assert len(queued_files(tmp_path / "queue")) == 1
    assert os.listdir(tmp_path / "tmp") == []


def test_full_disk_raises_and_shows_nothing(tiny_fs: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    stored = 0
    with spool.Client(tiny_fs / "spool") as client, pytest.raises(SpoolError) as info:
        for _ in range(100):
            client.put(os.urandom(10_000), peer=PEER)
            stored += 1
    assert info.value.errno == errno.ENOSPC
    assert "disk full" in str(info.value)
    queue = tiny_fs / "spool" / "queue"
    assert 0 < len(queued_files(queue)) == stored
    for path in queued_files(queue):
        _, _, _, _, size, crc, _, _ = _codec_py.parse_spool_name(path.name)
        data = path.read_bytes()
        assert (len(data), zlib.crc32(data)) == (size, crc)
    assert os.listdir(tiny_fs / "spool" / "tmp") == []


def test_read_only_spool_raises_and_shows_nothing(
    tiny_fs: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tiny_fs / "spool") as client:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
        with pytest.raises(SpoolError) as info:
            client.put(b"x", peer=PEER)
    assert info.value.errno == errno.EROFS
    assert "read-only" in str(info.value)
    assert queued_files(tiny_fs / "spool" / "queue") == os.listdir(tiny_fs / "spool" / "tmp") == []


FILE_SIZE_LIMIT_CHILD = textwrap.dedent(
    """
    import errno, resource, signal, sys
    import dropr
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        dropr.fastput(b"x" * 8192, "http://127.0.0.1:1/", spool=sys.argv[1])
    except dropr.SpoolError as exc:
        print(errno.errorcode[exc.errno], exc)
    """
)


def test_file_size_limit_raises_and_shows_nothing(tmp_path: Path, kind: str) -> None:
    env = dict(os.environ)
    if kind == "python":
        env["DROPR_NO_EXTENSIONS"] = "1"
        env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("EFBIG "), done.stdout
    assert "file size limit exceeded: cannot put into spool" in done.stdout
    assert queued_files(tmp_path / "queue") == os.listdir(tmp_path / "tmp") == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
