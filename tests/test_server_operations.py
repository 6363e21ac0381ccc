"""What an operator sees of dropr-server: the store's gauges in ``/metrics`` (checked against
the CLI's counts) and the log of refused requests."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from relaykit import relay_once, run_relay
from support import ServerProcess, start_server

import dropr
from dropr.server import refusals
from dropr.store import Store


def dropr_store(store: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dropr.cli.main", "store", str(store), *args],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout


def gauges(server: ServerProcess) -> dict[tuple[str, ...], float]:
    status, text = server.get("metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name.startswith("dropr_store_"):
            assert family.type == "gauge"
            for sample in family.samples:
                found[(sample.name, *sample.labels.values())] = sample.value
    return found


def test_the_store_gauges_agree_with_the_cli(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        assert gauges(server) == {}
        with dropr.Client(tmp_path / "spool") as client:
            for i in range(9):
                client.put(b"%d" % i, peer=server.url, channel="jobs", priority=i % 2)
            client.put(b"x", peer=server.url, channel="mail")
        assert run_relay(tmp_path / "spool", "--once", "--no-supervise").returncode == 0
        store = Store(server.store_dir, max_attempts=1)
        claimed = store.claim("jobs", 4, lease=600)
        store.set_processed(claimed[0])
        store.set_failed(claimed[1], "bad")
        Store(server.store_dir, max_attempts=5).set_failed(claimed[2], "later")
        before = time.time()
        found = gauges(server)
        after = time.time()
    for channel in ("jobs", "mail"):
        assert found["dropr_store_messages", channel, "queued"] == int(
            dropr_store(server.store_dir, "count-queued", channel)
        )
        processed = int(dropr_store(server.store_dir, "count-processed", channel))
        assert found["dropr_store_messages", channel, "processed"] == processed
        dead = json.loads(dropr_store(server.store_dir, "list-dead", channel, "--json"))
        assert found["dropr_store_messages", channel, "dead"] == len(dead)
    assert [found["dropr_store_messages", "jobs", state] for state in ("queued", "claimed", "delayed")] == [5, 1, 1]
    for channel in ("jobs", "mail"):  # the age of the earliest put time the CLI lists, at the scrape
        listed = json.loads(dropr_store(server.store_dir, "list-queued", channel, "--json"))
        oldest = min(datetime.datetime.fromisoformat(row["time"].replace("Z", "+00:00")).timestamp() for row in listed)
        age = found["dropr_store_oldest_queued_age_seconds", channel]
        assert before - oldest - 1e-5 <= age <= after - oldest + 1e-5, (channel, age)


def post_with(server: ServerProcess, token: str, client: str = "") -> int:
    fields = f'--x\r\nContent-Disposition: form-data; name="client"\r\n\r\n{client}\r\n--x--\r\n'
    request = urllib.request.Request(
        server.url,
        data=fields.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=x"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_refused_requests_are_logged_with_client_and_reason_not_one_line_each(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", token="right") as server:
        statuses = {post_with(server, "wrong") for _ in range(30)}
        assert post_with(server, "right", client="web-1") == 400  # neither a manifest nor a payload
        server.stop()
        log = server.stderr_text().splitlines()
    assert statuses == {401}
    assert [line.split(" INFO ", 1)[1] for line in log if "refused" in line] == [
        "refused a request from 127.0.0.1: 401 wrong token",
        "refused a request from 127.0.0.1 (client web-1): 400 field 'payload' is missing",
    ]


def test_refusals_beyond_the_first_in_a_window_are_summed_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(refusals, "WINDOW", 0.2)
    caplog.set_level(logging.INFO, "dropr.server")

    async def run() -> None:
        log = refusals.RefusalLog()
        for _ in range(50):
            log.refused("10.0.0.1", 401, "wrong token")
        log.refused("10.0.0.2", 401, "wrong token")
        log.refused("10.0.0.1", 413, "too large")
        log.refused("10.0.0.1", 400, "bad manifest")
        log.refused("10.0.0.1", 400, "no manifest")
        await asyncio.sleep(0.5)
        log.refused("10.0.0.1", 401, "wrong token")

    asyncio.run(run())
    assert [record.getMessage() for record in caplog.records] == [
        "refused a request from 10.0.0.1: 401 wrong token",
        "refused a request from 10.0.0.2: 401 wrong token",
        "refused a request from 10.0.0.1: 413 too large",
        "refused a request from 10.0.0.1: 400 bad manifest",
        "refused 49 more requests from 10.0.0.1 in 0.2 s: 401 wrong token",
        "refused 1 more requests from 10.0.0.1 in 0.2 s: 400 no manifest",
        "refused a request from 10.0.0.1: 401 wrong token",
    ]


def test_each_consumer_group_has_its_gauges(tmp_path: Path) -> None:
    with start_server(tmp_path / "store") as server:
        store = Store(server.store_dir, create=True)
        store.subscribe("jobs", "billing")
        store.subscribe("jobs", "audit")
        relay_once(tmp_path / "spool", server.url, "jobs", 6)
        store.set_processed(*store.claim("jobs", 2, lease=600, group="billing"))
        store.claim("jobs", 1, lease=600, group="audit")
        found = gauges(server)
    for group, (queued, claimed, processed) in {"billing": (4, 0, 2), "audit": (5, 1, 0)}.items():
        assert int(dropr_store(server.store_dir, "count-queued", "jobs", "--group", group)) == queued
        assert int(dropr_store(server.store_dir, "count-processed", "jobs", "--group", group)) == processed
        for state, count in {"queued": queued, "claimed": claimed, "processed": processed}.items():
            assert found["dropr_store_group_messages", "jobs", group, state] == count, (group, state)
        assert 0 <= found["dropr_store_group_oldest_queued_age_seconds", "jobs", group] < 600
    assert found["dropr_store_messages", "jobs", "queued"] == 0  # the groups hold the channel's messages


def test_refusals_of_the_consumer_api_are_logged_as_uploads_are(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", token="right") as server:
        for _ in range(5):
            with pytest.raises(dropr.StoreError, match="token"):
                dropr.RemoteStore(server.url, token="wrong").counts("jobs")
        with pytest.raises(dropr.StoreError, match="limit"):
            dropr.RemoteStore(server.url, token="right").claim("jobs", -1, lease=60)
        server.stop()
        log = server.stderr_text().splitlines()
    refused = [line.split(" INFO ", 1)[1] for line in log if "refused" in line]
    assert len(refused) == 2, log
    assert refused[0] == "refused a request from 127.0.0.1: 401 wrong token"
    assert refused[1].startswith("refused a request from 127.0.0.1: 400 ") and "limit" in refused[1]
