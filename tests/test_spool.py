"""The spool: its layout, client id, names/, failed/, and what Client and fastput refuse."""

from __future__ import annotations

import enum
import errno
import gc
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from relaykit import queued as queued_names
from relaykit import queued_path
from support import open_under

from dropr import InvalidMessage, SpoolError, spool
from dropr.limits import Limits

PEER = "http://127.0.0.1:8080/q"
SUBDIRS = {"queue", "tmp", "sent", "free", "failed", "names"}


@pytest.fixture
def twin(putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Client and fastput routed through the ``putter`` twin under test."""
    monkeypatch.setattr(spool, "putter", putter)
    return putter


@pytest.fixture
def fastput(twin: ModuleType) -> Callable[..., str]:
    """A fastput of the ``putter`` twin under test, with no spool opened yet."""
    return twin.Spools(spool._open_for_fastput).fastput  # type: ignore[no-any-return]


def assert_untouched(root: Path) -> None:
    for sub in ("queue", "tmp", "names"):
        assert os.listdir(root / sub) == [], sub


def test_spool_makes_its_directories(tmp_path: Path) -> None:
    root = tmp_path / "a" / "spool"
    box = spool.Spool(root)
    assert box.path == str(root)
    assert set(os.listdir(root)) == SUBDIRS
    mask = os.umask(0)
    os.umask(mask)
    for sub in SUBDIRS:
        assert (root / sub).stat().st_mode & 0o777 == 0o750 & ~mask
    assert (box.queue_dir, box.tmp_dir, box.names_dir) == (str(root / "queue"), str(root / "tmp"), str(root / "names"))


def test_opening_a_missing_spool_without_create_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(SpoolError) as info:
        spool.Spool(tmp_path / "none", create=False)
    assert info.value.errno == errno.ENOENT
    assert not (tmp_path / "none").exists()


def test_spool_under_a_regular_file_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError) as info:
        spool.Spool(tmp_path / "file" / "spool")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(SpoolError):
        spool.fastput(b"x", PEER, spool=str(tmp_path / "file" / "spool"))


def test_default_client_id_is_host_and_path_hash_written_once(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path)
    digest = hashlib.blake2b(os.path.realpath(tmp_path).encode(), digest_size=4).hexdigest()
    assert box.client_id == f"{os.uname().nodename}-{digest}"
    assert (tmp_path / "client-id").read_text() == box.client_id + "\n"
    assert spool.Spool(tmp_path).client_id == box.client_id


def test_client_id_created_concurrently_is_one_id(tmp_path: Path) -> None:
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(spool.Spool(tmp_path).client_id)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert sorted(os.listdir(tmp_path)) == sorted(SUBDIRS | {"client-id"})


def test_client_id_read_only_spool_does_not_write_it(tmp_path: Path) -> None:
    spool.Spool(tmp_path)
    assert spool.Spool(tmp_path, create=False).client_id
    assert not (tmp_path / "client-id").exists()


def test_client_id_can_be_set_and_replaced(tmp_path: Path) -> None:
    spool.Client(tmp_path, client_id="web-1").close()
    assert spool.Spool(tmp_path).client_id == "web-1"
    spool.Client(tmp_path, client_id="web-2").close()
    assert spool.Spool(tmp_path).client_id == "web-2"
    assert sorted(os.listdir(tmp_path)) == sorted(SUBDIRS | {"client-id"})


@pytest.mark.parametrize("bad", ["", " ", "a b", "a\nb", "x" * 256, 5])
def test_bad_client_id_is_refused(tmp_path: Path, bad: object) -> None:
    spool.Client(tmp_path, client_id="good").close()
    with pytest.raises(InvalidMessage, match="client id"):
        spool.Client(tmp_path, client_id=bad)  # type: ignore[arg-type]
    assert (tmp_path / "client-id").read_text() == "good\n"


def test_register_keeps_long_texts_in_names(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path)
    assert box.register("orders") == "orders"
    assert box.register("a/b c") == "a%2Fb%20c"
    long = "ü" * 100
    field = box.register(long)
    assert field.startswith("~") and len(field) == 33
    assert (tmp_path / "names" / field).read_text(encoding="utf-8") == long
    assert box.register(long) == field
    assert os.listdir(tmp_path / "names") == [field]
    fresh = spool.Spool(tmp_path)
    assert (fresh.resolve(field), fresh.resolve("a%2Fb%20c"), fresh.resolve("orders")) == (long, "a/b c", "orders")


def test_resolve_refuses_what_is_not_a_compact_field(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path)
    with pytest.raises(ValueError):
        box.resolve("~../../etc/passwd")
    with pytest.raises(FileNotFoundError):
        box.resolve("~" + "0" * 32)


def test_decode_describes_a_queued_message(tmp_path: Path) -> None:
    with spool.Client(tmp_path) as client:
        before = time.time()
        msg_id = client.put(b"12345", peer=PEER, channel="c" * 90, priority=2)
    (name,) = queued_names(tmp_path)
    message = client.spool.decode(name)
    assert message[:7] == (2, msg_id, PEER, "c" * 90, 5, zlib.crc32(b"12345"), name)
    assert before - 1 < message.time < time.time() + 1
    with pytest.raises(ValueError):
        client.spool.decode("junk")


def test_fail_moves_a_message_with_its_reason(tmp_path: Path) -> None:
    with spool.Client(tmp_path) as client:
        client.put(b"a", peer=PEER)
    box = client.spool
    (name,) = queued_names(box.path)
    box.fail(name, "rejected: bad channel\n")
    assert queued_names(box.path) == []
    assert sorted(os.listdir(box.failed_dir)) == [name, name + ".reason"]
    ((message, reason),) = list(box.failed())
    assert (message.name, reason) == (name, "rejected: bad channel")
    with pytest.raises(FileNotFoundError):
        box.fail(name, "again")
    assert sorted(os.listdir(box.failed_dir)) == [name, name + ".reason"]
    assert (Path(box.failed_dir) / (name + ".reason")).read_text() == "rejected: bad channel\n"


def test_wipe_sent_removes_by_put_time(tmp_path: Path) -> None:
    with spool.Client(tmp_path) as client:
        for _ in range(3):
            client.put(b"a", peer=PEER)
    box = client.spool
    for name in queued_names(box.path):
        os.rename(box.queued_path(name), os.path.join(box.sent_dir, name))
    assert box.wipe_sent(10) == 0
    assert box.wipe_sent(0) == 3
    assert os.listdir(box.sent_dir) == []


class Level(enum.IntEnum):
    HIGH = 0


@pytest.mark.parametrize("priority", [0, 5, 9, Level.HIGH])
def test_every_priority_is_taken(tmp_path: Path, priority: int) -> None:
    with spool.Client(tmp_path) as client:
        client.put(b"x", peer=PEER, priority=priority)
    (name,) = queued_names(tmp_path)
    assert name[0] == str(int(priority))


@pytest.mark.parametrize(
    "peer",
    [
        "http://h/",
        "http://127.0.0.1:1/x",
        "https://example.org:65535/a/b?c=d",
        "http://[::1]:8080/",
        "HTTP://h/",
        "file:///var/lib/dropr/store",
    ],
)
def test_good_peers_are_taken(tmp_path: Path, peer: str) -> None:
    with spool.Client(tmp_path) as client:
        client.put(b"x", peer=peer)
    (name,) = queued_names(tmp_path)
    assert client.spool.decode(name).peer == peer


BAD_INPUTS = [
    pytest.param({"priority": -1}, "priority", id="priority-negative"),
    pytest.param({"priority": 10}, "priority", id="priority-10"),
    pytest.param({"priority": "5"}, "priority", id="priority-str"),
    pytest.param({"priority": True}, "priority", id="priority-bool"),
    pytest.param({"priority": 5.0}, "priority", id="priority-float"),
    pytest.param({"priority": None}, "priority", id="priority-none"),
    pytest.param({"channel": ""}, "channel", id="channel-empty"),
    pytest.param({"channel": "c" * 256}, "channel", id="channel-long"),
    pytest.param({"channel": "é" * 128}, "channel", id="channel-long-utf8"),
    pytest.param({"channel": "a\nb"}, "channel", id="channel-newline"),
    pytest.param({"channel": "a\x00b"}, "channel", id="channel-nul"),
    pytest.param({"channel": "a\x7f"}, "channel", id="channel-del"),
    pytest.param({"channel": "a\u2028b"}, "channel", id="channel-line-separator"),
    pytest.param({"channel": "a\u200bb"}, "channel", id="channel-zero-width"),
    pytest.param({"channel": b"common"}, "channel", id="channel-bytes"),
    pytest.param({"peer": "localhost:8080"}, "peer", id="peer-no-scheme"),
    pytest.param({"peer": "/var/store"}, "peer", id="peer-path"),
    pytest.param({"peer": "ftp://h/"}, "peer", id="peer-ftp"),
    pytest.param({"peer": "http://"}, "peer", id="peer-no-host"),
    pytest.param({"peer": "http:///x"}, "peer", id="peer-empty-host"),
    pytest.param({"peer": "http://h:0/"}, "peer", id="peer-port-0"),
    pytest.param({"peer": "http://h:65536/"}, "peer", id="peer-port-big"),
    pytest.param({"peer": "http://h:port/"}, "peer", id="peer-port-text"),
    pytest.param({"peer": "http://h /x"}, "peer", id="peer-space"),
    pytest.param({"peer": "http://h/\r\nx"}, "peer", id="peer-crlf"),
    pytest.param({"peer": "http://[::1/"}, "peer", id="peer-bad-ipv6"),
    pytest.param({"peer": "file://host/x"}, "peer", id="peer-file-host"),
    pytest.param({"peer": "file:relative"}, "peer", id="peer-file-relative"),
    pytest.param({"peer": ""}, "peer", id="peer-empty"),
    pytest.param({"peer": "http://h/" + "x" * 1100}, "peer", id="peer-long"),
    pytest.param({"peer": None}, "peer", id="peer-none"),
    pytest.param({"peer": ["http://h/"]}, "peer", id="peer-list"),
    pytest.param({"payload": None}, "payload", id="payload-none"),
    pytest.param({"payload": 5}, "payload", id="payload-int"),
    pytest.param({"payload": "\ud800"}, "payload", id="payload-surrogate"),
    pytest.param({"payload": b"x" * 101}, "payload", id="payload-over-limit"),
]


@pytest.mark.parametrize(("change", "word"), BAD_INPUTS)
def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, twin: ModuleType, change: dict, word: str) -> None:
    args = {"payload": b"x", "peer": PEER, "channel": "common", "priority": 9, **change}
    with spool.Client(tmp_path, limits=Limits(max_payload=100)) as client, pytest.raises(InvalidMessage, match=word):
        client.put(args.pop("payload"), **args)
    assert_untouched(tmp_path)


@pytest.mark.parametrize(("change", "word"), BAD_INPUTS[:-1])
def test_fastput_refuses_bad_input_and_changes_nothing(
    tmp_path: Path, fastput: Callable[..., str], change: dict, word: str
) -> None:
    args = {"payload": b"x", "peer": PEER, "channel": "common", "priority": 9, **change}
    with pytest.raises(InvalidMessage, match=word):
        fastput(args.pop("payload"), spool=str(tmp_path), **args)
    assert_untouched(tmp_path)


def test_fastput_uses_dropr_spool_from_the_environment(
    tmp_path: Path, fastput: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPR_SPOOL", str(tmp_path))
    msg_id = fastput("text", PEER)
    (name,) = queued_names(tmp_path)
    assert msg_id in name and queued_path(tmp_path, name).read_bytes() == b"text"


def test_fastput_without_a_spool_says_so(fastput: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROPR_SPOOL", raising=False)
    with pytest.raises(SpoolError, match="DROPR_SPOOL"):
        fastput(b"x", PEER)


def test_fastput_keeps_one_putter_per_spool(tmp_path: Path, fastput: Callable[..., str]) -> None:
    putters = fastput.__self__.putters  # type: ignore[attr-defined]
    fastput(b"x", PEER, spool=str(tmp_path))
    putter = putters[str(tmp_path)]
    fastput(b"x", PEER, "other", 0, spool=str(tmp_path), sync=True)
    assert putters == {str(tmp_path): putter}
    assert len(queued_names(tmp_path)) == 2


def test_fastput_follows_a_spool_that_was_removed_and_made_again(tmp_path: Path, fastput: Callable[..., str]) -> None:
    root = tmp_path / "spool"
    fastput(b"x", PEER, spool=str(root))
    shutil.rmtree(root)
    fastput(b"y", PEER, spool=str(root))
    (name,) = queued_names(root)
    assert queued_path(root, name).read_bytes() == b"y"


def test_fastput_is_the_compiled_front_when_the_hot_path_is(tmp_path: Path) -> None:
    from dropr._impl import COMPILED

    assert type(spool._spools).__module__ == ("dropr._putter" if COMPILED["putter"] else "dropr._putter_py")
    assert spool.fastput(b"x", PEER, spool=str(tmp_path)) in queued_names(tmp_path)[0]


def test_put_after_close_is_a_spool_error(tmp_path: Path, twin: ModuleType) -> None:
    client = spool.Client(tmp_path)
    client.close()
    with pytest.raises(SpoolError) as info:
        client.put(b"x", peer=PEER)
    assert info.value.errno == errno.EBADF
    assert_untouched(tmp_path)


def test_a_client_dropped_unclosed_releases_its_directories(tmp_path: Path, twin: ModuleType) -> None:
    assert open_under(tmp_path) == 0
    client = spool.Client(tmp_path)
    assert open_under(tmp_path) == 3  # tmp/, queue/ and free/ held open
    client.close()
    assert open_under(tmp_path) == 0
    client.close()
    client = spool.Client(tmp_path)
    assert open_under(tmp_path) == 3
    del client
    gc.collect()
    assert open_under(tmp_path) == 0


EXIT_WITH_OPEN_SPOOLS = """
import sys, dropr
client = dropr.Client(sys.argv[1])
client.put(b"x", peer="http://127.0.0.1:8080/q")
dropr.fastput(b"y", "http://127.0.0.1:8080/q", spool=sys.argv[1])
"""


def test_a_process_exits_quietly_with_its_spools_open(tmp_path: Path, kind: str) -> None:
    env = dict(os.environ)
    if kind == "python":
        env["DROPR_NO_EXTENSIONS"] = "1"
        env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    command = [sys.executable, "-X", "dev", "-c", EXIT_WITH_OPEN_SPOOLS, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(queued_names(tmp_path)) == 2


def test_remove_all_unlinks_in_parallel_and_counts_what_was_there(tmp_path: Path) -> None:
    from dropr._files import remove_all

    paths = [str(tmp_path / f"f{i}") for i in range(50)]
    for path in paths[:45]:
        Path(path).write_bytes(b"x")
    assert remove_all(paths) == 45
    assert remove_all(paths[:3]) == 0
    assert os.listdir(tmp_path) == []


def _free_file(root: Path, name: str, data: bytes) -> int:
    """An acknowledged file left in ``free/`` as the relay leaves one; its inode."""
    path = root / "free" / name
    path.write_bytes(data)
    return path.stat().st_ino


@pytest.mark.parametrize("sync", [False, True])
def test_a_put_writes_into_a_file_of_free_cut_to_its_length(tmp_path: Path, twin: ModuleType, sync: bool) -> None:
    spool.Spool(tmp_path)
    inode = _free_file(tmp_path, "old", b"o" * 300)
    with spool.Client(tmp_path, sync=sync) as client:
        msg_id = client.put(b"new", peer=PEER)
    (name,) = queued_names(tmp_path)
    assert msg_id in name
    path = queued_path(tmp_path, name)
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino == inode
    assert os.listdir(tmp_path / "free") == [] and os.listdir(tmp_path / "tmp") == []


def test_a_free_file_another_producer_took_first_means_a_new_file(tmp_path: Path, twin: ModuleType) -> None:
    spool.Spool(tmp_path)
    inodes = {_free_file(tmp_path, name, b"o" * 50) for name in ("a", "b")}
    with spool.Client(tmp_path) as client:
        client.put(b"first", peer=PEER)  # takes one of the two it saw
        (left,) = os.listdir(tmp_path / "free")
        os.rename(tmp_path / "free" / left, tmp_path / "taken")  # another producer takes the other
        client.put(b"second", peer=PEER)
    paths = [queued_path(tmp_path, name) for name in queued_names(tmp_path)]
    assert [path.read_bytes() for path in paths] == [b"first", b"second"]
    assert paths[0].stat().st_ino in inodes and paths[1].stat().st_ino not in inodes
    assert os.listdir(tmp_path / "tmp") == []


def test_an_empty_free_is_looked_into_again_only_every_so_many_puts(tmp_path: Path, twin: ModuleType) -> None:
    spool.Spool(tmp_path)
    with spool.Client(tmp_path) as client:
        client.put(b"x", peer=PEER)  # finds free/ empty
        inode = _free_file(tmp_path, "late", b"o")
        for _ in range(twin.LOOK_EVERY):
            client.put(b"x", peer=PEER)
        assert os.listdir(tmp_path / "free") == ["late"]
        client.put(b"last", peer=PEER)
    assert os.listdir(tmp_path / "free") == []
    last = max(queued_names(tmp_path), key=lambda name: name[1:31])
    assert queued_path(tmp_path, last).stat().st_ino == inode
