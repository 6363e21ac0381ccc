"""``dropr consume``: a command per message, its exit status deciding the message's fate."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgpack
import pycurl
import pytest
from storekit import put, tree
from support import start_server

from dropr._impl import codec
from dropr.store import Store

WAIT = 60.0
APPEND = ["sh", "-c", 'cat >> "$0"; echo >> "$0"']
EACH_TO_A_FILE = ["sh", "-c", 'cat > "$(mktemp "$0/m.XXXXXX")"']


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True)


def consume(store: Store | str, *args: str, channel: str = "common") -> subprocess.Popen[str]:
    path = store if isinstance(store, str) else store.path
    argv = [
        sys.executable,
        "-m",
        "dropr.cli.main",
        "consume",
        "--store",
        path,
        "--channel",
        channel,
        *args,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def counts(out: str) -> dict[str, int]:
    return {name: int(n) for name, n in (line.split("\t") for line in out.splitlines())}


def test_each_message_goes_through_the_command_in_order(store: Store, tmp_path: Path) -> None:
    for payload, priority in ((b"late", 9), (b"first", 0), (b"second", 5), (b"last", 9)):
        put(store, payload, priority=priority)
    out_file = tmp_path / "out"
    status, out, err = finish(consume(store, "--", *APPEND, str(out_file)))
    assert (status, err) == (0, "")
    assert counts(out) == {"processed": 4, "failed": 0, "released": 0}
    assert out_file.read_text().splitlines() == ["first", "second", "late", "last"]
    assert (store.count_queued("common"), store.count_processed("common")) == (0, 4)


def test_limit_and_json(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        put(store, b"%d" % i)
    status, out, _ = finish(consume(store, "--limit", "2", "--json", "--", *APPEND, str(tmp_path / "out")))
    assert status == 0 and out == '{"processed":2,"failed":0,"released":0}\n'
    assert (tmp_path / "out").read_text().split() == ["0", "1"]
    assert store.count_queued("common") == 3


def test_concurrent_commands_each_get_one_message(store: Store, tmp_path: Path) -> None:
    for i in range(12):
        put(store, b"%d" % i)
    outdir = tmp_path / "outs"
    outdir.mkdir()
    status, out, _ = finish(consume(store, "--concurrency", "3", "--", *EACH_TO_A_FILE, str(outdir)))
    assert status == 0 and counts(out)["processed"] == 12
    assert sorted(int(p.read_text()) for p in outdir.iterdir()) == list(range(12))


def test_a_failing_command_becomes_a_dead_letter_with_its_reason(store: Store) -> None:
    put(store, b"x")
    failing = ["sh", "-c", "echo oops >&2; exit 3"]
    status, out, err = finish(consume(store, "--max-attempts", "1", "--", *failing))
    assert status == 0 and counts(out)["failed"] == 1
    assert err == "oops\n"
    [dead] = store.dead_letters("common")
    assert dead.reasons == ("exit status 3: oops",)


def test_failures_are_retried_then_dead_lettered(store: Store) -> None:
    put(store, b"x")
    args = [
        "--follow",
        "--limit",
        "3",
        "--max-attempts",
        "3",
        "--retry-delay",
        "0.1",
        "--",
        "false",
    ]
    status, out, _ = finish(consume(store, *args))
    assert status == 0 and counts(out)["failed"] == 3
    [dead] = store.dead_letters("common")
    assert dead.attempts == 3 and dead.reasons == ("exit status 1",) * 3


def test_a_command_that_cannot_be_found_changes_nothing(store: Store) -> None:
    put(store, b"x")
    before = tree(store.path)
    status, out, err = finish(consume(store, "--", "no-such-command-anywhere"))
    assert (status, out) == (1, "")
    assert "no-such-command-anywhere" in err and len(err.splitlines()) == 1
    assert tree(store.path) == before


def test_a_command_that_fails_to_start_releases_its_message(store: Store, tmp_path: Path) -> None:
    put(store, b"x")
    script = tmp_path / "broken"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    status, out, err = finish(consume(store, "--", str(script)))
    assert status == 1
    assert counts(out) == {"processed": 0, "failed": 0, "released": 0}
    assert "cannot run" in err and len(err.splitlines()) == 1
    assert store.count_queued("common") == 1
    assert os.listdir(Path(store.path, "channels", "common", "claimed")) == []
    assert os.listdir(Path(store.path, "channels", "common", "attempts")) == []


def test_sigterm_finishes_the_messages_in_hand(store: Store, tmp_path: Path) -> None:
    for i in range(6):
        put(store, b"%d" % i)
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = ["sh", "-c", 'touch "$0/$$"; sleep 1; cat > /dev/null', str(marks)]
    proc = consume(store, "--concurrency", "2", "--", *slow)
    deadline = time.monotonic() + WAIT
    while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    status, out, _ = finish(proc)
    assert status == 0 and counts(out)["processed"] == 2
    assert (store.count_queued("common"), store.count_processed("common")) == (4, 2)
    assert os.listdir(Path(store.path, "channels", "common", "claimed")) == []


BAD = [
    ("--channel-is-unknown",),
    ("--limit", "0"),
    ("--limit", "many"),
    ("--concurrency", "0"),
    ("--lease", "-1"),
    ("--lease", "inf"),
    ("--max-attempts", "0"),
    ("--",),
]


@pytest.mark.parametrize("args", BAD, ids=" ".join)
def test_bad_input_is_one_line_and_changes_nothing(store: Store, args: tuple[str, ...]) -> None:
    put(store, b"x")
    before = tree(store.path)
    if args[0] == "--channel-is-unknown":
        proc = consume(store, "--", "true", channel="unknown")
    else:
        proc = consume(store, *args, *([] if args == ("--",) else ["--", "true"]))
    status, out, err = finish(proc)
    assert status != 0 and out == ""
    assert len(err.splitlines()) == 1
    assert tree(store.path) == before


def test_a_missing_store_is_one_line(tmp_path: Path) -> None:
    status, out, err = finish(consume(str(tmp_path / "nowhere"), "--", "true"))
    assert (status, out) == (1, "")
    assert "not a store" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def post_batch(url: str, client: str, messages: list[tuple[str, bytes]]) -> dict[str, list[str]]:
    """One real multipart POST as the relay sends it: client, manifest, a part per message."""
    manifest = [[mid, "common", 9, mid, len(data), zlib.crc32(data)] for mid, data in messages]
    curl = pycurl.Curl()
    mime = pycurl.CurlMime(curl)
    mime.add_field("client", client.encode())
    mime.add(
        name="manifest",
        data=msgpack.packb(manifest),
        filename="manifest",
        content_type="application/msgpack",
    )
    for mid, data in messages:
        mime.add(name=mid, data=data, filename=mid, content_type="application/octet-stream")
    body = io.BytesIO()
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.MIMEPOST, mime)
    curl.setopt(pycurl.WRITEDATA, body)
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.TIMEOUT, 30)
    try:
        curl.perform()
        assert curl.getinfo(pycurl.RESPONSE_CODE) == 200, body.getvalue()
    finally:
        curl.close()
    return msgpack.unpackb(body.getvalue(), raw=False)  # type: ignore[no-any-return]


def test_consuming_while_the_server_receives(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    outdir = tmp_path / "outs"
    outdir.mkdir()
    sent = []
    with start_server(store_dir) as server:
        first = [(codec.new_id(), b"early %d" % i) for i in range(20)]
        assert set(post_batch(server.url, "host-a", first)) == {mid for mid, _ in first}
        sent += first
        proc = consume(
            str(store_dir),
            "--follow",
            "--limit",
            "100",
            "--concurrency",
            "2",
            "--",
            *EACH_TO_A_FILE,
            str(outdir),
        )
        for round_ in range(4):
            batch = [(codec.new_id(), b"round %d message %d" % (round_, i)) for i in range(20)]
            acks = post_batch(server.url, "host-a", batch)
            assert all(status == "stored" for status, _ in acks.values())
            sent += batch
        assert all(status == "duplicate" for status, _ in post_batch(server.url, "host-a", first[:5]).values())
        status, out, _ = finish(proc)
    assert status == 0 and counts(out)["processed"] == 100
    assert sorted(p.read_bytes() for p in outdir.iterdir()) == sorted(data for _, data in sent)
    store = Store(store_dir)
    assert (store.count_queued("common"), store.count_processed("common")) == (0, 100)


def consume_remote(url: str, *args: str, token: str = "tok", channel: str = "common") -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "dropr.cli.main", "consume", "--server", url, "--channel", channel, *args]
    env = {**os.environ, "DROPR_TOKEN": token}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_consume_over_the_network(store: Store, tmp_path: Path) -> None:
    for payload, priority in ((b"late", 9), (b"first", 0), (b"second", 5)):
        put(store, payload, priority=priority)
    put(store, b"bad", channel="failing")
    outdir = tmp_path / "outs"
    outdir.mkdir()
    extra = ["--max-attempts", "2", "--retry-delay", "0.2"]
    with start_server(store.path, token="tok", extra_args=extra) as server:
        status, out, err = finish(consume_remote(server.url, "--concurrency", "2", "--", *EACH_TO_A_FILE, str(outdir)))
        assert (status, err) == (0, "")
        assert counts(out) == {"processed": 3, "failed": 0, "released": 0}
        assert sorted(p.read_bytes() for p in outdir.iterdir()) == [b"first", b"late", b"second"]
        failing = ["sh", "-c", "cat >/dev/null; echo nope >&2; exit 4"]
        args = ["--follow", "--limit", "2", "--", *failing]
        status, out, err = finish(consume_remote(server.url, *args, channel="failing"))
        assert status == 0 and counts(out)["failed"] == 2 and err == "nope\nnope\n"
        [dead] = store.dead_letters("failing")
        assert dead.reasons == ("exit status 4: nope",) * 2
        status, out, err = finish(consume_remote(server.url, "--", "true", token="wrong"))
        assert status == 1 and "token" in err and len(err.splitlines()) == 1
    assert (store.count_queued("common"), store.count_processed("common")) == (0, 3)


def test_consume_a_group_over_the_network_following_new_messages(store: Store, tmp_path: Path) -> None:
    store.subscribe("orders", "mail")
    outdir = tmp_path / "outs"
    outdir.mkdir()
    with start_server(store.path, token="tok") as server:
        proc = consume_remote(
            server.url, "--group", "mail", "--follow", "--limit", "3", "--", *EACH_TO_A_FILE, str(outdir),
            channel="orders",
        )  # fmt: skip
        for i in range(3):
            time.sleep(0.3)
            put(store, b"order %d" % i, channel="orders")
        status, out, err = finish(proc)
    assert (status, err) == (0, "") and counts(out)["processed"] == 3
    assert sorted(p.read_bytes() for p in outdir.iterdir()) == [b"order 0", b"order 1", b"order 2"]
    assert store.count_processed("orders", group="mail") == 3


@pytest.mark.parametrize(
    "args",
    [
        ("--store", "STORE", "--token", "t"),
        ("--server", "http://127.0.0.1:1/", "--max-attempts", "2"),
        ("--server", "ftp://nowhere/"),
        ("--server", "http://127.0.0.1:1/", "--store", "STORE"),
    ],
    ids=" ".join,
)
def test_bad_remote_options_are_one_line(store: Store, args: tuple[str, ...]) -> None:
    argv = [a.replace("STORE", store.path) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "dropr.cli.main", "consume", *argv, "--channel", "common", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and done.stdout == "" and len(done.stderr.splitlines()) == 1
