"""The relay when things go wrong: a peer down, kill -9 of the relay or the server in the
middle of the work, wrong tokens, rejected and expired messages, a second relay, signals.

Real processes throughout (servers from ``support``, the relay as ``python -m
dropr.cli.relay``), real pycurl on 127.0.0.1, real files. Crash loops run a few rounds by
default; the ``slow`` soaks run a tenth of their full size, or the full size times
``$DROPR_SOAK`` when that is set.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dropr
from dropr.relay.http import JOIN_BELOW
from dropr.relay.supervisor import EXIT_LOCKED

sys.path.insert(0, os.path.dirname(__file__))
from relaykit import (
    RelayProcess,
    check_stored_once,
    kill_relays_then_drain,
    kill_servers_while_relaying,
    peer_for,
    queued,
    queued_path,
    relay_command,
    run_relay,
    server_on,
    stored_count,
    wait_until,
)
from support import free_port, make_tls_cert, soak, start_server

pytestmark = pytest.mark.timeout(600)

FAST_BACKOFF = "backoff_min_seconds = 0.05\nbackoff_max_seconds = 0.5\n"


def put(spool: Path, peer: str, count: int, channel: str = "common") -> dict[str, bytes]:
    client = dropr.Client(spool)
    sent = {}
    for i in range(count):
        payload = f"{peer} {i} ".encode() + os.urandom(random.randrange(1, 200))
        sent[client.put(payload, peer=peer, channel=channel, priority=i % 10)] = payload
    client.close()
    return sent


def fast_config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "relay.toml"
    path.write_text(FAST_BACKOFF + extra)
    return str(path)


def test_a_peer_down_waits_while_the_other_keeps_flowing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    down_url = f"http://127.0.0.1:{port}/"
    with start_server(tmp_path / "up") as up:
        sent = put(spool, up.url, 200)
        waiting = put(spool, down_url, 200)
        with RelayProcess(spool, "--no-supervise") as relay:
            wait_until(lambda: stored_count(tmp_path / "up") == 200)
            wait_until(lambda: "backing off" in relay.log())
            assert f"{down_url}: " in relay.log() and "curl error 7" in relay.log()
            wait_until(lambda: len(queued(spool)) == 200)
            sent.update(put(spool, up.url, 100))
            wait_until(lambda: stored_count(tmp_path / "up") == 300)
            wait_until(lambda: len(queued(spool)) == 200)
            assert all(down_url.replace(":", "%3A").replace("/", "%2F") in n for n in queued(spool))
            with server_on(tmp_path / "down", port):
                wait_until(lambda: stored_count(tmp_path / "down") == 200, timeout=60)
                wait_until(lambda: queued(spool) == [])
            assert "delivering again after" in relay.log()
            assert relay.stop() == 0
    check_stored_once([tmp_path / "up"], sent)
    check_stored_once([tmp_path / "down"], waiting)


def test_a_peer_queued_behind_another_peers_backlog_is_found_by_surveys(tmp_path: Path) -> None:
    """Peers queued before the relay started: scans from the head see only the backlog of a
    peer that is down (and then backs off for long); surveys, a bucket at a time, find the
    other peer behind it."""
    spool = tmp_path / "spool"
    down_url = f"http://127.0.0.1:{free_port()}/"
    config = tmp_path / "relay.toml"
    config.write_text("scan_limit = 50\nscan_limit_max = 100\nsurvey_bytes = 1\nbackoff_min_seconds = 60\n"
                      "backoff_max_seconds = 60\n")  # fmt: skip
    with dropr.Client(spool) as client:
        backlog = {client.put(os.urandom(20), peer=down_url, priority=0) for _ in range(600)}
    with start_server(tmp_path / "up") as up:
        behind = put(spool, up.url, 30)
        with RelayProcess(spool, "--no-supervise", "--config", str(config)) as relay:
            wait_until(lambda: stored_count(tmp_path / "up") == 30)
            assert "backing off" in relay.log()
            assert relay.stop() == 0
    assert {name[1:31] for name in queued(spool)} == backlog
    check_stored_once([tmp_path / "up"], behind)


def _kill_relay_rounds(tmp_path: Path, rounds: int, count: int) -> None:
    spool = tmp_path / "spool"
    store = tmp_path / "store"
    with start_server(store) as server:
        sent = put(spool, server.url, count)
        kill_relays_then_drain(spool, store, count, rounds)
    check_stored_once([store], sent)


def test_kill_9_of_the_relay_mid_batch_loses_nothing(tmp_path: Path) -> None:
    _kill_relay_rounds(tmp_path, rounds=3, count=1500)


@pytest.mark.slow
def test_kill_9_of_the_relay_soak(tmp_path: Path) -> None:
    _kill_relay_rounds(tmp_path, rounds=soak(50), count=soak(20_000))


def _kill_server_rounds(tmp_path: Path, rounds: int, count: int) -> None:
    spool = tmp_path / "spool"
    store = tmp_path / "store"
    port = free_port()
    sent = put(spool, f"http://127.0.0.1:{port}/", count)
    kill_servers_while_relaying(spool, store, port, count, rounds)
    check_stored_once([store], sent)


def test_kill_9_of_the_server_mid_upload_loses_nothing(tmp_path: Path) -> None:
    _kill_server_rounds(tmp_path, rounds=3, count=1500)


@pytest.mark.slow
def test_kill_9_of_the_server_soak(tmp_path: Path) -> None:
    _kill_server_rounds(tmp_path, rounds=soak(50), count=soak(20_000))


def test_a_killed_worker_is_restarted_by_the_supervisor(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store") as server, RelayProcess(spool) as relay:
        relay.wait_started()
        first = relay.worker_pid()
        assert first and first != relay.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: relay.worker_pid() not in (0, first), timeout=30)
        assert "killed by SIGKILL; restarting" in relay.log()
        sent = put(spool, server.url, 10)
        wait_until(lambda: stored_count(tmp_path / "store") == 10)
        assert relay.stop() == 0
        worker = relay.worker_pid()
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    check_stored_once([tmp_path / "store"], sent)


def test_a_wrong_token_leaves_messages_queued(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store", token="right") as server:
        sent = put(spool, server.url, 5)
        done = run_relay(
            spool,
            "--once",
            "--no-supervise",
            "--token",
            "wrong",
            "--config",
            fast_config(tmp_path),
            "--retry-for",
            "0.5",
        )
        assert done.returncode == 1
        assert "HTTP 401" in done.stderr
        assert len(queued(spool)) == 5 and stored_count(tmp_path / "store") == 0
        config = fast_config(tmp_path, f'[peers."{server.url}"]\ntoken = "right"\n')
        done = run_relay(spool, "--once", "--no-supervise", "--token", "wrong", "--config", config)
        assert done.returncode == 0, done.stderr
    check_stored_once([tmp_path / "store"], sent)


def test_the_token_comes_from_the_environment(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store", token="env-secret") as server:
        sent = put(spool, server.url, 3)
        env = dict(os.environ, DROPR_TOKEN="env-secret")
        done = run_relay(spool, "--once", env=env)
        assert done.returncode == 0, done.stderr
    check_stored_once([tmp_path / "store"], sent)


SPOILED = {
    "flipped": (lambda data: bytes(b ^ 0xFF for b in data), ("crc", "checksum")),
    "cut short": (lambda data: data[:-1], ("size", "bytes")),
}


@pytest.mark.parametrize("transport", ["http", "local"])
@pytest.mark.parametrize("spoiled", SPOILED)
def test_a_spoiled_spool_file_goes_to_failed_with_its_reason_alone(
    tmp_path: Path, transport: str, spoiled: str
) -> None:
    spoil, words = SPOILED[spoiled]
    spool = tmp_path / "spool"
    store = tmp_path / "store"
    with peer_for(transport, store) as peer:
        sent = put(spool, peer, 4)
        bad = queued(spool)[2]
        path = queued_path(spool, bad)
        path.write_bytes(spoil(path.read_bytes()))
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 1
        assert queued(spool) == []
        assert (spool / "failed" / bad).is_file()
        reason = (spool / "failed" / f"{bad}.reason").read_text().lower()
        assert any(word in reason for word in words), reason
        del sent[bad[1:31]]
        check_stored_once([store], sent)


def test_messages_small_and_large_and_batches_share_requests_each_stored_whole(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with peer_for("http", tmp_path / "store") as server_url:
        sent = {}
        with dropr.Client(spool) as client:
            for size in (0, 1, 200, JOIN_BELOW - 1, JOIN_BELOW, 3 * JOIN_BELOW, 150):
                payload = os.urandom(size)
                sent[client.put(payload, peer=server_url, priority=size % 10)] = payload
            payloads = [os.urandom(n) for n in (5, 0, 700)]
            sent.update(zip(client.put_many(payloads, peer=server_url), payloads, strict=True))
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
        assert queued(spool) == []
    check_stored_once([tmp_path / "store"], sent)


def test_expired_messages_go_to_failed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    put(spool, f"http://127.0.0.1:{free_port()}/", 3)
    time.sleep(0.1)
    done = run_relay(spool, "--once", "--no-supervise", "--max-age", "0.001")
    assert done.returncode == 1
    assert queued(spool) == []
    reasons = [p.read_text() for p in (spool / "failed").glob("*.reason")]
    assert len(reasons) == 3 and all(r.startswith("expired") for r in reasons)


def test_once_exits_non_zero_when_a_peer_is_down_and_names_what_is_still_queued(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = f"http://127.0.0.1:{free_port()}/"
    put(spool, down, 4)
    with start_server(tmp_path / "store") as server:
        sent = put(spool, server.url, 3)
        done = run_relay(spool, "--once", "--config", fast_config(tmp_path), "--retry-for", "1")
    assert done.returncode == 1
    assert f"{down}: " in done.stderr and "giving up after" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"relay stopped: 3 delivered, 0 failed; still queued: 4 for {down} (" in last, last
    assert "curl error 7" in last
    assert len(queued(spool)) == 4
    check_stored_once([tmp_path / "store"], sent)


def test_once_keeps_retrying_a_restarting_server_for_retry_for_seconds(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    sent = put(spool, f"http://127.0.0.1:{port}/", 20)
    relay = subprocess.Popen(
        relay_command(spool, "--once", "--no-supervise", "--config", fast_config(tmp_path), "--retry-for", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)  # the old --once gave up after three failures, ~0.3 s
    assert relay.poll() is None, "gave up while the server was restarting"
    with server_on(tmp_path / "store", port):
        _, stderr = relay.communicate(timeout=60)
    assert relay.returncode == 0, stderr
    assert "relay stopped: 20 delivered, 0 failed" in stderr.splitlines()[-1]
    check_stored_once([tmp_path / "store"], sent)


def test_a_second_relay_refuses_to_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with RelayProcess(spool, "--no-supervise") as first:
        first.wait_started()
        second = run_relay(spool)
        assert second.returncode == EXIT_LOCKED
        assert second.stderr == f"dropr-relay: another relay is running for {spool} (pid {first.proc.pid})\n"
        assert first.proc.poll() is None


def test_sigterm_and_sigint_exit_zero(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for sig in (signal.SIGTERM, signal.SIGINT):
        with RelayProcess(spool) as relay:
            relay.wait_started()
            assert relay.stop(sig) == 0, relay.log()
        with RelayProcess(spool, "--no-supervise") as relay:
            relay.wait_started()
            assert relay.stop(sig) == 0, relay.log()


def test_sigterm_finishes_the_batch_in_flight(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store") as server:
        sent = put(spool, server.url, 2000)
        with RelayProcess(spool, "--no-supervise", "--batch-count", "500", "--log-level", "debug") as relay:
            wait_until(lambda: " sent in " in relay.log() or stored_count(tmp_path / "store") > 0, interval=0.005)
            assert relay.stop() == 0
        left = queued(spool)
        held = stored_count(tmp_path / "store")
        # Whatever the server stored was acknowledged and left the queue: nothing twice.
        assert held + len(left) == 2000
    unsent = {name[1:31] for name in left}
    check_stored_once([tmp_path / "store"], {k: v for k, v in sent.items() if k not in unsent})


def test_a_put_wakes_the_idle_relay(tmp_path: Path) -> None:
    """Functional check of the inotify wake-up: the periodic rescan is set to a minute."""
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store") as server:
        put(spool, server.url, 1)
        with RelayProcess(spool, "--no-supervise", "--rescan", "60") as relay:
            wait_until(lambda: stored_count(tmp_path / "store") == 1)
            time.sleep(0.3)
            started = time.monotonic()
            put(spool, server.url, 1)
            wait_until(lambda: stored_count(tmp_path / "store") == 2, timeout=5)
            assert time.monotonic() - started < 5
            assert relay.stop() == 0


def test_https_peer_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = make_tls_cert(tmp_path)
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store", tls=(cert, key)) as server:
        sent = put(spool, server.url, 5)
        untrusted = run_relay(
            spool, "--once", "--no-supervise", "--config", fast_config(tmp_path), "--retry-for", "0.5"
        )
        assert untrusted.returncode == 1 and "curl error 60" in untrusted.stderr
        done = run_relay(spool, "--once", "--no-supervise", "--ca-file", cert)
        assert done.returncode == 0, done.stderr
    check_stored_once([tmp_path / "store"], sent)


def test_keep_sent_and_tmp_cleaning(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    put(spool, (tmp_path / "store").as_uri(), 4)
    names = queued(spool)
    old = spool / "tmp" / ("0" * 30)
    fresh = spool / "tmp" / ("1" * 30)
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    done = run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(spool / "sent")) == names
    assert not old.exists() and fresh.exists()
