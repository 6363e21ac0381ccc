"""The highest stored id of each client (``dropr.store.bounds``): what it spares ingest, and
when it is not trusted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from storekit import CLIENT, put, stage

from dropr._impl import codec
from dropr.store import Store
from dropr.store.bounds import CEILING_AHEAD_NS


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True)


def record(store: Store) -> list[str]:
    return Path(store.path, "ingested", CLIENT).read_text().split()


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def plant(store: Store, state: str, msg_id: str) -> Path:
    """A file under a message's name in ``state`` that ingest never saw: what only a lookup
    finds."""
    path = Path(store.channels_dir, "common", state, codec.store_name(9, msg_id, CLIENT))
    path.write_bytes(b"planted")
    return path


def test_the_record_holds_the_highest_id_and_a_ceiling_ahead(store: Store) -> None:
    late = codec.new_id()
    first = put(store, b"one")
    high, ceiling, boot = record(store)
    assert high == first
    assert codec.id_time_ns(ceiling) == codec.id_time_ns(first) + CEILING_AHEAD_NS
    assert boot == boot_id()
    put(store, b"late", msg_id=late)  # below the highest: looked for, the record stays
    assert record(store) == [high, ceiling, boot]
    second = put(store, b"two")
    assert record(store) == [second, ceiling, boot]  # under the ceiling: not raised


def test_an_id_above_the_highest_is_not_looked_for(store: Store) -> None:
    """The saving itself: a name ingest never stored, above the record, is not found."""
    put(store, b"one")
    above = codec.new_id()
    plant(store, "processed", above)
    assert store.ingest("common", CLIENT, above, 9, stage(store, b"again")) is True


@pytest.mark.parametrize("state", ["claimed", "delayed", "processed", "dead"])
def test_an_id_at_or_below_the_highest_is_looked_for(store: Store, state: str) -> None:
    below = codec.new_id()
    put(store, b"one")
    plant(store, state, below)
    staged = stage(store, b"again")
    assert store.ingest("common", CLIENT, below, 9, staged) is False
    assert not os.path.exists(staged)


def test_a_record_of_another_boot_is_trusted_up_to_its_ceiling(store: Store) -> None:
    """After a power failure ``high`` may be older than the directory entries it covers."""
    put(store, b"one")
    high, ceiling, _ = record(store)
    above = codec.new_id()
    assert high < above < ceiling
    plant(store, "processed", above)
    Path(store.path, "ingested", CLIENT).write_text(f"{high} {ceiling} another-boot")
    store.close()
    assert store.ingest("common", CLIENT, above, 9, stage(store, b"again")) is False
    assert store.ingest("common", CLIENT, codec.new_id(), 9, stage(store, b"next")) is True
    assert record(store)[:2] == [high, ceiling]  # under the ceiling: looked for, not raised
    beyond = f"{codec.id_time_ns(ceiling) + 1:016x}{above[16:]}"
    assert store.ingest("common", CLIENT, beyond, 9, stage(store, b"later")) is True
    assert record(store) == [beyond, f"{codec.id_time_ns(beyond) + CEILING_AHEAD_NS:016x}{'f' * 14}", boot_id()]


def test_a_damaged_record_makes_every_id_looked_for(store: Store) -> None:
    put(store, b"one")
    path = Path(store.path, "ingested", CLIENT)
    path.write_text("not a record")
    above = codec.new_id()
    plant(store, "processed", above)
    assert store.ingest("common", CLIENT, above, 9, stage(store, b"again")) is False
    assert put(store, b"two")
    assert path.read_text() == "not a record"


def test_a_store_without_ingested_looks_for_every_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", create=True)
    os.rmdir(tmp_path / "store" / "ingested")
    store = Store(tmp_path / "store")
    put(store, b"one")
    above = codec.new_id()
    plant(store, "processed", above)
    assert store.ingest("common", CLIENT, above, 9, stage(store, b"again")) is False
    assert not (tmp_path / "store" / "ingested").exists()


def test_ingest_waits_for_another_process_holding_the_record(store: Store) -> None:
    put(store, b"one")
    path = Path(store.path, "ingested", CLIENT)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "held\n"
    done = threading.Event()
    worker = threading.Thread(target=lambda: (put(store, b"two"), done.set()))
    worker.start()
    try:
        assert not done.wait(0.5)
        assert store.count_queued("common") == 1
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
        worker.join(10)
    assert done.is_set() and store.count_queued("common") == 2
