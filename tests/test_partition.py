"""A silent network partition: the relay and its server in two network namespaces joined by a
veth pair whose both ends then drop every packet, as a cut cable or a dead switch would — no
refused connection, no reset, nothing. The relay keeps queuing, loses nothing, and delivers
everything once within a few seconds of the heal.

The namespaces are the test's own (made here, removed in a ``finally``); it needs root and
iproute2 (``ip``, ``tc``), which ``.ci/run`` installs. The drop is the ``blackhole`` queueing
discipline, built into every kernel with traffic control (``netem`` is a module that minimal
kernels leave out), on both ends of the link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relaykit import check_stored_once, queued, stored_count, wait_until

import dropr

pytestmark = pytest.mark.timeout(300)

SERVER_IP, RELAY_IP = "198.18.0.1", "198.18.0.2"  # the benchmarking range (RFC 2544), only inside the namespaces
PORT = 8850
PEER = f"http://{SERVER_IP}:{PORT}/"


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Link:
    """Two namespaces, ``server`` and ``relay``, joined by a veth pair that can go silent."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.server, self.relay = f"dropr-s{tag}", f"dropr-r{tag}"
        self._ends = [(self.server, f"drs{tag}"), (self.relay, f"drr{tag}")]

    def make(self) -> None:
        (server, server_end), (relay, relay_end) = self._ends
        ip("netns", "add", server)
        ip("netns", "add", relay)
        ip("link", "add", server_end, "netns", server, "type", "veth", "peer", "name", relay_end, "netns", relay)
        for (ns, end), address in zip(self._ends, (SERVER_IP, RELAY_IP), strict=True):
            ip("-n", ns, "addr", "add", f"{address}/30", "dev", end)
            ip("-n", ns, "link", "set", end, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def cut(self) -> None:
        for ns, end in self._ends:
            subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", end, "root", "blackhole"], check=True)

    def heal(self) -> None:
        for ns, end in self._ends:
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", end, "root"], check=True)

    def remove(self) -> None:
        for ns, _ in self._ends:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def start(self, ns: str, *command: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, *command], stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )


@pytest.fixture()
def link() -> Iterator[Link]:
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail(
            "the partition test makes network namespaces: it needs root and iproute2 "
            f"(missing: {', '.join(missing) or 'root'}); .ci/run installs iproute2"
        )
    made = Link()
    try:
        made.make()
        yield made
    finally:
        made.remove()


def put(spool: Path, count: int, start: int) -> dict[str, bytes]:
    with dropr.Client(spool) as client:
        return {client.put(f"message {i}".encode(), peer=PEER, channel=f"c{i % 4}"): f"message {i}".encode()
                for i in range(start, start + count)}  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def test_a_silent_partition_loses_nothing_and_everything_flows_after_the_heal(link: Link, tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    relay_log, server_log = tmp_path / "relay.log", tmp_path / "server.log"
    config = tmp_path / "relay.toml"
    config.write_text(
        "timeout_seconds = 2.0\nconnect_timeout_seconds = 1.0\nbackoff_min_seconds = 0.1\nbackoff_max_seconds = 1.0\n"
    )
    server = link.start(link.server, "-m", "dropr.cli.server", "--store", str(store), "--listen", f"{SERVER_IP}:{PORT}",
                        log=server_log)  # fmt: skip
    relay = link.start(link.relay, "-m", "dropr.cli.relay", "--spool", str(spool), "--no-supervise",
                       "--config", str(config), "--batch-count", "100", log=relay_log)  # fmt: skip
    try:
        sent = put(spool, 300, 0)
        wait_until(lambda: stored_count(store) == 300, timeout=60)  # the link works
        sent.update(put(spool, 3000, 300))
        wait_until(lambda: stored_count(store) > 400, timeout=60, interval=0.005)
        link.cut()  # during the flow: a request may be in flight, its answer lost
        sent.update(put(spool, 1000, 3300))
        time.sleep(4.0)  # two request timeouts
        held = stored_count(store)
        assert queued(spool), "the flow was over before the cut"
        time.sleep(1.0)
        assert stored_count(store) == held, "messages went through a silent link"
        assert relay.poll() is None and server.poll() is None
        assert os.listdir(spool / "failed") == []
        log = relay_log.read_text()
        assert "curl error 28" in log, log  # timed out: silence, not a refused connection
        link.heal()
        wait_until(lambda: not queued(spool) and stored_count(store) == len(sent), timeout=20)
    finally:
        stop(relay)
        stop(server)
    assert relay.returncode == 0, relay_log.read_text()
    check_stored_once([store], sent)
    assert os.listdir(spool / "failed") == []
