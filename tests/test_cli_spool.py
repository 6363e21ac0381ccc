"""``dropr put`` and ``dropr spool``, run as a user runs them and in-process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from relaykit import queued, queued_path

from dropr import spool
from dropr._codec_py import is_message_id
from dropr.cli.main import main

PEER = "http://127.0.0.1:8080/q"


def dropr(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dropr.cli.main", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_put_from_stdin_and_file_prints_the_ids(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    first = dropr("put", "--spool", str(root), "--peer", PEER, "-", stdin=b"from stdin")
    assert first.returncode == 0, first.stderr
    (tmp_path / "payload").write_bytes(b"from file")
    second = dropr("put", "--spool", str(root), "--peer", PEER, "--channel", "jobs", "--priority", "1", "--sync",
                   str(tmp_path / "payload"))  # fmt: skip
    assert second.returncode == 0, second.stderr
    ids = [first.stdout.strip(), second.stdout.strip()]
    assert all(is_message_id(i) for i in ids)
    box = spool.Spool(root, create=False)
    messages = {box.decode(n).id: (box.decode(n), queued_path(root, n).read_bytes()) for n in queued(root)}
    assert messages[ids[0]][1] == b"from stdin" and messages[ids[0]][0].channel == "common"
    assert messages[ids[1]][1] == b"from file"
    assert (messages[ids[1]][0].channel, messages[ids[1]][0].priority) == ("jobs", 1)


def test_put_takes_the_spool_from_the_environment(tmp_path: Path) -> None:
    done = dropr("put", "--peer", PEER, stdin=b"x", env={"DROPR_SPOOL": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert len(queued(tmp_path)) == 1


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["--peer", "ftp://h/"], "peer"),
        (["--peer", "http://"], "host"),
        (["--peer", PEER, "--priority", "10"], "priority"),
        (["--peer", PEER, "--channel", ""], "channel"),
        (["--peer", PEER, "--channel", "a\tb"], "channel"),
        (["--peer", PEER, "missing-file"], "missing-file"),
        (["--peer", PEER, "--delay", "-1"], "delay"),
        (["--peer", PEER, "--delay", "nan"], "delay"),
        (["--peer", PEER, "--delay", "inf"], "delay"),
    ],
)
def test_put_with_bad_input_fails_in_one_line_and_creates_nothing(tmp_path: Path, args: list[str], stderr: str) -> None:
    done = dropr("put", "--spool", str(tmp_path / "spool"), *args, stdin=b"x")
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("dropr: ") and stderr in done.stderr
    assert not (tmp_path / "spool").exists()


def test_put_over_the_payload_limit_fails(tmp_path: Path) -> None:
    done = dropr("put", "--spool", str(tmp_path), "--peer", PEER, stdin=b"x" * 11, env={"DROPR_MAX_PAYLOAD": "10"})
    assert done.returncode == 1 and "over the limit" in done.stderr
    assert os.listdir(tmp_path) == []


def test_put_with_a_delay_names_it(tmp_path: Path) -> None:
    done = dropr("put", "--spool", str(tmp_path), "--peer", PEER, "--delay", "2.5", stdin=b"later")
    assert done.returncode == 0, done.stderr
    (name,) = queued(tmp_path)
    assert name.startswith(f"9{done.stdout.strip()}+") and name.endswith("+d9c4")


def test_put_usage_errors_exit_2(tmp_path: Path) -> None:
    done = dropr("put", "--spool", str(tmp_path), "--peer", PEER, "--priority", "high")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    done = dropr("put", "--spool", str(tmp_path), "--peer", PEER, "--delay", "soon")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert dropr("put", "--spool", str(tmp_path)).returncode == 2
    assert os.listdir(tmp_path) == []


def test_put_without_any_spool_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DROPR_SPOOL"}
    done = subprocess.run([sys.executable, "-m", "dropr.cli.main", "put", "--peer", PEER], input="x",
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode == 1 and "DROPR_SPOOL" in done.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[str]]:
    """A spool with three queued messages (ids in delivery order), one sent and one failed."""
    with spool.Client(tmp_path) as client:
        ids = [
            client.put(b"a", peer=PEER, channel="low", priority=9),
            client.put(b"bb", peer="file:///srv/store", channel="c" * 100, priority=0),
            client.put(b"ccc", peer=PEER, priority=5),
            client.put(b"sent", peer=PEER),
            client.put(b"failed", peer=PEER, channel="bad"),
        ]
    names = {client.spool.decode(n).id: n for n in queued(tmp_path)}
    os.rename(queued_path(tmp_path, names[ids[3]]), tmp_path / "sent" / names[ids[3]])
    client.spool.fail(names[ids[4]], "rejected: no such channel\nsecond line")
    return tmp_path, [ids[1], ids[2], ids[0]]


def test_spool_counts(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = filled
    assert main(["spool", str(root), "count-queued"]) == 0
    assert main(["spool", str(root), "count-sent"]) == 0
    assert capsys.readouterr().out.split() == ["3", "1"]
    done = dropr("spool", str(root), "count-queued")
    assert (done.returncode, done.stdout) == (0, "3\n")


def test_spool_counts_the_messages_of_batch_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with spool.Client(tmp_path) as client:
        client.put_many([b"a", b"b", b"c"], peer=PEER)
        client.put(b"d", peer=PEER)
    assert len(queued(tmp_path)) == 2
    assert main(["spool", str(tmp_path), "count-queued"]) == 0
    assert capsys.readouterr().out == "4\n"


def test_spool_list_in_delivery_order(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, ids = filled
    assert main(["spool", str(root), "list"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == ids
    assert rows[0][1:5] == ["0", "c" * 100, "file:///srv/store", "2"]
    assert rows[1][1:5] == ["5", "common", PEER, "3"]
    assert all(len(row) == 6 and row[5].endswith("+00:00") for row in rows)
    assert main(["spool", str(root), "list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == ids
    assert records[2] == {**records[2], "priority": 9, "channel": "low", "peer": PEER, "size": 1}


def test_spool_list_failed_shows_reasons(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = filled
    assert main(["spool", str(root), "list-failed"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split("\t")[2] == "bad"
    assert line.endswith("\trejected: no such channel second line")
    assert main(["spool", str(root), "list-failed", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["reason"] == "rejected: no such channel\nsecond line" and record["channel"] == "bad"


def test_spool_wipe_sent(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = filled
    assert main(["spool", str(root), "wipe-sent", "60"]) == 0
    assert main(["spool", str(root), "wipe-sent", "0"]) == 0
    assert capsys.readouterr().out.split() == ["0", "1"]
    assert os.listdir(root / "sent") == []
    assert len(queued(root)) == 3


@pytest.mark.parametrize("action", [["count-queued"], ["count-sent"], ["list"], ["list-failed"], ["wipe-sent", "1"]])
def test_spool_commands_on_a_missing_spool_fail_and_create_nothing(
    tmp_path: Path, action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["spool", str(tmp_path / "none"), *action]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dropr: ") and "none" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_wipe_sent_refuses_negative_minutes(tmp_path: Path) -> None:
    spool.Spool(tmp_path)
    done = dropr("spool", str(tmp_path), "wipe-sent", "-5")
    assert done.returncode == 2 and "minutes" in done.stderr


def test_spool_list_shows_every_message_queued_all_along_while_higher_priorities_arrive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Puts of a higher priority during a listing sort before what it is reading: the
    listing must still show every message that was queued for the whole of it."""
    with spool.Client(tmp_path) as client:
        queued_all_along = {client.put(b"x", peer=PEER, priority=9) for _ in range(3000)}
    stop = threading.Event()

    def put_higher() -> None:
        with spool.Client(tmp_path) as producer:
            while not stop.is_set():
                producer.put(b"y", peer=PEER, priority=random.randrange(9))

    producer = threading.Thread(target=put_higher)
    producer.start()
    try:
        for _ in range(5):
            assert main(["spool", str(tmp_path), "list"]) == 0
            listed = {line.split("\t", 1)[0] for line in capsys.readouterr().out.splitlines()}
            assert queued_all_along <= listed, f"{len(queued_all_along - listed)} missing"
    finally:
        stop.set()
        producer.join()
