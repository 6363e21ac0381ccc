"""dropr-server against real requests: a server process on 127.0.0.1, pycurl and curl."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import pycurl
import pytest
from support import ServerProcess, free_port, make_tls_cert, start_server

from dropr._codec_py import escape, new_id
from dropr._impl import moves
from dropr.server.receive import PART_HOLD_BYTES
from dropr.store.staging import HOLD_BYTES

ROOT = Path(__file__).resolve().parent.parent

Part = tuple[str, Any]  # (name, str for a text field | bytes for a file part)


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def acks(self) -> dict[str, list[str]]:
        assert self.status == 200, (self.status, self.body)
        assert self.headers["content-type"].startswith("application/msgpack")
        return msgpack.unpackb(self.body, raw=False)


def _perform(curl: pycurl.Curl, url: str, headers: Sequence[str | bytes], cafile: str | None) -> Reply:
    body = io.BytesIO()
    got: dict[str, str] = {}

    def header(line: bytes) -> None:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            got[name.strip().lower()] = value.strip()

    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.WRITEDATA, body)
    curl.setopt(pycurl.HEADERFUNCTION, header)
    curl.setopt(pycurl.HTTPHEADER, list(headers))
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.TIMEOUT, 30)
    if cafile:
        curl.setopt(pycurl.CAINFO, cafile)
    try:
        curl.perform()
        return Reply(curl.getinfo(pycurl.RESPONSE_CODE), got, body.getvalue())
    finally:
        curl.close()


def post(
    server: ServerProcess,
    parts: Sequence[Part],
    *,
    token: str | None = None,
    headers: Sequence[str | bytes] = (),
    path: str = "",
) -> Reply:
    """A real multipart POST built by libcurl; bytes values become file parts."""
    curl = pycurl.Curl()
    mime = pycurl.CurlMime(curl)
    for name, value in parts:
        if isinstance(value, bytes):
            mime.add(name=name, data=value, filename=name, content_type="application/octet-stream")
        else:
            mime.add_field(name, value.encode())
    curl.setopt(pycurl.MIMEPOST, mime)
    if token is not None:
        headers = [*headers, f"Authorization: Bearer {token}"]
    return _perform(curl, server.url + path, headers, server.cafile)


def post_raw(
    server: ServerProcess,
    body: bytes,
    content_type: str | bytes,
    *,
    chunked: bool = False,
    headers: Sequence[str | bytes] = (),
) -> Reply:
    """A POST of hand-made bytes (for malformed bodies), optionally chunked; a bytes
    ``content_type`` or header is sent byte for byte."""
    curl = pycurl.Curl()
    head = content_type if isinstance(content_type, bytes) else content_type.encode()
    sent: list[str | bytes] = [b"Content-Type: " + head, *headers]
    if chunked:
        curl.setopt(pycurl.POST, 1)
        curl.setopt(pycurl.READFUNCTION, io.BytesIO(body).read)
        sent.append("Transfer-Encoding: chunked")
    else:
        curl.setopt(pycurl.POSTFIELDS, body)
    return _perform(curl, server.url, sent, server.cafile)


class Msg(NamedTuple):
    id: str
    channel: str
    priority: int
    payload: bytes


def msg(payload: bytes, channel: str = "common", priority: int = 5) -> Msg:
    return Msg(new_id(), channel, priority, payload)


def batch(client: str, msgs: Sequence[Msg], **lies: Any) -> list[Part]:
    """The parts of a batch; ``lies`` maps an id to a dict overriding its manifest entry."""
    entries = []
    for m in msgs:
        entry = {"size": len(m.payload), "crc": zlib.crc32(m.payload)}
        entry.update(lies.get(m.id, {}))
        entries.append([m.id, m.channel, m.priority, m.id, entry["size"], entry["crc"]])
    manifest = msgpack.packb(entries)
    return [("client", client), ("manifest", manifest), *[(m.id, m.payload) for m in msgs]]


def queue_dir(store: Path, channel: str) -> Path:
    return store / "channels" / escape(channel) / "queue"


def payload(path: Path) -> bytes:
    """The payload of the stored message at ``path`` (a file of its own, or one of a file
    shared by several messages, read as consumers read it)."""
    data: bytes | None = moves.read_files([str(path)], 0)[0][0]
    assert data is not None, f"{path} is gone"
    return data


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (directories as empty markers)."""
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = b""
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def staged_files(store: Path) -> list[str]:
    return os.listdir(store / "tmp")


def metric(server: ServerProcess, name: str) -> float:
    status, text = server.get("metrics")
    assert status == 200
    match = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the shared server's store and nothing else dropr may touch."""
    return tmp_path_factory.mktemp("area")


@pytest.fixture(scope="module")
def server(area: Path) -> Iterator[ServerProcess]:
    with start_server(area / "store") as srv:
        yield srv


