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

ROOT = Path(__file__).resolve().parent.parent
# The README's command where this venv is the one the scripts made (the script then only sees
# that its build is fresh); elsewhere the Python script it runs, so no test installs anything.
if (Path(sys.prefix) / ".dropr-test").is_file():
    COMMAND = [str(ROOT / "scripts" / "demo")]
else:
    COMMAND = [sys.executable, str(ROOT / "scripts" / "demo.py")]
IGNORING_SIGINT = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
"""What a shell's ``./scripts/demo &`` does: the demo starts with SIGINT ignored."""
PROGRESS = re.compile(r" +[\d.]+ s  (putting |draining)  spooled +([\d,]+)  stored +([\d,]+)  processed +([\d,]+)  \(")


class Demo:
    """``demo.py ARGS`` in a session of its own, as a terminal's foreground job."""

    def __init__(self, *args: str, wrapper: tuple[str, ...] = ()) -> None:
        self._out = tempfile.TemporaryFile()
        env = {**os.environ, "DROPR_VENV": sys.prefix}
        self.proc = subprocess.Popen([*wrapper, *COMMAND, *args], stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)  # fmt: skip

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


def left_running(demo: Demo, work: Path) -> list[str]:
    """The command lines of the processes still there of a demo that exited: its producers (in
    its session) and its server and relay (each in a session of its own, naming ``work``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        if str(work) in command or session == demo.proc.pid:
            found.append(command)
    return found


def test_the_demo_shows_progress_until_the_last_message_is_stored_and_processed_and_cleans_up() -> None:
    with Demo("--seconds", "1", "--producers", "1", "--size", "50") as demo:
        assert demo.wait() == 0, demo.output()
        out = demo.output()
        work, port = demo.work_dir(), demo.port()
    assert "Traceback" not in out
    progress = [PROGRESS.match(line) for line in out.splitlines()]
    rows = [match.groups() for match in progress if match]
    phases = [phase for phase, *_ in rows]
    assert rows and phases == sorted(phases, reverse=True)  # putting, then draining
    put = number(re.search(r"^put ([\d,]+) messages", out, re.M).group(1))  # type: ignore[union-attr]
    assert put > 0 and rows[-1][2:] == (f"{put:,}", f"{put:,}") and number(rows[-1][1]) == 0  # all stored, processed
    assert f"stored {put:,} on the server" in out and f"processed {put:,} by 2 consumers over HTTP" in out
    lines = out.splitlines()
    tail = lines[lines.index("every message arrived, stored once, processed once.") + 1 :]
    assert tail[:2] == ["stopping the relay and the server", f"removing {work}"]
    assert all(re.fullmatch(r"  [\d,]+ files removed", line) for line in tail[2:-1]), out
    assert re.fullmatch(r"removed [\d,]+ files", tail[-1])
    assert not work.exists() and nothing_listens(port) and left_running(demo, work) == []


STOPS = {
    "ctrl-c": (signal.SIGINT, True, ()),  # as a terminal sends it: to the foreground group
    "kill -INT": (signal.SIGINT, False, ()),
    "kill -INT of a background job": (signal.SIGINT, False, tuple(IGNORING_SIGINT)),
    "kill": (signal.SIGTERM, False, ()),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_ctrl_c_stops_the_demo_cleanly(how: str) -> None:
    sig, to_group, wrapper = STOPS[how]
    with Demo("--seconds", "60", "--producers", "1", wrapper=wrapper) as demo:
        wait_until(lambda: PROGRESS.search(demo.output()) is not None, timeout=120)
        work, port = demo.work_dir(), demo.port()
        if to_group:
            os.killpg(demo.proc.pid, sig)
        else:
            os.kill(demo.proc.pid, sig)
        assert demo.wait(60) == 130, demo.output()
        out = demo.output()
        assert not work.exists() and nothing_listens(port) and left_running(demo, work) == []
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    lines = out.splitlines()
    stopped = lines.index("demo: interrupted; stopping")
    assert all(PROGRESS.match(line) for line in lines[4 : stopped - 1]) and lines[stopped - 1] == "", out
    assert lines[stopped + 1 : stopped + 3] == ["stopping the relay and the server", f"removing {work}"]
    assert all(re.fullmatch(r"  [\d,]+ files removed", line) for line in lines[stopped + 3 : -1]), out
    assert re.fullmatch(r"removed [\d,]+ files", lines[-1]), out
