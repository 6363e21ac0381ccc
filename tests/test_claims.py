"""Several consumers on one channel: claims, leases, crashes, retries and dead letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from storekit import put
from support import soak

from dropr import StoreError
from dropr._impl import codec
from dropr.store import Message, Store
from dropr.store.claims import RetryPolicy

KIT = os.path.join(os.path.dirname(__file__), "storekit.py")
WAIT = 60.0


def eventually(get: Callable[[], list[Message]], timeout: float = WAIT) -> list[Message]:
    """Call ``get`` until it returns something (leases and retries end by themselves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = get()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("nothing came back in time")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True, retry_delay=0.2, max_attempts=3)


def names(messages: list[Message]) -> list[str]:
    return [m.name for m in messages]


def test_claims_hand_out_the_queue_in_order_once(store: Store) -> None:
    for i in range(10):
        put(store, b"%d" % i, priority=i % 2)
    expected = names(store.messages("common"))
    other = Store(store.path)
    first = store.claim("common", 4, 60)
    second = other.claim("common", 4, 60)
    assert names(first) + names(second) == expected[:8]
    assert all(m.path.endswith(os.path.join("claimed", m.name)) for m in first)
    assert names(store.messages("common")) == expected[8:]
    assert store.count_queued("common") == 2
    assert store.claim("common", 0, 60) == []
    assert names(other.claim("common", 10, 60)) == expected[8:]
    assert store.claim("common", 10, 60) == []
    assert store.claim("nothing", 10, 60) == []


def test_claim_checks_its_arguments(store: Store) -> None:
    put(store, b"x")
    for limit, lease in ((-1, 10), (True, 10), (1, 0), (1, -5), (1, float("nan"))):
        with pytest.raises(ValueError):
            store.claim("common", limit, lease)  # type: ignore[arg-type]
    assert store.count_queued("common") == 1


def test_an_expired_claim_goes_to_another_consumer(store: Store) -> None:
    put(store, b"x")
    [held] = store.claim("common", 1, 2.0)
    other = Store(store.path)
    assert other.claim("common", 1, 60) == []
    [again] = eventually(lambda: other.claim("common", 1, 60))
    assert again.name == held.name
    other.set_processed(again)
    store.set_processed(held)
    assert store.count_processed("common") == 1


def test_processing_a_claim_that_expired_still_takes_it_from_the_queue(store: Store) -> None:
    put(store, b"x")
    [held] = store.claim("common", 1, 0.2)
    eventually(lambda: store.messages("common"))
    store.set_processed(held)
    assert (store.count_queued("common"), store.count_processed("common")) == (0, 1)


def test_release_returns_a_claim_at_once(store: Store) -> None:
    put(store, b"x")
    [held] = store.claim("common", 1, 60)
    store.release(held)
    assert held.path.endswith(os.path.join("queue", held.name))
    assert names(Store(store.path).claim("common", 1, 60)) == [held.name]


def test_retry_delays_grow() -> None:
    policy = RetryPolicy(max_attempts=10, delay=10, max_delay=100)
    assert [policy.wait(n) for n in range(1, 7)] == [10, 20, 40, 80, 100, 100]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_a_failed_message_waits_then_comes_back_then_dies(store: Store) -> None:
    put(store, b"x")
    store = Store(store.path, retry_delay=1.0, max_attempts=3)
    failed_at = []
    for attempt in range(1, 4):
        [message] = eventually(lambda: store.claim("common", 1, 60))
        if failed_at:
            # Never back before its delay: 1 s after the first failure, 2 s after the second.
            assert time.time() - failed_at[-1] >= 2 ** (attempt - 2) - 0.001
        failed_at.append(time.time())
        store.set_failed(message, f"failure {attempt}\nwith detail")
        if attempt < 3:
            assert message.path.endswith(os.path.join("delayed", message.name))
            assert store.claim("common", 1, 60) == []
    assert store.claim("common", 1, 60) == []
    [dead] = store.dead_letters("common")
    assert dead.name == message.name and dead.read() == b"x"
    assert dead.attempts == 3
    assert dead.reasons == tuple(f"failure {n}\nwith detail" for n in (1, 2, 3))
    assert store.count_queued("common") == 0