@pytest.fixture()
def store(server: ServerProcess) -> Path:
    return server.store_dir


# -- the happy path ---------------------------------------------------------------------


def test_batch_is_stored_under_its_names(server: ServerProcess, store: Path) -> None:
    msgs = [msg(b"first", "orders", 3), msg(b"", "orders", 0), msg(b"\x00\xff" * 500, "logs", 9)]
    acks = post(server, batch("host-a", msgs)).acks()
    assert acks == {m.id: ["stored", ""] for m in msgs}
    assert list(acks) == [m.id for m in msgs]
    for m in msgs:
        path = queue_dir(store, m.channel) / f"{m.priority}{m.id}+host-a"
        assert payload(path) == m.payload
    assert sorted(os.listdir(queue_dir(store, "orders"))) == sorted(f"{m.priority}{m.id}+host-a" for m in msgs[:2])
    assert staged_files(store) == []


def test_payloads_split_across_reads_are_stored_byte_for_byte(server: ServerProcess, store: Path) -> None:
    boundary_like = b"\r\n--" + b"-" * 40 + b"\r\n\r\n--\r" * 1000
    msgs = [
        msg(os.urandom(3 * 1024 * 1024 + 7), "bytes"),
        msg(boundary_like, "bytes"),
        msg(b"\r", "bytes"),
        msg(b"\r\n--", "bytes"),
    ]
    assert post(server, batch("host-b", msgs)).acks() == {m.id: ["stored", ""] for m in msgs}
    for m in msgs:
        assert payload(queue_dir(store, "bytes") / f"5{m.id}+host-b") == m.payload
    assert staged_files(store) == []


def test_any_path_takes_a_batch(server: ServerProcess, store: Path) -> None:
    m = msg(b"via a path")
    assert post(server, batch("host-p", [m]), path="some/peer/path").acks()[m.id][0] == "stored"


def test_resend_is_kept_once_and_acked_duplicate(server: ServerProcess, store: Path) -> None:
    msgs = [msg(b"once", "dups"), msg(b"twice", "dups")]
    assert post(server, batch("host-d", msgs[:1])).acks() == {msgs[0].id: ["stored", ""]}
    acks = post(server, batch("host-d", msgs)).acks()
    assert acks[msgs[0].id][0] == "duplicate"
    assert acks[msgs[1].id] == ["stored", ""]
    assert len(os.listdir(queue_dir(store, "dups"))) == 2
    # the same id from another client is another message
    other = post(server, batch("host-e", msgs[:1])).acks()
    assert other == {msgs[0].id: ["stored", ""]}
    assert len(os.listdir(queue_dir(store, "dups"))) == 3
    assert staged_files(store) == []


def test_lying_size_or_checksum_rejects_only_that_message(server: ServerProcess, store: Path) -> None:
    good, short, bent = msg(b"good", "liars"), msg(b"short", "liars"), msg(b"bent", "liars")
    lies = {short.id: {"size": 99}, bent.id: {"crc": zlib.crc32(b"other")}}
    acks = post(server, batch("host-l", [good, short, bent], **lies)).acks()
    assert acks[good.id] == ["stored", ""]
    assert acks[short.id][0] == "rejected" and "size" in acks[short.id][1]
    assert acks[bent.id][0] == "rejected" and "checksum" in acks[bent.id][1]
    assert os.listdir(queue_dir(store, "liars")) == [f"5{good.id}+host-l"]
    assert staged_files(store) == []


def test_entry_without_its_part_gets_retry(server: ServerProcess, store: Path) -> None:
    sent, missing = msg(b"sent", "partial"), msg(b"missing", "partial")
    parts = batch("host-r", [sent, missing])[:-1]
    acks = post(server, parts).acks()
    assert acks == {sent.id: ["stored", ""], missing.id: ["retry", "part not received"]}


def shared_part(
    client: str, msgs: Sequence[Msg], *, head: bytes = b"index", gap: bytes = b"", **lies: Any
) -> list[Part]:
    """A batch whose messages share one part, as a batch file travels: ``head`` first, then
    each payload after ``gap``; ``lies`` maps an id to a dict overriding its entry."""
    entries, data = [], bytearray(head)
    for m in msgs:
        data += gap
        entry = {"size": len(m.payload), "crc": zlib.crc32(m.payload), "offset": len(data)}
        entry.update(lies.get(m.id, {}))
        entries.append([m.id, m.channel, m.priority, "file", entry["size"], entry["crc"], entry["offset"]])
        data += m.payload
    return [("client", client), ("manifest", msgpack.packb(entries)), ("file", bytes(data))]


