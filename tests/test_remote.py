"""RemoteStore against a real ``dropr-server`` on 127.0.0.1: every method, the token, long
polls, several consumer processes (one killed), local and remote consumers together."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import CLIENT, put, tree
from support import ServerProcess, make_tls_cert, start_server

import dropr
from dropr import StoreError
from dropr._impl import codec
from dropr.remote import RemoteStore
from dropr.store import Store

TOKEN = "s3cret"
KIT = os.path.join(os.path.dirname(__file__), "storekit.py")
WAIT = 60.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", create=True, max_attempts=2, retry_delay=0.2)


@pytest.fixture
def server(store: Store) -> Iterator[ServerProcess]:
    with start_server(store.path, token=TOKEN) as server:
        yield server


@pytest.fixture
def remote(server: ServerProcess) -> Iterator[RemoteStore]:
    with dropr.RemoteStore(server.url, token=TOKEN) as remote:
        yield remote


def eventually(check: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("not in time")


def test_every_method(store: Store, remote: RemoteStore) -> None:
    assert remote.channels() == []
    assert remote.claim("common", 10, 30) == []  # nobody has put to it: nothing, as locally
    sent = [put(store, b"payload %d" % i, priority=i % 3) for i in range(6)]
    assert remote.channels() == ["common"]
    first = remote.claim("common", 4, 30)
    ordered = sorted(sent, key=lambda msg_id: (sent.index(msg_id) % 3, msg_id))
    assert [m.id for m in first] == ordered[:4]
    message = first[0]
    assert (message.client, message.channel, message.group) == (CLIENT, "common", None)
    assert message.priority == 0 and abs(message.time - codec.id_time_ns(message.id) / 1e9) < 1e-3
    assert message.lease is not None and time.time() + 25 < message.lease < time.time() + 31
    assert message.read() == b"payload %d" % sent.index(message.id)
    remote.set_processed(first[0], first[1])
    remote.set_processed(first[0])  # done already: harmless
    remote.release(first[2])
    remote.set_failed(first[3], "not now")
    states = {msg_id: remote.status("common", msg_id) for msg_id in ordered[:5]}
    assert states == {
        ordered[0]: "processed",
        ordered[1]: "processed",
        ordered[2]: "queued",
        ordered[3]: "delayed",
        ordered[4]: "queued",
    }
    assert remote.status("common", codec.new_id()) is None
    with pytest.raises(StoreError, match="lease lost"):
        remote.set_processed(first[2])
    assert remote.counts("common") == {"queued": 3, "claimed": 0, "delayed": 1, "processed": 2, "dead": 0}
    assert (remote.count_queued("common"), remote.count_processed("common")) == (3, 2)
    held = remote.claim("common", 10, 30)
    assert len(held) == 3 and remote.status("common", held[0].id) == "claimed"
    remote.set_failed(held[0], "broken\nbadly")
    remote.release(*held[1:])
    local = Store(store.path, max_attempts=1)
    [again] = local.claim("common", 1, 30)
    local.set_failed(again, "for good")
    assert remote.status("common", again.id) == "dead"
    [dead] = remote.dead_letters("common")
    assert (dead.id, dead.read()) == (again.id, b"payload %d" % sent.index(again.id))
    assert (dead.attempts, dead.reasons) == (1, ("for good",))
    with pytest.raises(StoreError, match="not a dead letter"):
        remote.requeue_dead("common", [codec.new_id()])
    assert remote.requeue_dead("common", [again.id]) == 1
    assert remote.status("common", again.id) == "queued"
    assert remote.groups("common") == []
    assert remote.subscribe("common", "g")
    assert not remote.subscribe("common", "g")
    assert remote.groups("common") == ["g"]
    [in_group] = remote.claim("common", 1, 30, group="g")
    assert in_group.group == "g"
    remote.set_processed(in_group)
    assert remote.status("common", in_group.id, group="g") == "processed"
    remote.unsubscribe("common", "g")
    assert remote.groups("common") == []
    with pytest.raises(StoreError, match="no group"):
        remote.claim("common", 1, 30, group="g")


def test_a_claim_answer_larger_than_one_read_is_whole_and_in_order(store: Store, remote: RemoteStore) -> None:
    from dropr.server.consume import CHUNK, READ_BATCH

    small = [put(store, b"small %d" % i, channel="many") for i in range(READ_BATCH + 300)]
    claimed = remote.claim("many", READ_BATCH + 300, 60)
    assert [m.id for m in claimed] == small
    assert [m.read() for m in claimed] == [b"small %d" % i for i in range(READ_BATCH + 300)]
    remote.set_processed(*claimed)
    assert store.count_processed("many") == READ_BATCH + 300
    big = [os.urandom(CHUNK // 2 + 1) for _ in range(5)]  # two to a read at most
    ids = [put(store, payload, channel="big") for payload in big]
    claimed = remote.claim("big", 10, 60)
    assert [(m.id, m.read()) for m in claimed] == list(zip(ids, big, strict=True))


def test_groups_over_the_network(store: Store, remote: RemoteStore) -> None:
    """Two groups each consume every message once, independently; the first takes over what
    waits in the channel's own queue; one subscribed later gets only later messages."""
    waiting = [put(store, b"early %d" % i, channel="orders") for i in range(5)]
    [held] = remote.claim("orders", 1, 30)
    assert remote.subscribe("orders", "billing")
    assert remote.counts("orders", group="billing")["queued"] == 4
    assert remote.status("orders", held.id, group="billing") == "claimed"
    assert remote.subscribe("orders", "shipping")
    later = [put(store, b"later %d" % i, channel="orders") for i in range(10)]
    assert remote.groups("orders") == ["billing", "shipping"]
    assert remote.counts("orders") == dict.fromkeys(("queued", "claimed", "delayed", "processed", "dead"), 0)
    billing = remote.claim("orders", 100, 30, group="billing")
    assert [m.id for m in billing] == waiting[1:] + later and {m.group for m in billing} == {"billing"}
    shipping = remote.claim("orders", 3, 30, group="shipping")
    remote.set_processed(*shipping)
    shipping += remote.claim("orders", 100, 30, group="shipping")
    assert [m.id for m in shipping] == later
    assert remote.claim("orders", 100, 30, group="billing") == []
    remote.set_failed(billing[0], "not yet")
    remote.set_processed(*billing[1:], *shipping[3:])
    assert remote.counts("orders", group="billing") == {
        "queued": 0, "claimed": 1, "delayed": 1, "processed": 13, "dead": 0,
    }  # fmt: skip
    assert remote.count_processed("orders", group="shipping") == 10
    assert remote.status("orders", waiting[1], group="billing") == "delayed"
    assert remote.status("orders", waiting[1], group="shipping") is None
    assert store.status("orders", later[0], group="shipping") == "processed"
    remote.unsubscribe("orders", "shipping")
    assert remote.groups("orders") == ["billing"]


