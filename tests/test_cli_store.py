"""``dropr store DIR ...`` against a store with known contents, and every kind of bad input."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import CLIENT, put, tree

from dropr.cli.main import main
from dropr.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """common: 3 queued (priorities 5, 9, 9) and 2 processed; orders: 1 queued, 1 dead letter."""
    store = Store(tmp_path / "store", create=True, max_attempts=1)
    for payload, priority in ((b"one", 9), (b"two!", 5), (b"three", 9), (b"p1", 9), (b"p2", 9)):
        put(store, payload, priority=priority)
    for message in store.claim("common", 2, 60):
        store.set_processed(message)
    put(store, b"dead", channel="orders", priority=1)
    store.set_failed(store.claim("orders", 1, 60)[0], "bad\tnews\nhere")
    put(store, b"order", channel="orders", priority=0)
    return store


def run(store: Store, *args: str) -> tuple[int, str, str]:
    return run_dropr("store", store.path, *args)


def run_dropr(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "dropr.cli.main", *args], capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def call(capsys: pytest.CaptureFixture[str], store: Store, *args: str) -> str:
    assert main(["store", store.path, *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_channels(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, store, "channels") == "common\norders\n"
    assert json.loads(call(capsys, store, "channels", "--json")) == ["common", "orders"]


def test_counts(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, store, "count-queued", "common") == "3\n"
    assert call(capsys, store, "count-processed", "common") == "2\n"
    assert call(capsys, store, "count-queued", "orders") == "1\n"
    assert call(capsys, store, "count-processed", "orders") == "0\n"


def test_sums(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, store, "sum-queued") == "common\t3\norders\t1\ntotal\t4\n"
    assert call(capsys, store, "sum-processed") == "common\t2\norders\t0\ntotal\t2\n"
    assert json.loads(call(capsys, store, "sum-queued", "--json")) == {
        "channels": {"common": 3, "orders": 1},
        "total": 4,
    }


def test_list_queued(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line.split("\t") for line in call(capsys, store, "list-queued").splitlines()]
    expected = [(m, len(m.read())) for ch in ("common", "orders") for m in store.messages(ch)]
    assert [row[:4] for row in lines] == [[m.channel, m.id, str(m.priority), CLIENT] for m, _ in expected]
    assert [int(row[5]) for row in lines] == [5, 2, 2, 5]
    for row, (message, _) in zip(lines, expected, strict=True):
        stamp = datetime.datetime.fromisoformat(row[4].replace("Z", "+00:00"))
        assert abs(stamp.timestamp() - message.time) < 1e-5
    only = json.loads(call(capsys, store, "list-queued", "--json", "orders"))
    assert [(r["channel"], r["priority"], r["size"]) for r in only] == [("orders", 0, 5)]
    assert set(only[0]) == {"channel", "id", "priority", "client", "time", "size"}


def test_list_processed(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [line.split("\t") for line in call(capsys, store, "list-processed").splitlines()]
    assert [(r[0], r[5]) for r in rows] == [("common", "4"), ("common", "3")]
    assert [r["size"] for r in json.loads(call(capsys, store, "list-processed", "--json"))] == [
        4,
        3,
    ]


def test_wipes(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, store, "wipe-processed", "common", "5") == "0\n"
    assert call(capsys, store, "wipe-all-processed", "1.5") == "0\n"
    assert call(capsys, store, "wipe-processed", "orders", "0") == "0\n"
    assert call(capsys, store, "wipe-processed", "common", "0") == "2\n"
    assert call(capsys, store, "count-processed", "common") == "0\n"
    assert call(capsys, store, "wipe-all-processed", "0") == "0\n"


def test_dead_letters(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    [row] = [line.split("\t") for line in call(capsys, store, "list-dead", "orders").splitlines()]
    [dead] = store.dead_letters("orders")
    assert row[:4] == ["orders", dead.id, "1", CLIENT]
    assert row[5:] == ["4", "1", "bad\\tnews\\nhere"]
    [entry] = json.loads(call(capsys, store, "list-dead", "orders", "--json"))
    assert (entry["attempts"], entry["reasons"]) == (1, ["bad\tnews\nhere"])
    assert call(capsys, store, "list-dead", "common") == ""
    assert call(capsys, store, "requeue-dead", "orders", dead.id) == "1\n"
    assert call(capsys, store, "requeue-dead", "orders") == "0\n"
    assert [m.id for m in store.messages("orders")][-1] == dead.id


BAD_INPUT = [
    ("count-queued", "nothing"),
    ("count-processed", "nothing"),
    ("list-queued", "common", "nothing"),
    ("list-dead", "nothing"),
    ("wipe-processed", "nothing", "0"),
    ("requeue-dead", "nothing"),
    ("requeue-dead", "orders", "0" * 30),
    ("requeue-dead", "orders", "not-an-id"),
    ("count-queued", ".."),
]
USAGE = [
    ("wipe-processed", "common", "-1"),
    ("wipe-processed", "common", "soon"),
    ("wipe-processed", "common", "nan"),
    ("wipe-all-processed", "-0.5"),
    ("wipe-all-processed",),
    ("count-queued",),
    ("frobnicate",),
]


@pytest.mark.parametrize("args", BAD_INPUT + USAGE, ids=" ".join)
def test_bad_input_is_one_line_and_changes_nothing(store: Store, args: tuple[str, ...]) -> None:
    before = tree(store.path)
    status, out, err = run(store, *args)
    assert status == (1 if args in BAD_INPUT else 2)
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("dropr")
    assert tree(store.path) == before


def test_a_missing_store_is_one_line(tmp_path: Path) -> None:
    status, out, err = run_dropr("store", str(tmp_path / "nowhere"), "channels")
    assert (status, out) == (1, "")
    assert "not a store" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def test_status_of_each_state(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    [dead] = store.dead_letters("orders")
    [queued] = store.messages("orders")
    assert call(capsys, store, "status", "orders", dead.id) == "dead\n"
    assert call(capsys, store, "status", "orders", queued.id) == "queued\n"
    [held] = store.claim("common", 1, 60)
    assert call(capsys, store, "status", "common", held.id) == "claimed\n"
    assert call(capsys, store, "status", "common", store.processed("common")[0].id) == "processed\n"
    status, out, err = run(store, "status", "common", "0" * 30)
    assert (status, out) == (1, "") and len(err.splitlines()) == 1


def test_groups_from_the_command_line(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, store, "groups", "orders") == ""
    assert call(capsys, store, "subscribe", "orders", "billing") == "subscribed\n"
    assert call(capsys, store, "subscribe", "orders", "billing") == "subscribed already\n"
    assert call(capsys, store, "subscribe", "orders", "audit") == "subscribed\n"
    assert call(capsys, store, "groups", "orders") == "audit\nbilling\n"
    assert json.loads(call(capsys, store, "groups", "orders", "--json")) == ["audit", "billing"]
    # billing, the first, took over what waited: the queued message and the dead letter
    assert call(capsys, store, "count-queued", "orders", "--group", "billing") == "1\n"
    assert call(capsys, store, "count-queued", "orders", "--group", "audit") == "0\n"
    assert call(capsys, store, "count-queued", "orders") == "0\n"
    put(store, b"new", channel="orders")
    assert call(capsys, store, "count-queued", "orders", "--group", "audit") == "1\n"
    assert call(capsys, store, "sum-queued", "--group", "billing") == "orders\t2\ntotal\t2\n"
    rows = call(capsys, store, "list-queued", "--group", "billing").splitlines()
    assert [row.split("\t")[0] for row in rows] == ["orders", "orders"]
    [dead] = store.dead_letters("orders", group="billing")
    assert call(capsys, store, "list-dead", "orders", "--group", "billing").split("\t")[1] == dead.id
    assert call(capsys, store, "status", "orders", dead.id, "--group", "billing") == "dead\n"
    assert call(capsys, store, "requeue-dead", "orders", "--group", "billing") == "1\n"
    assert call(capsys, store, "count-queued", "orders", "--group", "billing") == "3\n"
    assert call(capsys, store, "unsubscribe", "orders", "audit") == "unsubscribed\n"
    assert call(capsys, store, "groups", "orders") == "billing\n"


GROUP_BAD_INPUT = [
    ("count-queued", "orders", "--group", "nobody"),
    ("list-dead", "orders", "--group", "nobody"),
    ("status", "orders", "0" * 30, "--group", "nobody"),
    ("status", "orders", "not-an-id"),
    ("unsubscribe", "orders", "nobody"),
    ("subscribe", "orders", "bad\tname"),
    ("subscribe", "orders", ""),
    ("groups", "nothing"),
]


@pytest.mark.parametrize("args", GROUP_BAD_INPUT, ids=" ".join)
def test_bad_group_input_is_one_line_and_changes_nothing(store: Store, args: tuple[str, ...]) -> None:
    before = tree(store.path)
    status, out, err = run(store, *args)
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("dropr")
    assert tree(store.path) == before