def test_messages_sharing_a_part_are_each_stored_from_their_bytes(server: ServerProcess, store: Path) -> None:
    msgs = [msg(b"first", "shared"), msg(b"", "shared"), msg(os.urandom(200_000), "shared", 2), msg(b"last", "shared")]
    acks = post(server, shared_part("host-s", msgs, gap=b"-between-")).acks()
    assert acks == {m.id: ["stored", ""] for m in msgs}
    for m in msgs:
        assert payload(queue_dir(store, "shared") / f"{m.priority}{m.id}+host-s") == m.payload
    assert staged_files(store) == []


def test_messages_kept_in_memory_while_they_stream_and_those_past_it_are_stored_whole(
    server: ServerProcess, store: Path
) -> None:
    """The server holds a small message's bytes until its chunk is read, then creates the
    files together; a message past HOLD_BYTES goes to disk as it streams."""
    sizes = [HOLD_BYTES, HOLD_BYTES + 1, 3, 300_000, 0, HOLD_BYTES - 1]
    msgs = [msg(os.urandom(size), "held") for size in sizes]
    for parts in (batch("host-h", msgs), shared_part("host-h2", msgs)):
        assert post(server, parts).acks() == {m.id: ["stored", ""] for m in msgs}
    for client in ("host-h", "host-h2"):
        for m in msgs:
            assert payload(queue_dir(store, "held") / f"{m.priority}{m.id}+{client}") == m.payload
    assert staged_files(store) == []


@pytest.mark.parametrize("head", [0, PART_HOLD_BYTES], ids=["read-whole", "streamed"])
def test_a_part_read_whole_or_streamed_gets_each_message_its_own_verdict(
    server: ServerProcess, store: Path, head: int
) -> None:
    """A part of small messages within PART_HOLD_BYTES is read into memory and split when it
    ends, a larger one followed message by message as it streams: the same verdicts either
    way, for bytes between messages and after the last, a lying checksum and a part that ends
    in the middle of a message and before another."""
    client = f"host-w{head}"
    good, between, bent, cut, absent = (msg(os.urandom(n), "whole") for n in (150, 0, 40, 90, 10))
    lies = {bent.id: {"crc": zlib.crc32(b"other")}}
    parts = shared_part(client, [good, between, bent, cut, absent], head=b"h" * head, gap=b"--gap--", **lies)
    name, data = parts[-1]
    assert isinstance(data, bytes)
    parts[-1] = (name, data[: -len(absent.payload) - len(b"--gap--") - 30])  # cut's last 30 bytes lost
    acks = post(server, parts).acks()
    assert acks[good.id] == acks[between.id] == ["stored", ""]
    assert acks[bent.id][0] == "rejected" and "checksum" in acks[bent.id][1]
    assert acks[cut.id] == ["rejected", "size mismatch: declared 90 bytes, received 60"]
    assert acks[absent.id] == ["rejected", "size mismatch: declared 10 bytes, received 0"]
    held = [name for name in os.listdir(queue_dir(store, "whole")) if name.endswith(f"+{client}")]
    assert sorted(held) == sorted(f"5{m.id}+{client}" for m in (good, between))
    for m in (good, between):
        assert payload(queue_dir(store, "whole") / f"5{m.id}+{client}") == m.payload
    trailing = shared_part(f"{client}-t", [good], head=b"h" * head)
    trailing[-1] = (trailing[-1][0], bytes(trailing[-1][1]) + b"after the last message")
    assert post(server, trailing).acks() == {good.id: ["stored", ""]}
    assert payload(queue_dir(store, "whole") / f"5{good.id}+{client}-t") == good.payload
    assert staged_files(store) == []


def test_a_message_of_a_shared_part_rejected_leaves_the_others_stored(tmp_path: Path) -> None:
    good, bent, big, cut = (msg(b"good", "parts"), msg(b"bent", "parts"), msg(b"x" * 64, "parts"), msg(b"cut", "parts"))
    lies = {bent.id: {"crc": 7}, cut.id: {"size": 10}}
    with start_server(tmp_path / "store", env={**os.environ, "DROPR_MAX_PAYLOAD": "32"}) as small:
        acks = post(small, shared_part("host-t", [good, bent, big, cut], **lies)).acks()
        assert acks[good.id] == ["stored", ""]
        assert acks[bent.id][0] == "rejected" and "checksum" in acks[bent.id][1]
        assert acks[big.id][0] == "rejected" and "larger than" in acks[big.id][1]
        assert acks[cut.id] == ["rejected", "size mismatch: declared 10 bytes, received 3"]
        assert os.listdir(queue_dir(small.store_dir, "parts")) == [f"5{good.id}+host-t"]
        assert staged_files(small.store_dir) == []