def test_bad_input_is_a_store_error_and_changes_nothing(store: Store, server: ServerProcess) -> None:
    remote = RemoteStore(server.url, token=TOKEN)
    for payload in (b"x", b"y", b"z"):
        put(store, payload)
    [mine] = remote.claim("common", 1, 30)
    [theirs] = Store(store.path).claim("common", 1, 30)
    before = tree(store.path)
    bad_calls = [
        lambda: remote.claim("common", -1, 30),
        lambda: remote.claim("common", 10**6, 30),
        lambda: remote.claim("common", 1, 0),
        lambda: remote.claim("common", 1, 1e12),
        lambda: remote.claim("common", 1, 30, wait=-1),
        lambda: remote.claim("", 1, 30),
        lambda: remote.claim("a\0b", 1, 30),
        lambda: remote.claim("a\x1bb", 1, 30),
        lambda: remote.claim("common", 1, 30, group=""),
        lambda: remote.status("common", "not an id"),
        lambda: remote.counts("a\nb"),
        lambda: remote.subscribe("common", "g\0"),
    ]
    for call in bad_calls:
        with pytest.raises(StoreError) as caught:
            call()
        assert isinstance(caught.value, ValueError) and "HTTP 400" in str(caught.value)
    never = dropr.store.Message(
        mine.id, mine.client, "common", mine.priority, mine.time, mine.name[:-1] + "q", "", lease_ns=mine.lease_ns
    )
    foreign = dropr.store.Message(
        theirs.id, theirs.client, "common", theirs.priority, theirs.time, theirs.name, "", lease_ns=mine.lease_ns
    )
    listed = Store(store.path).messages("common")
    for message in (never, foreign):  # never claimed; claimed by someone else
        for settle in (remote.set_processed, remote.release, lambda m: remote.set_failed(m, "r")):
            with pytest.raises(StoreError, match="lease lost") as caught:
                settle(message)
            assert caught.value.errno == errno.ESTALE
    assert len(listed) == 1
    with pytest.raises(StoreError, match="not claimed"):
        remote.set_processed(*listed)
    with pytest.raises(StoreError, match="no group"):
        remote.claim("common", 1, 30, group="nobody")
    assert tree(store.path) == before
    assert remote.claim("never-put-to", 5, 30) == []  # consumers may start before producers
    assert remote.claim("never-put-to", 5, 30, wait=0.2) == []
    assert tree(store.path) == before and server.get("health")[0] == 200
    remote.set_processed(mine)