def test_dead_letters_are_requeued_all_or_by_id(store: Store) -> None:
    ids = [put(store, b"%d" % i) for i in range(4)]
    dying = Store(store.path, max_attempts=1)
    for message in dying.claim("common", 4, 60):
        dying.set_failed(message, "no")
    assert [m.id for m in store.dead_letters("common")] == ids
    before = sorted(os.listdir(Path(store.path, "channels", "common", "dead")))
    with pytest.raises(StoreError, match="not a dead letter"):
        store.requeue_dead("common", [ids[0], "0" * 30])
    assert sorted(os.listdir(Path(store.path, "channels", "common", "dead"))) == before
    assert store.requeue_dead("common", [ids[1]]) == 1
    assert [m.id for m in store.messages("common")] == [ids[1]]
    assert store.requeue_dead("common") == 3
    assert [m.id for m in store.messages("common")] == ids
    assert store.dead_letters("common") == []
    [again] = dying.claim("common", 1, 60)
    dying.set_failed(again, "fresh start")
    assert store.dead_letters("common")[0].reasons == ("fresh start",)


def test_failure_records_are_json_and_go_with_the_wipe(store: Store) -> None:
    put(store, b"x")
    [message] = store.claim("common", 1, 60)
    store.set_failed(message, "once")
    record = Path(store.path, "channels", "common", "attempts", message.name)
    assert json.loads(record.read_bytes()) == {"attempts": 1, "reasons": ["once"]}
    [message] = eventually(lambda: store.claim("common", 1, 60))
    store.set_processed(message)
    assert store.wipe_processed(0) == 1
    assert not record.exists()


def test_set_failed_on_a_message_no_longer_held(store: Store) -> None:
    put(store, b"x")
    [message] = store.claim("common", 1, 60)
    store.set_processed(message)
    store.wipe_processed(0)
    with pytest.raises(StoreError, match="no longer held"):
        store.set_failed(message, "late")


def start_consumer(store: Store, out: Path, batch: int, lease: float, hold: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, KIT, store.path, "common", str(out), str(batch), str(lease)]
    return subprocess.Popen(args + (["hold"] if hold else []))


def test_a_killed_consumer_s_claims_go_to_another(store: Store, tmp_path: Path) -> None:
    for i in range(30):
        put(store, b"%d" % i)
    out = tmp_path / "held"
    proc = start_consumer(store, out, 10, 3.0, hold=True)
    try:
        deadline = time.monotonic() + WAIT
        while not (out.exists() and len(out.read_text().split()) == 10) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    held = out.read_text().split()
    assert len(held) == 10
    survivor = Store(store.path)
    rest = survivor.claim("common", 100, 60)
    assert len(rest) == 20 and not set(names(rest)) & set(held)
    back = eventually(lambda: survivor.claim("common", 100, 60))
    assert sorted(names(back)) == sorted(held)
    for message in rest + back:
        survivor.set_processed(message)
    assert survivor.count_processed("common") == 30
    assert os.listdir(Path(store.path, "channels", "common", "claimed")) == []


def four_consumers(store: Store, tmp_path: Path, count: int) -> None:
    """Four consumer processes on one channel while messages keep arriving: each message is
    processed by exactly one of them, and each one takes its messages in delivery order."""
    early = [put(store, b"m%d" % i) for i in range(count // 2)]
    outs = [tmp_path / f"consumer{n}" for n in range(4)]
    for out in outs:
        Path(str(out) + ".go-on").touch()
    procs = [start_consumer(store, out, 100, 300) for out in outs]
    try:
        late = [put(store, b"m%d" % i) for i in range(count // 2, count)]
        for out in outs:
            Path(str(out) + ".go-on").unlink()
        for proc in procs:
            assert proc.wait(timeout=600) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    taken = [out.read_text().split() for out in outs]
    for sequence in taken:
        assert sequence == sorted(sequence)
    everything = [name for sequence in taken for name in sequence]
    assert len(everything) == count
    assert sorted(codec.parse_store_name(name)[1] for name in everything) == sorted(early + late)
    assert store.count_processed("common") == count
    assert store.count_queued("common") == 0
    assert os.listdir(Path(store.path, "channels", "common", "claimed")) == []


def test_four_consumers_share_a_channel(store: Store, tmp_path: Path) -> None:
    four_consumers(store, tmp_path, 50_000)


@pytest.mark.slow
def test_four_consumers_share_a_long_channel(store: Store, tmp_path: Path) -> None:
    four_consumers(store, tmp_path, soak(200_000))
