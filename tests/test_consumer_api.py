"""The consumer API at the HTTP level, as curl speaks it: the raw and JSON answers, and every
kind of bad input — each a 4xx with a reason, nothing changed, the server healthy."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from storekit import put, tree
from support import ServerProcess, start_server

from dropr import StoreError
from dropr._impl import codec
from dropr.store import Store

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, ServerProcess]]:
    store = Store(tmp_path_factory.mktemp("api") / "store", create=True)
    with start_server(store.path, token=TOKEN) as server:
        yield store, server


def call(
    server: ServerProcess,
    path: str,
    params: dict[str, object] | None = None,
    *,
    body: bytes | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    token: str | None = TOKEN,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one request to the consumer API."""
    url = server.url.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    request = urllib.request.Request(url, data=body, method=method or ("POST" if body is not None else "GET"))
    request.add_header("Accept", accept)
    if body is not None:
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(server: ServerProcess, path: str, params: dict[str, object], **kwargs: object) -> tuple[int, bytes]:
    status, _, body = call(server, path, body=json.dumps(params).encode(), **kwargs)  # type: ignore[arg-type]
    return status, body


def test_the_raw_answer_for_curl(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    msg_id = put(store, b"raw payload\n", channel="raw/chan nel", priority=4)
    params = {"channel": "raw/chan nel", "lease": 30}
    status, headers, body = call(server, "/v1/claim", params, body=b"", accept="application/octet-stream")
    assert (status, body) == (200, b"raw payload\n")
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Dropr-Id"] == msg_id and headers["Dropr-Priority"] == "4"
    assert urllib.parse.unquote(headers["Dropr-Channel"]) == "raw/chan nel"
    receipt = headers["Dropr-Receipt"]
    status, _, body = call(server, "/v1/claim", params, body=b"", accept="application/octet-stream")
    assert (status, body) == (204, b"")
    status, answer = post(server, "/v1/processed", {"channel": "raw/chan nel", "receipts": [receipt]})
    assert status == 200 and json.loads(answer) == {receipt: ["processed", ""]}
    status, _, answer = call(server, "/v1/status", {"channel": "raw/chan nel", "id": msg_id})
    assert json.loads(answer) == {"id": msg_id, "status": "processed"}


def test_the_curl_examples_of_protocol_md_work_verbatim(served: tuple[Store, ServerProcess], tmp_path: Path) -> None:
    store, server = served
    msg_id = put(store, b"an order\n", channel="orders")
    text = (Path(__file__).parent.parent / "PROTOCOL.md").read_text()
    (example,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "/v1/" in b]
    assert "http://127.0.0.1:8080" in example and "Bearer TOKEN" in example
    script = example.replace("http://127.0.0.1:8080", server.url.rstrip("/")).replace("Bearer TOKEN", f"Bearer {TOKEN}")
    done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True, timeout=120, check=True)
    assert done.stdout.startswith(b"an order\n") and done.stderr == b""
    assert store.status("orders", msg_id) == "processed"
    assert store.groups("orders") == ["billing"]


