"""The NATS JetStream peer against a real three-node ``nats-server`` cluster on 127.0.0.1.

``.ci/run`` installs ``nats-server`` (a Debian package) and the ``nats`` extra; without them
these tests fail rather than hide: a machine meant to run the suite has them.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest
from natskit import Cluster
from relaykit import RelayProcess, queued, queued_path, run_relay, wait_until
from support import make_tls_cert

import dropr
from dropr._impl import codec
from dropr.relay.config import PeerConfig
from dropr.relay.nats import NatsTransport, subject_token

pytestmark = pytest.mark.timeout(300)

CHANNELS = ["orders", "orders.eu", "a b", "ü/ñ", "50%", "..", "x" * 90]


def test_channels_become_one_subject_token() -> None:
    assert subject_token("orders") == "orders"
    assert subject_token("orders.eu") == "orders%2Eeu"
    assert subject_token("a b/ü") == "a%20b%2F%C3%BC"
    assert subject_token("a-b_c") == "a-b_c"
    assert all(set(subject_token(c)) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%")
               for c in CHANNELS)  # fmt: skip


def test_a_servers_answer_is_the_reason_over_a_connection_lost_after_it() -> None:
    """nats-py tries a server again after it refused the credentials; a reset of that later
    attempt must not hide the refusal from the operator."""
    transport = NatsTransport("nats://127.0.0.1:1", None, PeerConfig(), None, timeout=1, connect_timeout=1)  # type: ignore[arg-type]
    refused = nats.errors.Error("nats: 'Authorization Violation'")
    for exc in (
        ConnectionRefusedError(111, "refused"),
        refused,
        ConnectionResetError(104, "reset"),
        nats.errors.UnexpectedEOF(),
    ):
        asyncio.run(transport._noted(exc))
    assert transport._trouble is refused
    asyncio.run(transport._noted(nats.errors.SecureConnFailedError()))
    assert isinstance(transport._trouble, nats.errors.SecureConnFailedError)  # a newer answer replaces it


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "nats") as running:
        running.add_stream(replicas=3)
        yield running


def put(spool: Path, peer: str, count: int, seed: int = 3) -> dict[str, tuple[str, int, bytes]]:
    """``count`` messages over CHANNELS; ``{id: (channel, priority, payload)}``."""
    rng = random.Random(seed)
    sent = {}
    with dropr.Client(spool) as client:
        for i in range(count):
            channel, priority = rng.choice(CHANNELS), rng.randrange(10)
            payload = f"message {i} ".encode() + os.urandom(rng.randrange(0, 200))
            sent[client.put(payload, peer=peer, channel=channel, priority=priority)] = (channel, priority, payload)
    return sent


def check_stream_holds_once(
    cluster: Cluster, sent: dict[str, tuple[str, int, bytes]], client: str, prefix: str = "dropr."
) -> None:
    by_id: dict[str, list[object]] = {}
    for msg in cluster.messages():
        headers = msg.headers or {}
        msg_id = headers["Dropr-Id"]
        by_id.setdefault(msg_id, []).append(msg)
        channel, priority, payload = sent[msg_id]
        assert headers["Nats-Msg-Id"] == f"{client}:{msg_id}"
        assert headers["Dropr-Client"] == client
        assert headers["Dropr-Channel"] == channel
        assert headers["Dropr-Priority"] == str(priority)
        assert abs(float(headers["Dropr-Time"]) - codec.id_time_ns(msg_id) / 1e9) < 1e-5
        assert msg.subject == prefix + subject_token(channel)
        assert msg.data == payload
    assert sorted(by_id) == sorted(sent)
    assert all(len(copies) == 1 for copies in by_id.values())


def test_a_node_killed_mid_flow_loses_nothing_and_stores_each_message_once(cluster: Cluster, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sent = put(spool, cluster.url, 5000)
    client = dropr.Client(spool).spool.client_id
    with RelayProcess(spool, "--no-supervise", "--batch-count", "100") as relay:
        relay.wait_started()
        wait_until(lambda: len(queued(spool)) < 4700, timeout=60, interval=0.005)
        node = cluster.serving(f"dropr-relay {client}")
        assert node is not None, relay.log()
        cluster.kill(node)  # the node the relay publishes through, during the flow
        assert queued(spool), "the flow was over before the kill"
        wait_until(lambda: not queued(spool), timeout=120)
        assert relay.stop() == 0, relay.log()
    assert os.listdir(spool / "failed") == []
    check_stream_holds_once(cluster, sent, client)


def test_all_nodes_down_the_spool_keeps_everything_until_they_return(cluster: Cluster, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    cluster.kill_all()
    sent = put(spool, cluster.url, 300)
    with RelayProcess(spool, "--no-supervise") as relay:
        relay.wait_started()
        time.sleep(2)
        assert len(queued(spool)) == 300 and os.listdir(spool / "failed") == []
        cluster.start_all()
        cluster.wait_ready()
        wait_until(lambda: not queued(spool), timeout=90)
        assert "backing off" in relay.log()
    check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)


def test_no_stream_for_the_subject_keeps_the_messages_queued(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with Cluster(tmp_path / "nats") as cluster:
        sent = put(spool, cluster.url, 50)
        done = run_relay(spool, "--once", "--no-supervise", "--retry-for", "1")
        assert done.returncode != 0
        assert len(queued(spool)) == 50 and os.listdir(spool / "failed") == []
        assert "no JetStream stream" in done.stderr
        cluster.add_stream(replicas=3)
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
        check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)


def test_messages_sent_again_are_kept_once_by_their_message_id(cluster: Cluster, tmp_path: Path) -> None:
    """As after a power cut that lost what JetStream had acknowledged, or a relay that died
    between an acknowledgement and moving the files: kept in sent/, resent, stored once."""
    spool = tmp_path / "spool"
    sent = put(spool, cluster.url, 100)
    assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
    since = datetime.datetime.fromtimestamp(time.time() - 3600).isoformat()
    done = subprocess.run(
        [sys.executable, "-m", "dropr.cli.main", "spool", str(spool), "resend", "--since", since],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.stdout == "100\n" and len(queued(spool)) == 100, done.stderr
    done = run_relay(spool, "--once", "--no-supervise", "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    assert "{'duplicate': 100}" in done.stderr  # JetStream's answer for each, by Nats-Msg-Id
    assert not queued(spool)
    check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)


def test_credentials_and_a_subject_prefix_from_the_configuration(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with Cluster(tmp_path / "nats", size=1, user="dropr", password="s3cret") as cluster:
        cluster.add_stream(replicas=1, subjects=("mq.dropr.>",))
        sent = put(spool, cluster.url, 40)
        done = run_relay(spool, "--once", "--no-supervise", "--retry-for", "0.5")
        assert done.returncode == 1 and len(queued(spool)) == 40
        assert "uthorization" in done.stderr, done.stderr  # nats-server says "Authorization Violation"
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[peers."{cluster.url}"]\nuser = "dropr"\npassword = "s3cret"\nsubject_prefix = "mq.dropr."\n'
        )
        done = run_relay(spool, "--once", "--no-supervise", "--config", str(config))
        assert done.returncode == 0, done.stderr
        client = dropr.Client(spool).spool.client_id
        check_stream_holds_once(cluster, sent, client, prefix="mq.dropr.")


def test_a_channel_is_exact_in_the_subject_even_where_a_header_cannot_be(cluster: Cluster, tmp_path: Path) -> None:
    """NATS header values lose leading and trailing white space; the subject keeps every byte."""
    spool = tmp_path / "spool"
    with dropr.Client(spool) as client:
        client.put(b"padded", peer=cluster.url, channel=" padded ")
    assert run_relay(spool, "--once", "--no-supervise").returncode == 0
    (msg,) = cluster.messages()
    assert urllib.parse.unquote(msg.subject.split(".", 1)[1]) == " padded "
    assert msg.headers["Dropr-Channel"] == "padded" and msg.data == b"padded"


def test_without_nats_py_a_nats_peer_waits_with_one_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "path" / "nats"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named nats')\n")
    spool = tmp_path / "spool"
    put(spool, "nats://127.0.0.1:4222", 5)
    env = {k: v for k, v in os.environ.items() if k != "DROPR_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "path"), env.get("PYTHONPATH")]))
    with RelayProcess(spool, "--no-supervise", env=env) as relay:
        relay.wait_started()
        wait_until(lambda: "nats-py" in relay.log())
        time.sleep(1.0)
        assert relay.proc.poll() is None and len(queued(spool)) == 5
        assert relay.stop() == 0
        log = relay.log()
    lines = [line for line in log.splitlines() if "nats-py" in line]
    assert len(lines) == 1 and "pip install 'dropr[nats]'" in lines[0], log
    assert "Traceback" not in log and os.listdir(spool / "failed") == []


def test_a_payload_that_does_not_match_its_name_is_rejected_and_the_rest_delivered(
    cluster: Cluster, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    sent = put(spool, cluster.url, 20)
    bad = queued(spool)[3]
    path = queued_path(spool, bad)
    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    done = run_relay(spool, "--once", "--no-supervise")
    assert done.returncode == 1 and not queued(spool)
    assert (spool / "failed" / f"{bad}.reason").read_text().startswith("checksum mismatch")
    del sent[bad[1:31]]
    check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)


def test_batch_files_are_published_message_by_message_with_their_delay(cluster: Cluster, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sent = put(spool, cluster.url, 30)
    delays: dict[str, int] = {}
    with dropr.Client(spool) as client:
        for n, channel in enumerate(CHANNELS):
            payloads = [f"{channel} {i}".encode() * (i + 1) for i in range(1 + 40 * n % 97)]
            ids = client.put_many(payloads, peer=cluster.url, channel=channel, priority=n, delay=n * 1.5)
            sent.update({msg_id: (channel, n, payload) for msg_id, payload in zip(ids, payloads, strict=True)})
            delays.update(dict.fromkeys(ids, n * 1500))
    done = run_relay(spool, "--once", "--no-supervise", "--batch-count", "50")
    assert done.returncode == 0, done.stderr
    assert not queued(spool) and os.listdir(spool / "failed") == []
    check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)
    published = {msg.headers["Dropr-Id"]: (msg.headers or {}).get("Dropr-Delay") for msg in cluster.messages()}
    assert {msg_id: int(delay) for msg_id, delay in published.items() if delay} == {
        msg_id: delay for msg_id, delay in delays.items() if delay
    }


def test_tls_to_jetstream_with_the_peers_ca_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / "tls").mkdir()
    cert, key = make_tls_cert(tmp_path / "tls")
    with Cluster(tmp_path / "nats", size=1, tls=(cert, key)) as cluster:
        cluster.add_stream(replicas=1)
        sent = put(spool, cluster.url, 30)
        done = run_relay(spool, "--once", "--no-supervise", "--retry-for", "0.5")
        assert done.returncode == 1 and len(queued(spool)) == 30  # its certificate is no system CA's
        assert "certificate verify failed" in done.stderr, done.stderr
        config = tmp_path / "relay.toml"
        config.write_text(f'[peers."{cluster.url}"]\nca_file = "{cert}"\n')
        done = run_relay(spool, "--once", "--no-supervise", "--config", str(config))
        assert done.returncode == 0, done.stderr
        check_stream_holds_once(cluster, sent, dropr.Client(spool).spool.client_id)
