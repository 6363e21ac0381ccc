"""``dropr-relay --metrics HOST:PORT``: Prometheus text from a real relay, checked against
what ``dropr spool DIR status`` counts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from relaykit import RelayProcess, run_relay, stored_count, wait_until
from support import free_port, start_server

import dropr

FAST_BACKOFF = "backoff_min_seconds = 0.05\nbackoff_max_seconds = 0.2\n"
Samples = dict[tuple[str, str], float]


def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    """``{(sample name, peer): value}`` and the type of each family, from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()) if k != "peer")
            samples[key, sample.labels.get("peer", "")] = sample.value
    return samples, types


def spool_status(spool: Path) -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "dropr.cli.main", "spool", str(spool), "status", "--json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return {record["peer"]: record for record in json.loads(done.stdout)["peers"]}


def test_metrics_per_peer_agree_with_the_spool_status(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = tmp_path / "relay.toml"
    config.write_text(FAST_BACKOFF)
    down = f"http://127.0.0.1:{free_port()}/"
    port = free_port()
    with start_server(tmp_path / "store") as server, dropr.Client(spool) as client:
        for i in range(50):
            client.put(b"up %d" % i, peer=server.url)
        for i in range(7):
            client.put(b"down %02d" % i, peer=down)
        args = ("--no-supervise", "--config", str(config), "--batch-count", "10", "--metrics", f"127.0.0.1:{port}")
        with RelayProcess(spool, *args) as relay:
            wait_until(lambda: stored_count(tmp_path / "store") == 50)

            def settled() -> Samples | None:
                samples, _ = scrape(port)
                if samples.get(("dropr_relay_queued_messages", server.url)) != 0:
                    return None  # the next count of the queue is yet to come
                if samples.get(("dropr_relay_retried_total", down), 0) < 14:
                    return None
                return samples

            wait_until(settled, timeout=60, interval=0.2)
            samples, types = scrape(port)
            status = spool_status(spool)
            assert relay.proc.poll() is None
    assert types["dropr_relay_queued_messages"] == "gauge" and types["dropr_relay_batch_seconds"] == "histogram"
    assert types["dropr_relay_delivered"] == "counter"
    up_status, down_status = status[server.url], status[down]
    assert samples["dropr_relay_queued_messages", down] == down_status["queued"] == 7
    assert samples["dropr_relay_queued_bytes", down] == down_status["bytes"] == 7 * 7
    assert abs(samples["dropr_relay_oldest_message_age_seconds", down] - down_status["oldest_seconds"]) < 5
    assert samples["dropr_relay_queued_messages", server.url] == up_status["queued"] == 0
    assert ("dropr_relay_oldest_message_age_seconds", server.url) not in samples
    assert samples["dropr_relay_delivered_total", server.url] == up_status["relay"]["delivered"] == 50
    assert samples["dropr_relay_failed_total", server.url] == 0
    assert samples["dropr_relay_delivered_total", down] == 0
    assert samples["dropr_relay_retried_total", down] >= 14 and samples["dropr_relay_retried_total", server.url] == 0
    assert samples["dropr_relay_backing_off", down] == 1 and down_status["relay"]["state"] == "backing off"
    assert samples["dropr_relay_backing_off", server.url] == 0
    assert samples["dropr_relay_batch_seconds_count", server.url] == 5  # 50 messages, 10 a batch
    assert samples["dropr_relay_batch_seconds_bucket{le=+Inf}", server.url] == 5
    assert samples["dropr_relay_batch_seconds_count", down] >= 2
    assert 0 < samples["dropr_relay_batch_seconds_sum", server.url] < 60
    assert samples["dropr_relay_requests_in_flight", server.url] == 0


def test_metrics_on_an_address_in_use_is_one_line_and_no_restart(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_relay(tmp_path / "spool", "--metrics", f"127.0.0.1:{port}", timeout=30)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines == [f"dropr-relay: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]


def test_metrics_needs_host_and_port(tmp_path: Path) -> None:
    done = run_relay(tmp_path / "spool", "--metrics", "9108")
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr
    assert not (tmp_path / "spool").exists()