def test_json_answers_and_a_msgpack_claim(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    sent = [put(store, b"%d" % i, channel="json") for i in range(3)]
    status, _, body = call(server, "/v1/claim", {"channel": "json", "limit": 5, "lease": 30}, body=b"", accept="*/*")
    claimed = msgpack.unpackb(body)
    assert status == 200 and [m["id"] for m in claimed] == sent
    assert [m["payload"] for m in claimed] == [b"0", b"1", b"2"]
    assert set(claimed[0]) == {"id", "client", "channel", "group", "priority", "time", "lease", "receipt", "payload"}
    status, answer = post(server, "/v1/failed", {"channel": "json", "receipts": [claimed[0]["receipt"]], "reason": "x"})
    assert status == 200 and json.loads(answer) == {claimed[0]["receipt"]: ["delayed", ""]}
    status, answer = post(server, "/v1/release", {"channel": "json", "receipts": [m["receipt"] for m in claimed[1:]]})
    assert status == 200 and {state for state, _ in json.loads(answer).values()} == {"queued"}
    status, _, body = call(server, "/v1/counts", {"channel": "json"})
    assert json.loads(body) == {"queued": 2, "claimed": 0, "delayed": 1, "processed": 0, "dead": 0}
    assert json.loads(call(server, "/v1/channels")[2])[:1] != []
    status, answer = post(server, "/v1/subscribe", {"channel": "json", "group": "g"})
    assert (status, json.loads(answer)) == (200, {"subscribed": True})
    assert json.loads(call(server, "/v1/groups", {"channel": "json"})[2]) == ["g"]
    assert json.loads(call(server, "/v1/dead", {"channel": "json", "group": "g"})[2]) == []
    status, answer = post(server, "/v1/unsubscribe", {"channel": "json", "group": "g"})
    assert (status, json.loads(answer)) == (200, {"unsubscribed": True})


def test_a_claim_answer_beyond_a_chunk_is_streamed(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    payloads = [os.urandom(700_000), b"small", os.urandom(900_000), os.urandom(600_000), os.urandom(500_000)]
    sent = [put(store, payload, channel="big") for payload in payloads]
    params = {"channel": "big", "limit": 1, "lease": 30}
    status, headers, body = call(server, "/v1/claim", params, body=b"", accept="application/msgpack")
    assert status == 200 and headers.get("Content-Length") == str(len(body))  # one chunk: not streamed
    [first] = msgpack.unpackb(body)
    params["limit"] = 10
    status, headers, body = call(server, "/v1/claim", params, body=b"", accept="application/msgpack")
    assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
    rest = msgpack.unpackb(body)
    assert [m["id"] for m in [first, *rest]] == sent
    assert [m["payload"] for m in [first, *rest]] == payloads


def test_names_of_dots_and_slashes_are_just_names(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    outside = sorted(p.name for p in Path(store.path).parent.iterdir())
    for channel in ("..", ".", "../../etc", "/", "a/./b", "%2e%2e"):
        msg_id = put(store, b"dots", channel=channel)
        status, _, body = call(server, "/v1/claim", {"channel": channel, "lease": 30}, body=b"", accept="*/*")
        assert status == 200 and [m["id"] for m in msgpack.unpackb(body)] == [msg_id]
        status, answer = post(server, "/v1/subscribe", {"channel": channel, "group": channel})
        assert status == 200
    assert sorted(p.name for p in Path(store.path).parent.iterdir()) == outside


def test_a_consumer_that_goes_away_loses_nothing(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    put(store, b"x" * 100_000, channel="gone")
    host, port = "127.0.0.1", server.port
    body = json.dumps({"channel": "gone", "lease": 1}).encode()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            b"POST /v1/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.recv(10)
    deadline = time.monotonic() + 60
    while store.count_queued("gone") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.count_queued("gone") == 1
    with socket.create_connection((host, port)) as sock:  # one that leaves during its long poll
        body = json.dumps({"channel": "gone-too", "lease": 30, "wait": 30}).encode()
        sock.sendall(
            b"POST /v1/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.5)
    time.sleep(0.5)
    put(store, b"y", channel="gone-too")
    time.sleep(0.5)
    assert store.count_queued("gone-too") == 1
    assert server.get("health")[0] == 200


LONG = "c" * 256
BAD_CLAIMS: list[tuple[dict[str, object], int]] = [
    ({"channel": "bad", "lease": 30, "limit": -1}, 400),
    ({"channel": "bad", "lease": 30, "limit": 1001}, 400),
    ({"channel": "bad", "lease": 30, "limit": 10**30}, 400),
    ({"channel": "bad", "lease": 30, "limit": "many"}, 400),
    ({"channel": "bad", "lease": 30, "limit": 1.5}, 400),
    ({"channel": "bad", "lease": 0}, 400),
    ({"channel": "bad", "lease": -3}, 400),
    ({"channel": "bad", "lease": 1e300}, 400),
    ({"channel": "bad", "lease": "nan"}, 400),
    ({"channel": "bad"}, 400),
    ({"channel": "bad", "lease": 30, "wait": -1}, 400),
    ({"channel": "bad", "lease": 30, "wait": 1e9}, 400),
    ({"channel": "", "lease": 30}, 400),
    ({"lease": 30}, 400),
    ({"channel": "a\0b", "lease": 30}, 400),
    ({"channel": "a\nb", "lease": 30}, 400),
    ({"channel": "\x1b[31m", "lease": 30}, 400),
    ({"channel": LONG, "lease": 30}, 400),
    ({"channel": 5, "lease": 30}, 400),
    ({"channel": "bad", "group": "", "lease": 30}, 400),
    ({"channel": "bad", "group": "g\0", "lease": 30}, 400),
    ({"channel": "bad", "group": "never-subscribed", "lease": 30}, 404),
]


@pytest.mark.parametrize(("params", "expected"), BAD_CLAIMS, ids=[str(p) for p, _ in BAD_CLAIMS])
def test_a_bad_claim_is_refused_and_changes_nothing(
    served: tuple[Store, ServerProcess], params: dict[str, object], expected: int
) -> None:
    store, server = served
    put(store, b"x", channel="bad")
    before = tree(store.path)
    status, _, body = call(server, "/v1/claim", body=json.dumps(params).encode(), accept="*/*")
    assert status == expected and body.strip() and b"\n" not in body.strip()
    assert tree(store.path) == before
    assert server.get("health")[0] == 200


def test_bad_receipts_are_refused_and_change_nothing(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    put(store, b"x", channel="receipts")
    put(store, b"y", channel="receipts")
    [mine] = store.claim("receipts", 1, 30)
    other = Store(store.path)
    [theirs] = other.claim("receipts", 1, 30)
    never = f"{mine.name[:-1]}q:{mine.lease_ns}"
    before = tree(store.path)
    for receipts, expected in (
        (["not a receipt"], 400),
        ([f"{mine.name}:-1"], 400),
        ([f"../../{mine.name}:{mine.lease_ns}"], 400),
        ([f"{mine.name}:{mine.lease_ns}x"], 400),
        ("one-string", 400),
        ([5], 400),
        ([never], 409),  # never claimed
        ([f"{theirs.name}:{mine.lease_ns}"], 409),  # claimed by someone else
        ([f"{mine.name}:{mine.lease_ns + 1}"], 409),
    ):
        for path in ("/v1/processed", "/v1/release", "/v1/failed"):
            status, body = post(server, path, {"channel": "receipts", "receipts": receipts, "reason": "r"})
            assert status == expected, (path, receipts, body)
        assert tree(store.path) == before
    status, body = post(server, "/v1/processed", {"channel": "receipts", "receipts": [f"{mine.name}:{mine.lease_ns}"]})
    assert status == 200
    with pytest.raises(StoreError, match="lease lost"):
        store.release(mine)  # processed through the server: the claim is gone
    status, body = post(
        server, "/v1/release", {"channel": "receipts", "receipts": [f"{theirs.name}:{theirs.lease_ns}"]}
    )
    assert status == 200


def test_bad_requests_of_every_route(served: tuple[Store, ServerProcess]) -> None:
    store, server = served
    put(store, b"x", channel="routes")
    before = tree(store.path)
    cases: list[tuple[str, dict[str, object], int]] = [
        ("/v1/status", {"channel": "routes", "id": "nope"}, 400),
        ("/v1/status", {"channel": "routes"}, 400),
        ("/v1/status", {"channel": "routes", "id": codec.new_id(), "group": "nobody"}, 404),
        ("/v1/counts", {}, 400),
        ("/v1/counts", {"channel": "routes", "group": "nobody"}, 404),
        ("/v1/dead", {"channel": "a\0"}, 400),
        ("/v1/groups", {"channel": ""}, 400),
    ]
    for path, params, expected in cases:
        status, _, body = call(server, path, params)
        assert status == expected, (path, params, body)
    posts: list[tuple[str, dict[str, object], int]] = [
        ("/v1/requeue", {"channel": "routes", "ids": [codec.new_id()]}, 404),
        ("/v1/requeue", {"channel": "routes", "ids": "x"}, 400),
        ("/v1/subscribe", {"channel": "routes"}, 400),
        ("/v1/subscribe", {"channel": "routes", "group": "\x7f"}, 400),
        ("/v1/unsubscribe", {"channel": "routes", "group": "nobody"}, 404),
        ("/v1/failed", {"channel": "routes", "receipts": []}, 400),  # no reason
    ]
    for path, params, expected in posts:
        status, body = post(server, path, params)
        assert status == expected, (path, params, body)
    for body, content_type in ((b"{not json", "application/json"), (b"[1]", "application/json"), (b"x", "text/plain")):
        status, _, _ = call(server, "/v1/claim", body=body, content_type=content_type)
        assert status in (400, 415)
    status, _, _ = call(
        server, "/v1/claim", {"channel": "routes", "lease": 30}, body=json.dumps({"channel": "x"}).encode()
    )
    assert status == 400  # a parameter given twice
    status, _, _ = call(server, "/v1/claim", {"channel": "routes", "lease": 30, "limit": 2}, body=b"",
                        accept="application/octet-stream")  # fmt: skip
    assert status == 400
    status, _, _ = call(server, "/v1/claim", {"channel": "routes", "lease": 30}, body=b"")  # JSON only: no payload
    assert status == 406
    for token in (None, "wrong"):
        status, headers, _ = call(server, "/v1/counts", {"channel": "routes"}, token=token)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(server, "/v1/claim")[0] == 405
    assert tree(store.path) == before
    assert server.get("health")[0] == 200