def test_a_lost_lease_is_a_store_error(store: Store, server: ServerProcess) -> None:
    remote = RemoteStore(server.url, token=TOKEN)
    put(store, b"x")
    [first] = remote.claim("common", 1, 0.3)
    time.sleep(0.5)
    [again] = remote.claim("common", 1, 30)  # the lease ran out: taken back, claimed anew
    assert again.id == first.id and again.lease_ns != first.lease_ns
    for settle in (remote.set_processed, remote.release, lambda m: remote.set_failed(m, "late")):
        with pytest.raises(StoreError, match="lease lost"):
            settle(first)
    assert store.status("common", first.id) == "claimed"
    remote.set_processed(again)
    assert store.status("common", first.id) == "processed"


def test_a_wrong_token_is_refused_and_changes_nothing(store: Store, server: ServerProcess) -> None:
    put(store, b"x")
    for token in (None, "wrong", TOKEN + "x"):
        bad = RemoteStore(server.url, token=token)
        with pytest.raises(StoreError, match="token") as caught:
            bad.claim("common", 1, 30)
        assert caught.value.errno == 13
        for call, args in ((bad.channels, ()), (bad.count_queued, ("common",)), (bad.subscribe, ("common", "g"))):
            with pytest.raises(StoreError, match="token"):
                call(*args)  # type: ignore[operator]
    assert store.counts("common")["queued"] == 1 and store.groups("common") == []


def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    from support import free_port

    remote = RemoteStore(f"http://127.0.0.1:{free_port()}/", timeout=2)
    with pytest.raises(StoreError, match="unreachable"):
        remote.claim("common", 1, 30)
    for url in ("ftp://x/", "127.0.0.1:80", ""):
        with pytest.raises(ValueError):
            RemoteStore(url)


def test_over_tls(tmp_path: Path, store: Store) -> None:
    cert, key = make_tls_cert(tmp_path)
    put(store, b"secret payload")
    with start_server(store.path, token=TOKEN, tls=(cert, key)) as server:
        remote = RemoteStore(server.url, token=TOKEN, ca_file=cert)
        [message] = remote.claim("common", 1, 30)
        assert message.read() == b"secret payload"
        remote.set_processed(message)
        with pytest.raises(StoreError):
            RemoteStore(server.url, token=TOKEN).channels()  # not a trusted certificate


