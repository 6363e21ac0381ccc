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
from dropr.store import claims as claims_module
from dropr.store.claims import Claims, RetryPolicy

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
    for late in (store.set_processed, store.release, lambda m: store.set_failed(m, "late")):
        with pytest.raises(StoreError, match="lease lost"):
            late(held)
    assert store.counts("common") == {"queued": 0, "claimed": 1, "delayed": 0, "processed": 0, "dead": 0}
    other.set_processed(again)
    other.set_processed(again)  # done already: harmless
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(held)
    assert store.count_processed("common") == 1


def test_a_claim_that_expired_and_went_back_is_lost_to_its_claimant(store: Store) -> None:
    put(store, b"x")
    [held] = store.claim("common", 1, 0.2)
    eventually(lambda: store.messages("common"))
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(held)
    assert (store.count_queued("common"), store.count_processed("common")) == (1, 0)
    [again] = store.claim("common", 1, 60)
    assert again.name == held.name and again.lease_ns != held.lease_ns
    with pytest.raises(StoreError, match="lease lost"):
        store.set_processed(held)
    store.set_processed(again)
    assert (store.count_queued("common"), store.count_processed("common")) == (0, 1)


def test_an_expired_claim_not_taken_back_is_still_its_claimant_s(store: Store) -> None:
    put(store, b"x")
    lazy = Store(store.path, sweep_interval=3600)
    [held] = lazy.claim("common", 1, 0.05)
    time.sleep(0.1)
    assert os.path.exists(held.path)
    lazy.set_processed(held)
    assert lazy.status("common", held.id) == "processed"


