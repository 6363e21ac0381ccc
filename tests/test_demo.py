"""The demo (``scripts/demo.py``) run as a user runs it: progress to the last message, clean
stops on Ctrl-C, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from relaykit import wait_until

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"
PROGRESS = re.compile(r" +[\d.]+ s  (putting |draining)  spooled +([\d,]+)  stored +([\d,]+)  \(")


class Demo:
    """``demo.py ARGS`` in a session of its own, as a terminal's foreground job."""

    def __init__(self, *args: str) -> None:
        self._out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, str(DEMO), *args], stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def output(self) -> str:
        self._out.seek(0)
        return self._out.read().decode("utf-8", "replace")

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()

    def work_dir(self) -> Path:
        match = re.search(r"  spool (\S+)/spool\n", self.output())
        assert match, self.output()
        return Path(match.group(1))

    def port(self) -> int:
        match = re.search(r"  peer  http://127.0.0.1:(\d+)/\n", self.output())
        assert match, self.output()
        return int(match.group(1))


def number(text: str) -> int:
    return int(text.replace(",", ""))


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def running_on(work: Path) -> list[str]:
    """The command lines of the processes that name ``work`` (the demo's server and relay)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if str(work) in command:
            found.append(command)
    return found


def test_the_demo_shows_progress_until_the_last_message_is_stored_and_cleans_up() -> None:
    with Demo("--seconds", "1", "--producers", "1", "--size", "50") as demo:
        assert demo.wait() == 0, demo.output()
        out = demo.output()
        work, port = demo.work_dir(), demo.port()
    assert "Traceback" not in out
    progress = [PROGRESS.match(line) for line in out.splitlines()]
    rows = [match.groups() for match in progress if match]
    phases = [phase for phase, _, _ in rows]
    assert rows and phases == sorted(phases, reverse=True)  # putting, then draining
    put = number(re.search(r"^put ([\d,]+) messages", out, re.M).group(1))  # type: ignore[union-attr]
    assert put > 0 and rows[-1][2] == f"{put:,}" and number(rows[-1][1]) == 0  # the last line: all stored
    assert f"stored {put:,} on the server" in out and "every message arrived, stored once." in out
    lines = out.splitlines()
    tail = lines[lines.index("every message arrived, stored once.") + 1 :]
    assert tail[0] == "stopping the relay and the server" and tail[1].startswith("removing ")
    assert re.fullmatch(r"removed [\d,]+ files", tail[-1])
    assert not work.exists() and nothing_listens(port) and running_on(work) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_demo_cleanly(sig: int) -> None:
    with Demo("--seconds", "60", "--producers", "1") as demo:
        wait_until(lambda: PROGRESS.search(demo.output()) is not None, timeout=60)
        work, port = demo.work_dir(), demo.port()
        os.killpg(demo.proc.pid, sig)  # as a terminal sends Ctrl-C: to the foreground group
        assert demo.wait(60) == 130
        out = demo.output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "demo: interrupted; stopping\nstopping the relay and the server\nremoving " in out
    assert not work.exists() and nothing_listens(port) and running_on(work) == []
