"""``dropr spool DIR resend --since TIME``: acknowledged messages kept in ``sent/`` go back into
the queue, to be sent again, as after a peer lost what it had acknowledged."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from relaykit import check_stored_once, queued, run_relay, server_on
from support import start_server

import dropr


def dropr_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropr.cli.main", *args], capture_output=True, text=True, check=False)


def put(spool: Path, peer: str, count: int) -> dict[str, bytes]:
    with dropr.Client(spool) as client:
        return {client.put(f"payload {i}".encode(), peer=peer, channel="orders"): f"payload {i}".encode()
                for i in range(count)}  # fmt: skip


def iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment).isoformat()


def test_resend_moves_what_was_acknowledged_since_a_time_back_into_the_queue(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "lost") as server:
        port = server.port
        earlier = put(spool, server.url, 5)
        assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
        time.sleep(0.1)
        cut = time.time()
        time.sleep(0.1)
        later = put(spool, server.url, 7)
        assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
    assert len(os.listdir(spool / "sent")) == 12 and queued(spool) == []
    done = dropr_cli("spool", str(spool), "resend", "--since", iso(cut))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "7\n"
    assert sorted(name[1:31] for name in queued(spool)) == sorted(later)
    assert len(os.listdir(spool / "sent")) == 5
    with server_on(tmp_path / "replacement", port):  # at the same address, without what was lost
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
    check_stored_once([tmp_path / "replacement"], later)
    check_stored_once([tmp_path / "lost"], {**earlier, **later})


def test_resent_messages_are_kept_once_by_a_server_that_has_them(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with start_server(tmp_path / "store") as server:
        sent = put(spool, server.url, 20)
        assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
        done = dropr_cli("spool", str(spool), "resend", "--since", iso(time.time() - 3600))
        assert done.stdout == "20\n" and len(queued(spool)) == 20
        done = run_relay(spool, "--once", "--no-supervise")
        assert done.returncode == 0, done.stderr
    assert queued(spool) == []
    check_stored_once([tmp_path / "store"], sent)


def test_resend_since_a_later_time_moves_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    put(spool, (tmp_path / "store").as_uri(), 3)
    assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
    done = dropr_cli("spool", str(spool), "resend", "--since", "2999-01-01T00:00:00+00:00")
    assert (done.returncode, done.stdout) == (0, "0\n")
    assert queued(spool) == [] and len(os.listdir(spool / "sent")) == 3


def test_resend_with_a_bad_time_or_spool_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    put(spool, (tmp_path / "store").as_uri(), 2)
    assert run_relay(spool, "--once", "--no-supervise", "--keep-sent", "60").returncode == 0
    for args, status, word in [
        (["--since", "yesterday"], 2, "ISO 8601"),
        ([], 2, "--since"),
    ]:
        done = dropr_cli("spool", str(spool), "resend", *args)
        assert done.returncode == status and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1 and word in done.stderr, done.stderr
    done = dropr_cli("spool", str(tmp_path / "missing"), "resend", "--since", "2020-01-01")
    assert done.returncode == 1 and done.stderr.startswith("dropr: no such spool")
    assert queued(spool) == [] and len(os.listdir(spool / "sent")) == 2