def test_a_sweep_that_found_a_claim_expired_leaves_the_claim_made_of_it_meanwhile(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweeps of a root take turns. Two processes sweeping at once both find a killed
    consumer's claim expired; one takes it back and claims it anew, and the other, a moment
    behind, must not then take that fresh claim back too: its claimant would lose it."""
    import threading

    put(store, b"x")
    [expired] = store.claim("common", 1, 0.05)
    time.sleep(0.1)
    other = Store(store.path)
    fresh: list[Message] = []
    utime = os.utime

    def about_to_take_it_back(*args: object, **kwargs: object) -> None:
        monkeypatch.setattr(os, "utime", utime)
        claiming = threading.Thread(target=lambda: fresh.extend(other.claim("common", 1, 60)))
        claiming.start()
        claiming.join(1.0)  # the other process's sweep and claim, unless it waits for this sweep
        utime(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "utime", about_to_take_it_back)
    Store(store.path).count_queued("common")  # a sweep
    monkeypatch.setattr(os, "utime", utime)
    eventually(lambda: fresh)
    assert names(fresh) == [expired.name]
    other.set_processed(*fresh)
    assert store.counts("common") == {"queued": 0, "claimed": 0, "delayed": 0, "processed": 1, "dead": 0}


def test_a_lease_is_the_claimed_file_s_mtime_in_nanoseconds(store: Store) -> None:
    put(store, b"x")
    before = time.time_ns()
    [held] = store.claim("common", 1, 30)
    assert held.lease_ns is not None and held.lease is not None
    assert before + 30 * 10**9 <= held.lease_ns <= time.time_ns() + 30 * 10**9
    assert os.stat(held.path).st_mtime_ns == held.lease_ns
    assert store.messages("common") == [] and Store(store.path).claim("common", 1, 30) == []


def test_release_returns_a_claim_at_once(store: Store) -> None:
    put(store, b"x")
    [held] = store.claim("common", 1, 60)
    store.release(held)
    assert held.path.endswith(os.path.join("queue", held.name))
    store.release(held)  # back already: harmless
    [again] = Store(store.path).claim("common", 1, 60)
    assert again.name == held.name
    for late in (store.release, store.set_processed, lambda m: store.set_failed(m, "late")):
        with pytest.raises(StoreError, match="lease lost"):
            late(held)
    assert store.status("common", held.id) == "claimed"


def test_several_messages_at_once_and_a_lost_one_among_them(store: Store) -> None:
    for i in range(6):
        put(store, b"%d" % i)
    first = store.claim("common", 3, 60)
    store.release(*first)
    second = store.claim("common", 6, 60)
    assert names(second)[:3] == names(first)
    with pytest.raises(StoreError, match=f"lease lost: {first[1].id} "):
        store.set_processed(second[0], first[1], *second[2:])
    assert store.count_processed("common") == 5
    assert store.status("common", first[1].id) == "claimed"
    store.set_processed(second[1])
    assert store.count_processed("common") == 6


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


def test_status_of_every_state_and_of_unknown_ids(store: Store) -> None:
    queued, claimed, delayed, processed, dead = (put(store, b"%d" % i) for i in range(5))
    by_id = {m.id: m for m in store.claim("common", 5, 60)}
    store.release(by_id[queued])
    store.set_failed(by_id[delayed], "later")
    store.set_processed(by_id[processed])
    Store(store.path, max_attempts=1).set_failed(by_id[dead], "never")
    expected = {queued: "queued", claimed: "claimed", delayed: "delayed", processed: "processed", dead: "dead"}
    assert {msg_id: store.status("common", msg_id) for msg_id in expected} == expected
    assert store.status("common", codec.new_id()) is None
    assert store.status("nothing", codec.new_id()) is None
    assert store.counts("common") == dict.fromkeys(("queued", "claimed", "delayed", "processed", "dead"), 1)
    for bad in ("", "not-an-id", queued.upper(), queued + "0"):
        with pytest.raises(ValueError):
            store.status("common", bad)
    with pytest.raises(StoreError, match="no group"):
        store.status("common", queued, group="nobody")


def test_a_claim_being_made_is_left_alone_then_returned(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claimant that died between its rename and setting its lease: the file's mtime is
    older than its ctime, which a sweeper reads as a claim being made, for a grace time."""
    import dropr.store.claims as claims

    put(store, b"x")
    [listed] = store.messages("common")
    os.rename(listed.path, Path(store.path, "channels", "common", "claimed", listed.name))
    assert store.messages("common") == []
    monkeypatch.setattr(claims, "GRACE", 0.3)
    [back] = eventually(lambda: store.messages("common"))
    assert back.name == listed.name


def waiting(store: Store, channel: str = "common", **kwargs: object) -> tuple[list[Message], Callable[[], None]]:
    """Start ``store.claim(channel, 10, 60, wait=30, **kwargs)`` on a thread; (its result once
    joined, join)."""
    import threading

    result: list[Message] = []
    thread = threading.Thread(target=lambda: result.extend(store.claim(channel, 10, 60, wait=30, **kwargs)))
    thread.start()
    time.sleep(0.3)
    return result, lambda: thread.join(WAIT)


def test_a_waiting_claim_gets_the_message_put_meanwhile(store: Store) -> None:
    result, join = waiting(store)
    msg_id = put(store, b"late")
    join()
    assert [m.id for m in result] == [msg_id]


def test_a_waiting_claim_on_a_channel_nobody_put_to_yet(store: Store) -> None:
    result, join = waiting(Store(store.path), channel="newcomer")
    msg_id = put(store, b"first", channel="newcomer")
    join()
    assert [m.id for m in result] == [msg_id]
    assert store.claim("never", 10, 60, wait=0.2) == []


@pytest.mark.parametrize("how", ["release", "retry", "expiry"])
def test_a_waiting_claim_gets_what_comes_back(store: Store, how: str) -> None:
    put(store, b"x")
    other = Store(store.path, retry_delay=0.5)
    [held] = other.claim("common", 1, 0.5 if how == "expiry" else 60)
    if how == "retry":
        other.set_failed(held, "once")
    result, join = waiting(Store(store.path))
    if how == "release":
        other.release(held)
    join()
    assert [m.name for m in result] == [held.name]


def test_a_waiting_claim_does_not_poll(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    takes = []
    real = Claims.take

    def counted(self: Claims, *args: object, **kwargs: object) -> object:
        takes.append(args)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Claims, "take", counted)
    put(store, b"x", channel="elsewhere")
    assert store.claim("common", 1, 60, wait=1.5) == []
    assert len(takes) <= 3


def test_claim_checks_wait(store: Store) -> None:
    put(store, b"x")
    for wait in (-1, float("nan"), float("inf"), 1e9, True, "1"):
        with pytest.raises(ValueError):
            store.claim("common", 1, 60, wait=wait)  # type: ignore[arg-type]
    for lease in (1e12, float("inf")):
        with pytest.raises(ValueError):
            store.claim("common", 1, lease)
    assert store.count_queued("common") == 1


def _racing_scan(monkeypatch: pytest.MonkeyPatch, first: list[str]) -> list[int]:
    """Make the store's first readdir pass return ``first`` (what a pass may see of names
    arriving during it), the later ones the directory as it is; the passes' windows."""
    real = claims_module.scan.scan
    windows: list[int] = []

    def scan(path: str, window: int) -> list[str]:
        windows.append(window)
        return first[:window] if len(windows) == 1 else real(path, window)

    monkeypatch.setattr(claims_module.scan, "scan", scan)
    return windows


def test_a_full_scan_window_filled_by_arrivals_still_finds_an_earlier_one_it_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    earlier, later, last = (f"9{codec.new_id()}+client" for _ in range(3))
    for name in (earlier, later, last):
        (queue / name).touch()
    passes = _racing_scan(monkeypatch, [later, last])  # arrived during the pass: the earlier missed
    assert claims_module.consistent_scan(str(queue), 2) == [earlier, later]
    assert len(passes) == 2


def test_a_scan_of_a_queue_unchanged_for_a_while_takes_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    names = sorted(f"9{codec.new_id()}+client" for _ in range(3))
    for name in names:
        (queue / name).touch()
    a_while_ago = time.time_ns() - 10 * claims_module._MTIME_TICK_NS
    os.utime(queue, ns=(a_while_ago, a_while_ago))
    passes = _racing_scan(monkeypatch, names)
    assert claims_module.consistent_scan(str(queue), 10) == names
    assert len(passes) == 1


def test_a_deeper_queue_is_scanned_in_a_wider_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    assert claims_module.scan_window(str(queue)) == claims_module.SCAN_WINDOW
    assert claims_module.scan_window(str(tmp_path / "gone")) == claims_module.SCAN_WINDOW
    names = sorted(f"5{codec.new_id()}+client" for _ in range(3000))
    for name in names:
        (queue / name).touch()
    monkeypatch.setattr(claims_module, "SCAN_WINDOW", 16)
    monkeypatch.setattr(claims_module, "MAX_SCAN_WINDOW", 10**6)
    wide = claims_module.scan_window(str(queue))
    assert 16 < wide <= len(names)  # a part of the queue, guessed from the directory's size
    monkeypatch.setattr(claims_module, "MAX_SCAN_WINDOW", 100)
    assert claims_module.scan_window(str(queue)) == 100
    (tmp_path / "claimed").mkdir()
    claimed = claims_module.claim(str(tmp_path), 10, time.time_ns() + 10**9, [])
    assert claimed.names == names[:10] and claimed.untried == names[10:100]  # the window's rest, for the next


def test_a_process_drops_other_roots_stale_scans_once_it_keeps_many(tmp_path: Path) -> None:
    """A deep queue's scan keeps thousands of names for the claims after it; those of roots
    nobody claims from any more must not stay in memory for good."""
    root = tmp_path / "root"
    (root / "queue").mkdir(parents=True)
    (root / "claimed").mkdir()
    for _ in range(20):
        (root / "queue" / f"5{codec.new_id()}+client").touch()
    claims = Claims(RetryPolicy(), sweep_interval=60, rescan_interval=60)
    stale = {str(tmp_path / f"gone{i}"): (time.time() - 1, 0, ["5" + "0" * 30 + "+c"]) for i in range(64)}
    claims._seen.update(stale)
    names, _ = claims.take(str(root), 5, 10**10)
    assert len(names) == 5
    assert list(claims._seen) == [str(root)] and len(claims._seen[str(root)][2]) == 15
