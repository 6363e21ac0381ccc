"""``dropr spool DIR status``: the queue per peer, and what a real relay says it is doing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relaykit import RelayProcess, stored_count, wait_until
from support import free_port, start_server

import dropr
from dropr.relay import status as relay_status
from dropr.spool import Spool

FAST_BACKOFF = "backoff_min_seconds = 0.05\nbackoff_max_seconds = 0.2\n"


def status(spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dropr.cli.main", "spool", str(spool), "status", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def status_json(spool: Path) -> dict[str, Any]:
    done = status(spool, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def by_peer(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {record["peer"]: record for record in report["peers"]}


def test_without_a_relay_the_queue_per_peer_and_that_none_runs(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with dropr.Client(spool) as client:
        first = client.put(b"x" * 10, peer="http://a.example/", priority=5)
        for priority in range(4):
            client.put(b"y" * 100, peer="http://a.example/", priority=priority)
        client.put(b"z" * 7, peer="file:///srv/" + "long/" * 30, channel="c")
    time.sleep(0.2)
    report = status_json(spool)
    assert report["relay"] is None
    peers = by_peer(report)
    assert set(peers) == {"http://a.example/", "file:///srv/" + "long/" * 30}
    a = peers["http://a.example/"]
    assert (a["queued"], a["bytes"]) == (5, 410) and "relay" not in a
    put_time = int(first[:16], 16) / 1e9
    assert 0.2 <= a["oldest_seconds"] <= time.time() - put_time + 0.01
    assert peers["file:///srv/" + "long/" * 30]["queued"] == 1
    done = status(spool)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "relay: not running"
    assert lines[1].split("\t") == ["peer", "queued", "bytes", "oldest_seconds", "state", "delivered", "failed",
                                    "retried", "inflight", "detail"]  # fmt: skip
    assert lines[3].split("\t")[:3] == ["http://a.example/", "5", "410"]
    assert lines[3].split("\t")[4:] == ["-"] * 6 and len(lines) == 4


def test_an_empty_spool_and_a_missing_one(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    assert status_json(tmp_path / "spool") == {"relay": None, "peers": []}
    done = status(tmp_path / "none")
    assert done.returncode == 1 and done.stderr.startswith("dropr: ") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_while_a_relay_runs_what_it_is_doing_per_peer(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = tmp_path / "relay.toml"
    config.write_text(FAST_BACKOFF)
    down = f"http://127.0.0.1:{free_port()}/"
    with start_server(tmp_path / "store") as server, dropr.Client(spool) as client:
        for i in range(30):
            client.put(b"up %d" % i, peer=server.url)
        for i in range(4):
            client.put(b"down %d" % i, peer=down)
        with RelayProcess(spool, "--no-supervise", "--config", str(config)) as relay:
            wait_until(lambda: stored_count(tmp_path / "store") == 30)

            def settled() -> dict[str, Any] | None:
                report = status_json(spool)
                peers = by_peer(report)
                if peers.get(server.url, {}).get("relay", {}).get("state") != "idle":
                    return None
                if peers.get(down, {}).get("relay", {}).get("retried", 0) < 8:
                    return None
                return report

            wait_until(settled)
            report = settled()
            assert report is not None
            assert report["relay"]["pid"] == relay.worker_pid() and report["relay"]["client"] == client.spool.client_id
            up, failing = by_peer(report)[server.url], by_peer(report)[down]
            assert (up["queued"], up["relay"]["delivered"], up["relay"]["failed"]) == (0, 30, 0)
            assert up["relay"]["last_batch_seconds"] > 0 and up["relay"]["inflight"] == 0
            assert failing["queued"] == 4 and failing["relay"]["state"] == "backing off"
            assert "curl error 7" in failing["relay"]["reason"] and failing["relay"]["failures"] >= 2
            assert failing["relay"]["until"] >= failing["relay"]["since"] and failing["relay"]["delivered"] == 0
            lines = status(spool).stdout.splitlines()
            assert lines[0].startswith(f"relay: running, pid {relay.worker_pid()}, client ")
            rows = {line.split("\t")[0]: line.split("\t") for line in lines[2:]}
            assert rows[server.url][1:9] == ["0", "0", "-", "idle", "30", "0", "0", "0"]
            assert rows[down][1:3] == ["4", "24"] and rows[down][4] == "backing off"
            assert "failures: " in rows[down][9] and "curl error 7" in rows[down][9]
            assert relay.stop() == 0
            log = relay.log().splitlines()
        about_down = [line for line in log if down in line]
        assert len(about_down) == 1 and "backing off" in about_down[0], log  # one line, not one per failure
        assert len(log) == 4, log  # relaying, backing off, stopping, stopped: none per message
        assert status_json(spool)["relay"] is None  # stopped: the lock is free
        assert by_peer(status_json(spool))[down]["queued"] == 4


def test_after_a_relay_is_killed_none_is_said_to_run(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with dropr.Client(spool) as client:
        client.put(b"x", peer=f"http://127.0.0.1:{free_port()}/")
    with RelayProcess(spool, "--no-supervise") as relay:
        wait_until(lambda: os.path.exists(relay_status.path(str(spool))))
        assert status_json(spool)["relay"]["pid"] == relay.proc.pid
        relay.stop(signal.SIGKILL)
    assert os.path.exists(relay_status.path(str(spool)))
    assert status_json(spool)["relay"] is None
    assert status(spool).stdout.startswith("relay: not running\n")


def test_a_peer_the_relay_cannot_send_to_is_shown_held(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with dropr.Client(spool) as client:
        for _ in range(3):
            client.put(b"x", peer="group:elsewhere")
    with RelayProcess(spool, "--no-supervise") as relay:

        def held() -> dict[str, Any] | None:
            record = by_peer(status_json(spool)).get("group:elsewhere", {})
            return record if record.get("relay", {}).get("state") == "held" else None

        wait_until(held)
        record = held()
        assert record is not None and record["queued"] == 3
        assert "not defined" in record["relay"]["reason"]
        row = next(line for line in status(spool).stdout.splitlines() if line.startswith("group:elsewhere\t"))
        assert row.split("\t")[4] == "held" and "not defined" in row.split("\t")[9]
        assert relay.stop() == 0


def test_a_batch_file_counts_as_its_messages(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with dropr.Client(spool) as client:
        client.put_many([b"a", b"bb", b"ccc"], peer="http://a.example/")
        client.put(b"d", peer="http://a.example/")
    files = [name for bucket in (spool / "queue").iterdir() for name in os.listdir(bucket)]
    assert len(files) == 2
    spooled = sum(int(name.split("+")[3], 16) for name in files)  # a batch file's size includes its index
    a = by_peer(status_json(spool))["http://a.example/"]
    assert (a["queued"], a["bytes"]) == (4, spooled)