def test_a_delayed_message_is_stored_aside_until_it_is_due(server: ServerProcess, store: Path) -> None:
    later, due = msg(b"later", "waits"), msg(b"due already", "waits")
    entries = [
        [later.id, later.channel, 5, later.id, 5, zlib.crc32(b"later"), 0, 60_000],
        [due.id, due.channel, 5, due.id, 11, zlib.crc32(b"due already"), 0, 1],
    ]
    time.sleep(0.002)
    parts = [
        ("client", "host-w"),
        ("manifest", msgpack.packb(entries)),
        (later.id, later.payload),
        (due.id, due.payload),
    ]
    assert post(server, parts).acks() == {later.id: ["stored", ""], due.id: ["stored", ""]}
    delayed = store / "channels" / "waits" / "delayed" / f"5{later.id}+host-w"
    assert delayed.read_bytes() == b"later"
    assert abs(delayed.stat().st_mtime - (int(later.id[:16], 16) / 1e9 + 60)) < 0.01
    assert os.listdir(queue_dir(store, "waits")) == [f"5{due.id}+host-w"]
    assert post(server, parts).acks() == {
        later.id: ["duplicate", "already held"],
        due.id: ["duplicate", "already held"],
    }


def in_threads(send: Callable[[list[list[Msg]]], None], batches: list[list[Msg]], count: int) -> None:
    """Runs ``send`` on ``count`` threads at once, each with its share of ``batches``."""
    threads = [threading.Thread(target=send, args=(batches[t::count],)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_concurrent_batches_are_all_stored(server: ServerProcess, store: Path) -> None:
    batches = [[msg(f"{t}-{i}-{j}".encode(), "busy") for j in range(20)] for t in range(4) for i in range(5)]
    results: list[dict[str, list[str]]] = []

    def send(chunk: list[list[Msg]]) -> None:
        for msgs in chunk:
            results.append(post(server, batch("host-c", msgs)).acks())

    in_threads(send, batches, 4)
    assert len(results) == len(batches)
    assert all(ack == ["stored", ""] for acks in results for ack in acks.values())
    assert len(os.listdir(queue_dir(store, "busy"))) == 20 * len(batches)


def test_small_and_large_batches_at_once_each_message_stored_once(server: ServerProcess, store: Path) -> None:
    """Batches small enough to sync file by file, and larger ones that sync the file system,
    sent at once over several channels, each sent twice: all stored once, then duplicates."""
    batches = [
        [msg(f"{t}-{size}-{j}".encode(), f"mixed-{j % 2}") for j in range(size)]
        for t in range(3)
        for size in (1, 3, 40)
    ]
    results: list[tuple[list[Msg], dict[str, list[str]]]] = []

    def send(chunk: list[list[Msg]]) -> None:
        for msgs in chunk:
            results.append((msgs, post(server, batch("host-m", msgs)).acks()))

    for round_no in range(2):
        results.clear()
        in_threads(send, batches, 3)
        assert len(results) == len(batches)
        expected = "stored" if round_no == 0 else "duplicate"
        assert all(ack[0] == expected for _, acks in results for ack in acks.values())
    held = os.listdir(queue_dir(store, "mixed-0")) + os.listdir(queue_dir(store, "mixed-1"))
    assert sorted(held) == sorted(f"5{m.id}+host-m" for msgs in batches for m in msgs)
    assert staged_files(store) == []


# -- the manifest-less form -------------------------------------------------------------


def test_manifest_less_form_with_and_without_id(server: ServerProcess, store: Path) -> None:
    msg_id = new_id()
    fields = [("client", "curl-user"), ("id", msg_id), ("channel", "simple"), ("priority", "2")]
    reply = post(server, [*fields, ("payload", b"one")])
    assert reply.acks() == {msg_id: ["stored", ""]}
    assert post(server, [*fields, ("payload", b"one")]).acks() == {msg_id: ["duplicate", "already held"]}
    assert (queue_dir(store, "simple") / f"2{msg_id}+curl-user").read_bytes() == b"one"
    acks = post(server, [("client", "curl-user"), ("payload", b"default")]).acks()
    (assigned,) = acks
    assert acks[assigned] == ["stored", ""]
    assert (queue_dir(store, "common") / f"9{assigned}+curl-user").read_bytes() == b"default"


def test_json_acks_when_asked(server: ServerProcess) -> None:
    reply = post(server, [("client", "j"), ("payload", b"x")], headers=["Accept: application/json"])
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")
    assert list(json.loads(reply.body).values()) == [["stored", ""]]


def test_curl_example_of_protocol_md_works_verbatim(server: ServerProcess, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    assert curl, "the curl binary is needed for this test"
    text = (ROOT / "PROTOCOL.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    (example,) = [b for b in blocks if "curl " in b and "/v1/" not in b]  # the consumer API's: its own test
    assert "http://127.0.0.1:8080/" in example
    script = example.replace("http://127.0.0.1:8080/", server.url)
    out = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True, timeout=60, check=True)
    acks = json.loads(out.stdout)
    ((msg_id, ack),) = acks.items()
    assert ack == ["stored", ""]
    (path,) = (server.store_dir / "channels" / "common" / "queue").glob(f"?{msg_id}+me")
    assert path.read_bytes() == (tmp_path / "hello.txt").read_bytes()


# -- whole-request errors ---------------------------------------------------------------

BOUNDARY = "xYzZy"


def raw_body(*parts: tuple[str, bytes], end: bool = True) -> bytes:
    out = b""
    for name, data in parts:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def assert_refused(reply: Reply, status: int, words: str = "") -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("text/plain")
    assert words.lower() in reply.body.decode().lower()


def test_malformed_requests_get_400_and_change_nothing(server: ServerProcess, area: Path) -> None:
    m = msg(b"payload", "malformed")
    manifest = msgpack.packb([[m.id, m.channel, 5, m.id, 7, zlib.crc32(m.payload)]])
    form = f"multipart/form-data; boundary={BOUNDARY}"
    before = snapshot(area)
    cases = [
        (raw_body(("client", b"c")), "text/plain", "multipart/form-data"),
        (raw_body(("client", b"c")), "multipart/form-data", "boundary"),
        (b"no boundary in here at all", form, "malformed"),
        (
            raw_body(("client", b"c"), ("manifest", manifest), (m.id, m.payload), end=False),
            form,
            "malformed",
        ),
        (
            raw_body(("client", b"c"), ("manifest", manifest), ("stranger", b"x")),
            form,
            "unexpected part",
        ),
        (raw_body(("manifest", manifest), (m.id, m.payload)), form, "client"),
        (raw_body(("client", b"c"), ("client", b"d"), ("payload", b"x")), form, "twice"),
        (
            raw_body(("client", b"c"), ("manifest", manifest), ("channel", b"x")),
            form,
            "not allowed",
        ),
        (
            raw_body(("client", b"c"), ("payload", b"x"), ("payload", b"y")),
            form,
            "unexpected part",
        ),
        (raw_body(("client", b"c"), ("id", b"../x"), ("payload", b"x")), form, "id"),
        (raw_body(("client", b"c"), ("priority", b"10"), ("payload", b"x")), form, "priority"),
        (raw_body(("client", b"c"), ("channel", b"a\x00b"), ("payload", b"x")), form, "control"),
        (raw_body(("client", b"c"), ("channel", b""), ("payload", b"x")), form, "empty"),
        (raw_body(("client", b"c")), form, "payload"),
    ]
    for body, ctype, words in cases:
        assert_refused(post_raw(server, body, ctype), 400, words)
    assert snapshot(area) == before


FORM = f"multipart/form-data; boundary={BOUNDARY}".encode()


def requests_counted(server: ServerProcess, status: int) -> float:
    return metric(server, f'dropr_requests_total{{status="{status}"}}')


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_not_in_its_content_encoding_gets_400(server: ServerProcess, area: Path, encoding: str) -> None:
    before, counted, logged = snapshot(area), requests_counted(server, 400), len(server.stderr_text())
    body = raw_body(("client", b"c"), ("payload", b"not compressed"))
    reply = post_raw(server, body, FORM, headers=[f"Content-Encoding: {encoding}"])
    assert_refused(reply, 400, "content-encoding")
    assert reply.headers["connection"] == "close"  # what follows the body cannot be read either
    assert snapshot(area) == before
    assert requests_counted(server, 400) == counted + 1
    assert "Traceback" not in server.stderr_text()[logged:]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_taken(server: ServerProcess, store: Path, encoding: str) -> None:
    msg_id = new_id()
    body = raw_body(("client", b"zipped"), ("id", msg_id.encode()), ("channel", b"zipped"), ("payload", b"x" * 999))
    packer = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
    packed = packer.compress(body) + packer.flush()
    assert post_raw(server, packed, FORM, headers=[f"Content-Encoding: {encoding}"]).acks() == {msg_id: ["stored", ""]}
    assert (queue_dir(store, "zipped") / f"9{msg_id}+zipped").read_bytes() == b"x" * 999


NOT_UTF8_HEADERS = {
    "accept": (FORM, [b"Accept: application/js\xffon"], 200),
    "content-encoding": (FORM, [b"Content-Encoding: gz\xffip"], 200),
    "after-the-boundary": (FORM + b"\xff", [], 200),
    "media-type": (b"multipart/form-d\xffata; boundary=" + BOUNDARY.encode(), [], 400),
    "boundary": (b'multipart/form-data; boundary="xY\xffzZy"', [], 400),
    "expect": (FORM, [b"Expect: 100-continue\xff"], 417),
}


@pytest.mark.parametrize("case", list(NOT_UTF8_HEADERS))
def test_headers_that_are_not_utf8_get_an_answer_not_a_5xx(server: ServerProcess, area: Path, case: str) -> None:
    content_type, headers, status = NOT_UTF8_HEADERS[case]
    before, logged = snapshot(area), len(server.stderr_text())
    reply = post_raw(server, raw_body(("client", b"utf8"), ("payload", b"x")), content_type, headers=headers)
    assert reply.status == status, reply
    if status == 200:
        (msg_id,) = reply.acks()
        assert (queue_dir(server.store_dir, "common") / f"9{msg_id}+utf8").read_bytes() == b"x"
    else:
        assert snapshot(area) == before
    assert "Traceback" not in server.stderr_text()[logged:]


def test_a_client_gone_in_the_middle_of_its_body_is_a_refusal(server: ServerProcess, area: Path) -> None:
    """Nobody reads the answer, but it is a refusal like any other: counted, logged in one
    line, and nothing of the request stays."""
    before, counted = snapshot(area), requests_counted(server, 400)
    start = raw_body(("client", b"c"), ("payload", b"x" * 5000))[:-500]
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(start) + 10_000}\r\n\r\n"
    )
    logged = len(server.stderr_text())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + start)
        deadline = time.monotonic() + 30
        while not staged_files(server.store_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 30
    while requests_counted(server, 400) == counted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert requests_counted(server, 400) == counted + 1
    assert snapshot(area) == before
    assert "Traceback" not in server.stderr_text()[logged:]


BAD_CLIENTS = [b"", b"a\x00b", b"tab\there", b"x" * 256, b"\xff\xfe"]


@pytest.mark.parametrize("client", BAD_CLIENTS, ids=["empty", "nul", "tab", "long", "not-utf8"])
def test_bad_client_field_gets_400(server: ServerProcess, area: Path, client: bytes) -> None:
    before = snapshot(area)
    body = raw_body(("client", client), ("payload", b"x"))
    assert_refused(post_raw(server, body, f"multipart/form-data; boundary={BOUNDARY}"), 400, "client")
    assert snapshot(area) == before


GOOD_ID = "0" * 30


def entry(**change: Any) -> list[Any]:
    base = {"id": GOOD_ID, "channel": "c", "priority": 5, "part": GOOD_ID, "size": 1, "crc": 0}
    base.update(change)
    return list(base.values())


BAD_MANIFESTS = {
    "not-msgpack": b"\xc1",
    "truncated": msgpack.packb([entry()])[:-3],
    "trailing-bytes": msgpack.packb([entry()]) + b"\x01",
    "a-map": msgpack.packb({"id": GOOD_ID}),
    "entry-not-array": msgpack.packb(["x"]),
    "short-entry": msgpack.packb([entry()[:5]]),
    "long-entry": msgpack.packb([[*entry(), 0, 0, 1]]),
    "id-traversal": msgpack.packb([entry(id="../x", part="p")]),
    "id-upper": msgpack.packb([entry(id="A" * 30, part="p")]),
    "id-bytes": msgpack.packb([entry(id=b"0" * 30, part="p")], use_bin_type=True),
    "id-nul": msgpack.packb([entry(id="0" * 29 + "\x00", part="p")]),
    "priority-10": msgpack.packb([entry(priority=10)]),
    "priority-negative": msgpack.packb([entry(priority=-1)]),
    "priority-bool": msgpack.packb([entry(priority=True)]),
    "priority-text": msgpack.packb([entry(priority="5")]),
    "priority-float": msgpack.packb([entry(priority=5.0)]),
    "channel-empty": msgpack.packb([entry(channel="")]),
    "channel-long": msgpack.packb([entry(channel="c" * 256)]),
    "channel-nul": msgpack.packb([entry(channel="a\x00b")]),
    "channel-int": msgpack.packb([entry(channel=7)]),
    "size-negative": msgpack.packb([entry(size=-1)]),
    "crc-too-big": msgpack.packb([entry(crc=2**32)]),
    "part-reserved": msgpack.packb([entry(part="client")]),
    "part-empty": msgpack.packb([entry(part="")]),
    "part-array": msgpack.packb([entry(part=["p"])]),
    "part-map": msgpack.packb([entry(part={"p": 1})]),
    "duplicate-id": msgpack.packb([entry(part="a"), entry(part="b")]),
    "duplicate-part": msgpack.packb([entry(), entry(id="1" * 30)]),
    "offset-negative": msgpack.packb([[*entry(), -1]]),
    "delay-negative": msgpack.packb([[*entry(), 0, -5]]),
    "shared-part-without-offsets": msgpack.packb([entry(), entry(id="1" * 30, part=GOOD_ID)]),
    "overlapping-ranges": msgpack.packb([[*entry(size=2), 0], [*entry(id="1" * 30, part=GOOD_ID), 1]]),
}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_bad_manifest_gets_400_and_changes_nothing(server: ServerProcess, area: Path, name: str) -> None:
    before = snapshot(area)
    parts = [("client", "c"), ("manifest", BAD_MANIFESTS[name]), (GOOD_ID, b"x")]
    assert_refused(post(server, parts), 400, "manifest")
    assert snapshot(area) == before


TRAVERSAL_CHANNELS = ["../../etc", "..", ".", "a/b", "/abs", ".hidden", "~x", "%2E%2E"]


def test_hostile_names_never_write_outside_the_store(server: ServerProcess, area: Path) -> None:
    store = server.store_dir
    outside = {k: v for k, v in snapshot(area).items() if not k.startswith("store")}
    msgs = [msg(f"to {c}".encode(), c) for c in TRAVERSAL_CHANNELS]
    acks = post(server, batch("a/../b", msgs)).acks()
    acks.update(post(server, batch("../..", [msg(b"client dots")])).acks())
    acks.update(post(server, batch(".", [msg(b"client dot")])).acks())
    assert {status for status, _ in acks.values()} <= {"stored", "rejected"}
    after = snapshot(area)
    assert {k: v for k, v in after.items() if not k.startswith("store")} == outside
    for rel in after:
        real = os.path.realpath(area / rel)
        assert real.startswith(str(store) + os.sep) or real == str(store), rel
    assert staged_files(store) == []


# -- token, size, TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("guarded") / "store", token="s3cret") as srv:
        yield srv


@pytest.mark.parametrize("token", [None, "wrong", "s3cre", "s3cret2", ""])
def test_missing_or_wrong_token_gets_401(guarded: ServerProcess, token: str | None) -> None:
    before = snapshot(guarded.store_dir)
    reply = post(guarded, batch("t", [msg(b"x")]), token=token)
    assert_refused(reply, 401, "token")
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert snapshot(guarded.store_dir) == before


@pytest.mark.parametrize("given", [b"s3cret\xff", b"\xff\xfe", b"s3cr\xc3\xa9t"])
def test_a_token_that_is_not_utf8_or_ascii_gets_401(guarded: ServerProcess, given: bytes) -> None:
    before = snapshot(guarded.store_dir)
    reply = post(guarded, batch("t", [msg(b"x")]), headers=[b"Authorization: Bearer " + given])
    assert_refused(reply, 401, "token")
    assert snapshot(guarded.store_dir) == before


def test_right_token_is_accepted(guarded: ServerProcess) -> None:
    m = msg(b"with token")
    assert post(guarded, batch("t", [m]), token="s3cret").acks() == {m.id: ["stored", ""]}
    assert guarded.get("health") == (200, b"ok\n")


def test_large_body_with_wrong_token_is_refused_before_it_is_sent(guarded: ServerProcess) -> None:
    m = msg(os.urandom(2 * 1024 * 1024))
    reply = post(guarded, batch("t", [m]), token="nope", headers=["Expect: 100-continue"])
    assert_refused(reply, 401, "token")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("small") / "store"
    with start_server(store, extra_args=["--max-request-bytes", "65536"]) as srv:
        yield srv


def test_oversize_request_gets_413(small: ServerProcess) -> None:
    before = snapshot(small.store_dir)
    big = msg(os.urandom(70_000))
    assert_refused(post(small, batch("big", [big])), 413, "limit")
    body = raw_body(("client", b"big"), ("payload", os.urandom(70_000)))
    form = f"multipart/form-data; boundary={BOUNDARY}"
    assert_refused(post_raw(small, body, form, chunked=True), 413, "limit")
    lying = batch("big", [msg(b"tiny")])
    entries = msgpack.unpackb(lying[1][1])
    entries[0][4] = 70_000
    lying[1] = ("manifest", msgpack.packb(entries))
    assert_refused(post(small, lying), 413, "limit")
    assert snapshot(small.store_dir) == before
    m = msg(b"small enough")
    assert post(small, batch("big", [m])).acks() == {m.id: ["stored", ""]}


def test_tls_with_a_generated_certificate(tmp_path: Path) -> None:
    tls = make_tls_cert(tmp_path)
    with start_server(tmp_path / "store", tls=tls) as srv:
        assert srv.url.startswith("https://")
        m = msg(b"over tls", "secure")
        assert post(srv, batch("tls", [m])).acks() == {m.id: ["stored", ""]}
        assert (queue_dir(srv.store_dir, "secure") / f"5{m.id}+tls").read_bytes() == b"over tls"
        srv.cafile = None  # libcurl's default trust store does not know this certificate
        with pytest.raises(pycurl.error):
            post(srv, batch("tls", [msg(b"untrusted")]))


# -- health and metrics -----------------------------------------------------------------


def test_health_and_metrics(server: ServerProcess) -> None:
    assert server.get("health") == (200, b"ok\n")
    names = [
        "dropr_messages_received_total",
        "dropr_messages_stored_total",
        "dropr_messages_duplicate_total",
        "dropr_messages_rejected_total",
        "dropr_messages_retry_total",
        "dropr_bytes_received_total",
        'dropr_requests_total{status="200"}',
        'dropr_requests_total{status="400"}',
        "dropr_batch_seconds_count",
    ]
    before = {name: metric(server, name) for name in names}
    good, bad = msg(b"12345", "metered"), msg(b"678", "metered")
    post(server, batch("m", [good, bad], **{bad.id: {"crc": 1}})).acks()
    post(server, batch("m", [good])).acks()
    post(server, batch("m", [good])).acks()
    assert post(server, [("client", "")]).status == 400
    after = {name: metric(server, name) for name in names}
    delta = {name: after[name] - before[name] for name in names}
    assert delta == {
        "dropr_messages_received_total": 4,
        "dropr_messages_stored_total": 1,
        "dropr_messages_duplicate_total": 2,
        "dropr_messages_rejected_total": 1,
        "dropr_messages_retry_total": 0,
        "dropr_bytes_received_total": 5 + 3 + 5 + 5,
        'dropr_requests_total{status="200"}': 3,
        'dropr_requests_total{status="400"}': 1,
        "dropr_batch_seconds_count": 4,
    }
    _, text = server.get("metrics")
    assert b"# TYPE dropr_batch_seconds histogram" in text


# -- full disk --------------------------------------------------------------------------


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so the disk really fills up (needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_full_disk_gets_507_and_leaves_nothing_half_written(tiny_disk: Path) -> None:
    with start_server(tiny_disk / "store") as srv:
        filler = fill(tiny_disk)
        msgs = [msg(os.urandom(20_000), "full") for _ in range(3)]
        reply = post(srv, batch("disk", msgs))
        assert_refused(reply, 507, "full")
        assert staged_files(srv.store_dir) == []
        assert not (srv.store_dir / "channels" / "full").exists() or not any(
            (srv.store_dir / "channels" / "full").rglob("*+disk")
        )
        assert srv.get("health")[0] == 503
        filler.unlink()
        assert srv.get("health") == (200, b"ok\n")
        assert post(srv, batch("disk", msgs)).acks() == {m.id: ["stored", ""] for m in msgs}
        srv.stop()


# -- the command ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dropr.cli.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    store = str(tmp_path / "store")
    port = f"127.0.0.1:{free_port()}"
    cases = [
        (["--store", store, "--listen", "127.0.0.1"], "HOST:PORT"),
        (["--store", store, "--listen", "127.0.0.1:99999"], "HOST:PORT"),
        (["--store", store, "--listen", "192.0.2.1:80"], "cannot listen"),
        (
            [
                "--store",
                store,
                "--listen",
                port,
                "--tls-cert",
                str(tmp_path / "no.pem"),
                "--tls-key",
                str(a_file),
            ],
            "not found",
        ),
        (["--store", store, "--listen", port, "--tls-cert", str(a_file)], "together"),
        (
            [
                "--store",
                store,
                "--listen",
                port,
                "--tls-cert",
                str(a_file),
                "--tls-key",
                str(a_file),
            ],
            "certificate",
        ),
        (["--store", str(a_file), "--listen", port], "not a directory"),
        (["--store", store, "--listen", port, "--fsync", "sometimes"], "fsync"),
        (["--store", store, "--listen", port, "--max-request-bytes", "0"], "max-request-bytes"),
        (["--listen", port], "--store"),
    ]
    for args, words in cases:
        done = run_cli(*args)
        assert done.returncode != 0, args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and words in lines[0], (args, done.stderr)
    assert not os.path.exists(store)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_start_cleans_leftovers(tmp_path: Path, sig: int) -> None:
    store = tmp_path / "store"
    (store / "tmp").mkdir(parents=True)
    (store / "channels").mkdir()
    leftover = store / "tmp" / "upload-0123456789abcdef"
    leftover.write_bytes(b"half an upload")
    with start_server(store) as srv:
        assert not leftover.exists()
        assert "listening on http://127.0.0.1:" in srv.stderr_text()
        assert srv.stop(sig) == 0


def test_token_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "DROPR_TOKEN": "from-env"}
    with start_server(tmp_path / "store", env=env) as srv:
        assert post(srv, batch("e", [msg(b"x")])).status == 401
        m = msg(b"y")
        assert post(srv, batch("e", [m]), token="from-env").acks() == {m.id: ["stored", ""]}
