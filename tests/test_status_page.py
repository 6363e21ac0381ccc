"""The server's ``/status`` page in a real browser (headless Chromium, ``--dump-dom``): it
renders, shows each channel with the store's counts, the clients seen, and needs the token
when one is set."""

from __future__ import annotations

import base64
import html.parser
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from relaykit import relay_once, run_relay
from support import ServerProcess, start_server

import dropr
from dropr.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
TOKEN = "s3cret token"


def browse(url: str) -> str:
    """The DOM of ``url`` as headless Chromium builds it, in a profile of its own."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="dropr-chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Tables(html.parser.HTMLParser):
    """The rows of each table of a page, by the table's id, as lists of cell texts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[str] = []
        self.spans: dict[str, str] = {}
        self._table = self._span = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span":
            self._span = dict(attrs).get("id") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "span":
            self._span = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._span:
            self.spans[self._span] = self.spans.get(self._span, "") + data

    def rows(self, table: str) -> dict[str, dict[str, str]]:
        head, *rows = self.tables[table]
        return {row[0]: dict(zip(head, row, strict=True)) for row in rows}


def number(text: str) -> int:
    return int(text.replace(",", ""))


def fill(tmp_path: Path, server: ServerProcess) -> Store:
    """Messages in two channels (one with a name to escape) through a real relay, then a
    local consumer's work on them: processed, dead, claimed."""
    with dropr.Client(tmp_path / "spool") as client:
        for i in range(7):
            client.put(b"order %d" % i, peer=server.url, channel="orders", priority=i % 3)
        for i in range(3):
            client.put(b"odd %d" % i, peer=server.url, channel="<b>odd</b> & co")
    done = run_relay(tmp_path / "spool", "--once", "--no-supervise", "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    store = Store(server.store_dir, max_attempts=1)
    first, second, third = store.claim("orders", 3, lease=600)
    store.set_processed(first)
    store.set_failed(second, "no good")  # dead at once
    return store


def test_the_page_in_a_browser_shows_each_channel_with_the_stores_counts(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", token=TOKEN) as server:
        store = fill(tmp_path, server)
        page = browse(server.url.replace("://", f"://reader:{TOKEN.replace(' ', '%20')}@") + "status")
    parsed = Tables(page)
    assert "<title>dropr-server status</title>" in page and '<meta http-equiv="refresh" content="5">' in page
    assert not {"script", "img", "link", "iframe", "b"} & set(parsed.tags)  # nothing fetched, nothing injected
    channels = parsed.rows("channels")
    assert set(channels) == set(store.channels()) == {"orders", "<b>odd</b> & co"}
    for channel, row in channels.items():
        counts = store.counts(channel)
        assert {state: number(row[state]) for state in counts} == counts, channel
    assert channels["orders"]["queued"] == "4" and channels["orders"]["claimed"] == "1"
    assert channels["orders"]["dead"] == "1" and channels["orders"]["processed"] == "1"
    assert channels["orders"]["oldest queued"].endswith(" s")
    in_column = next(name for name in channels["orders"] if name.startswith("in ("))
    out_column = next(name for name in channels["orders"] if name.startswith("out ("))
    assert (channels["orders"][in_column], channels["orders"][out_column]) == ("7", "2")  # processed + dead
    assert (channels["<b>odd</b> & co"][in_column], channels["<b>odd</b> & co"][out_column]) == ("3", "0")
    assert (parsed.spans["in"], parsed.spans["out"]) == ("10", "2")
    clients = parsed.rows("clients")
    client_id = dropr.Client(tmp_path / "spool").spool.client_id
    assert set(clients) == {client_id}
    assert clients[client_id]["address"] == "127.0.0.1" and clients[client_id]["stored since the start"] == "10"
    assert clients[client_id]["last sent"].endswith(" s ago")


def test_with_a_token_the_page_needs_it(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", token=TOKEN) as server:
        fill(tmp_path, server)
        for credentials in ("", "reader:nope@", f"{TOKEN.replace(' ', '%20')}@"):  # a user name alone is no password
            page = browse(server.url.replace("://", f"://{credentials}") + "status")
            assert "<table" not in page and "orders" not in page, credentials  # the browser got the 401
        assert get(server, "status", f"Bearer {TOKEN}")[0] == 200
        assert get(server, "status", "Basic " + base64.b64encode(f"any:{TOKEN}".encode()).decode())[0] == 200
        for header in ("", "Bearer nope", "Basic " + base64.b64encode(b"any:nope").decode(), "Basic !!", "Digest x"):
            status, headers, _ = get(server, "status", header)
            assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="dropr"'), header
        assert get(server, "health", "")[0] == 200  # health and metrics stay open
        server.stop()
        log = server.stderr_text()
    assert "refused a request from 127.0.0.1: 401 the token is required" in log


def test_without_a_token_the_page_is_open_and_says_when_nothing_came(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        parsed = Tables(browse(server.url + "status"))
    assert parsed.tables["channels"][1] == ["no channel has received messages"]
    assert parsed.tables["clients"][1] == ["no client has sent since the start"]


def get(server: ServerProcess, path: str, authorization: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(server.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_page_shows_each_consumer_group_of_a_channel(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", token=TOKEN) as server:
        store = Store(server.store_dir, create=True)
        store.subscribe("jobs", "billing")
        store.subscribe("jobs", "<i>audit</i>")
        relay_once(tmp_path / "spool", server.url, "jobs", 5, "--token", TOKEN)
        store.set_processed(*store.claim("jobs", 3, lease=600, group="billing"))
        page = browse(server.url.replace("://", f"://reader:{TOKEN.replace(' ', '%20')}@") + "status")
    parsed = Tables(page)
    assert "i" not in parsed.tags
    rows = parsed.rows("channels")
    assert set(rows) == {"jobs", "jobs · group billing", "jobs · group <i>audit</i>"}
    for group in ("billing", "<i>audit</i>"):
        counts = store.counts("jobs", group=group)
        assert {state: number(rows[f"jobs · group {group}"][state]) for state in counts} == counts, group
    assert rows["jobs · group billing"]["processed"] == "3" and rows["jobs · group <i>audit</i>"]["queued"] == "5"
    assert rows["jobs"]["queued"] == "0"
    in_column = next(name for name in rows["jobs"] if name.startswith("in ("))
    assert [rows[name][in_column] for name in sorted(rows)] == ["5", "5", "5"]
    assert parsed.spans["in"] == "5"  # each message came in once, whatever its groups