def test_a_long_poll_gets_the_message_put_a_second_later(store: Store, server: ServerProcess) -> None:
    remote = RemoteStore(server.url, token=TOKEN)
    for how in ("upload", "local", "release"):
        result: list[dropr.store.Message] = []
        channel = f"poll-{how}"
        if how == "release":
            put(store, b"held", channel=channel)
            [held] = store.claim(channel, 1, 60)
        thread = threading.Thread(target=lambda r=result, c=channel: r.extend(remote.claim(c, 5, 30, wait=30)))
        thread.start()
        time.sleep(1)
        if how == "upload":  # through the server's own ingest
            msg_id = codec.new_id()
            post_batch(server.url, [(msg_id, channel, b"late")])
        elif how == "local":  # by another process's ingest: seen through inotify
            msg_id = put(Store(store.path), b"late", channel=channel)
        else:
            msg_id = held.id
            store.release(held)
        thread.join(WAIT)
        assert [m.id for m in result] == [msg_id]
    assert remote.claim("poll-upload", 5, 30, wait=0.5) == []


def post_batch(url: str, messages: list[tuple[str, str, bytes]]) -> None:
    """One multipart POST of ``(id, channel, payload)`` messages, as a relay sends it."""
    import io
    import zlib

    import msgpack
    import pycurl

    manifest = [[mid, channel, 9, mid, len(data), zlib.crc32(data)] for mid, channel, data in messages]
    curl = pycurl.Curl()
    mime = pycurl.CurlMime(curl)
    mime.add_field("client", b"host-a")
    mime.add(name="manifest", data=msgpack.packb(manifest), filename="manifest", content_type="application/msgpack")
    for mid, _, data in messages:
        mime.add(name=mid, data=data, filename=mid, content_type="application/octet-stream")
    body = io.BytesIO()
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.MIMEPOST, mime)
    curl.setopt(pycurl.WRITEDATA, body)
    curl.setopt(pycurl.HTTPHEADER, [f"Authorization: Bearer {TOKEN}"])
    curl.setopt(pycurl.TIMEOUT, 30)
    try:
        curl.perform()
        assert curl.getinfo(pycurl.RESPONSE_CODE) == 200, body.getvalue()
    finally:
        curl.close()


def start_remote(url: str, out: Path, batch: int, lease: float, hold: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, KIT, url, "common", str(out), str(batch), str(lease)]
    return subprocess.Popen(args + (["hold"] if hold else []), env={**os.environ, "DROPR_TOKEN": TOKEN})


def test_four_remote_consumers_and_a_killed_one(store: Store, server: ServerProcess, tmp_path: Path) -> None:
    """Four consumer processes over HTTP and one local one on one channel with 5,000
    messages: each processed exactly once. A fifth remote one is killed while holding
    claims: they return after the lease and go to the others."""
    count = 5000
    sent = [put(store, b"m%d" % i) for i in range(count // 2)]
    held_out = tmp_path / "killed"
    victim = start_remote(server.url, held_out, 50, 3.0, hold=True)
    try:
        eventually(lambda: held_out.exists() and len(held_out.read_text().split()) == 50)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    held = held_out.read_text().split()
    outs = [tmp_path / f"consumer{n}" for n in range(5)]
    for out in outs:
        Path(str(out) + ".go-on").touch()
    procs = [start_remote(server.url, out, 40, 300) for out in outs[:4]]
    procs.append(subprocess.Popen([sys.executable, KIT, store.path, "common", str(outs[4]), "40", "300"]))
    try:
        sent += [put(store, b"m%d" % i) for i in range(count // 2, count)]
        time.sleep(3.5)  # the killed one's lease has run out: its claims come back
        for out in outs:
            Path(str(out) + ".go-on").unlink()
        for proc in procs:
            assert proc.wait(timeout=600) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    taken = [out.read_text().split() for out in outs]
    everything = [name for sequence in taken for name in sequence]
    assert len(everything) == count
    assert sorted(codec.parse_store_name(name)[1] for name in everything) == sorted(sent)
    assert set(held) <= set(everything)
    assert store.counts("common") == {"queued": 0, "claimed": 0, "delayed": 0, "processed": count, "dead": 0}
