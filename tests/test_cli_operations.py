"""The commands as an operator meets them: ``--version``, help, a missing extra, start-up
failures that the relay's supervisor does not retry, syslog, and logs with the time on
every line. Real processes throughout."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from relaykit import run_relay
from support import start_server

import dropr
from dropr.cli._common import EXTRAS, LineFormatter
from dropr.relay.supervisor import EXIT_CRASH, EXIT_FAILED, ONCE_RESTARTS

COMMANDS = {"dropr": "dropr.cli.main", "dropr-relay": "dropr.cli.relay", "dropr-server": "dropr.cli.server"}
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} dropr-(relay|server)\[\d+\] (DEBUG|INFO|WARNING|ERROR) ")


def run(*command: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("program", COMMANDS)
def test_every_command_prints_the_package_version(program: str) -> None:
    done = run(sys.executable, "-m", COMMANDS[program], "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{program} {dropr.__version__}\n", "")
    assert importlib.metadata.version("dropr") == dropr.__version__


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and the parsers of its subcommands, theirs too."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


@pytest.mark.parametrize("program", COMMANDS)
def test_help_is_plain_words_with_every_default_shown(program: str) -> None:
    for parser in parsers(importlib.import_module(COMMANDS[program]).build_parser()):
        assert "``" not in parser.format_help(), parser.prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), parser.prog
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text, (parser.prog, action.dest)
            if action.option_strings and action.nargs != 0 and not action.required:
                assert "default" in text, (parser.prog, action.dest, text)


def test_help_shows_the_defaults_in_force() -> None:
    from dropr.cli import relay, server
    from dropr.relay.config import RelayConfig
    from dropr.server import DEFAULT_MAX_REQUEST

    relay_help = " ".join(relay.build_parser().format_help().split())
    assert f"messages per request (default: {RelayConfig.batch_count})" in relay_help
    assert f"payload bytes per request (default: {RelayConfig.batch_bytes})" in relay_help
    server_help = " ".join(server.build_parser().format_help().split())
    assert f"(default: {DEFAULT_MAX_REQUEST >> 20} MiB)" in server_help


# -- a missing extra -------------------------------------------------------------------------

WITHOUT = (
    "import sys; sys.modules.update(dict.fromkeys({hidden!r})); from {module} import main; sys.exit(main({args!r}))"
)


@pytest.mark.parametrize(
    ("program", "hidden", "extra", "args"),
    [
        *(("dropr-relay", name, "relay", []) for name in EXTRAS["relay"]),
        ("dropr-relay", "pycurl", "relay", ["--no-supervise"]),
        *(("dropr-server", name, "server", []) for name in EXTRAS["server"]),
    ],
)
def test_a_missing_extra_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, program: str, hidden: str, extra: str, args: list[str]
) -> None:
    """No traceback, no worker restarted again and again, nothing made."""
    if program == "dropr-relay":
        args = ["--spool", str(tmp_path / "spool"), *args]
    else:
        args = ["--store", str(tmp_path / "store"), "--listen", "127.0.0.1:0", *args]
    code = WITHOUT.format(hidden=[hidden], module=COMMANDS[program], args=args)
    done = run(sys.executable, "-c", code, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{program}: {hidden} is not installed: pip install 'dropr[{extra}]'\n"
    assert list(tmp_path.iterdir()) == []


def test_each_extra_names_the_modules_its_packages_bring() -> None:
    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    requires = importlib.metadata.requires("dropr") or []
    provided = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        wanted = {normal(re.split(r"[<>=;\[ ]", line)[0]) for line in requires if f'extra == "{extra}"' in line}
        given = {normal(dist) for module in modules for dist in provided.get(module, [])}
        assert given == wanted, extra


# -- start-up failures and the supervisor ----------------------------------------------------

SUPERVISE = """
import sys
from dropr.relay.supervisor import supervise
sys.exit(supervise(sys.argv[2:], once=sys.argv[1] == "once"))
"""
WORKER = "import sys; open(sys.argv[1], 'a').write('started\\n'); sys.exit(int(sys.argv[2]))"


@pytest.mark.parametrize("status", [1, 2, 3])
def test_a_worker_that_fails_for_good_is_not_restarted(tmp_path: Path, status: int) -> None:
    starts = tmp_path / "starts"
    done = run(sys.executable, "-c", SUPERVISE, "run", sys.executable, "-c", WORKER, starts, str(status), timeout=30)
    assert done.returncode == status
    assert starts.read_text() == "started\n"
    assert "restarting" not in done.stderr


def test_a_crashing_worker_is_restarted(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    done = run(sys.executable, "-c", SUPERVISE, "once", sys.executable, "-c", WORKER, starts, str(EXIT_CRASH))
    assert done.returncode == EXIT_FAILED
    assert starts.read_text() == "started\n" * (ONCE_RESTARTS + 1)
    assert done.stderr.count("restarting in") == ONCE_RESTARTS


@pytest.mark.parametrize("case", ["spool is a file", "spool under a file", "configuration missing"])
def test_a_relay_that_cannot_start_says_so_once_and_exits(tmp_path: Path, case: str) -> None:
    (tmp_path / "file").write_text("x")
    if case == "configuration missing":
        done = run_relay(tmp_path / "spool", "--config", str(tmp_path / "none.toml"), timeout=30)
    else:
        done = run_relay(tmp_path / "file" if case == "spool is a file" else tmp_path / "file" / "spool", timeout=30)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("dropr-relay: "), done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


# -- where the logs go -----------------------------------------------------------------------


def test_syslog_without_a_socket_there_is_one_error_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-log"
    done = run_relay(tmp_path / "spool", "--once", "--syslog", "--syslog-socket", str(missing), timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"dropr-relay: cannot log to syslog: {missing}: No such file or directory\n"
    assert not (tmp_path / "spool").exists()


def test_syslog_gets_the_relays_log(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(path))
        done = run_relay(tmp_path / "spool", "--once", "--no-supervise", "--syslog", "--syslog-socket", str(path))
        assert (done.returncode, done.stderr) == (0, "")
        syslog.setblocking(False)
        lines = []
        while True:
            try:
                lines.append(syslog.recv(65536).decode())
            except BlockingIOError:
                break
    assert lines and all(re.match(r"<\d+>dropr-relay\[\d+\]: ", line) for line in lines), lines
    assert any(f"relaying {tmp_path / 'spool'}" in line for line in lines), lines


def test_the_relay_logs_the_time_on_every_line(tmp_path: Path) -> None:
    done = run_relay(tmp_path / "spool", "--once", "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(STAMPED.match(line) for line in lines), lines


def test_the_server_logs_the_time_on_every_line(tmp_path: Path) -> None:
    with start_server(tmp_path / "store", extra_args=["--log-level", "debug"]) as server:
        assert server.get("health")[0] == 200
        assert server.stop() == 0
        lines = server.stderr_text().splitlines()
    assert any("listening on" in line for line in lines), lines
    assert all(STAMPED.match(line) for line in lines), lines


def test_a_logged_traceback_has_the_time_on_every_line() -> None:
    try:
        raise RuntimeError("first\nsecond")
    except RuntimeError:
        record = logging.LogRecord("dropr.relay", logging.ERROR, __file__, 1, "crashed", None, sys.exc_info())
    lines = LineFormatter("dropr-relay").format(record).splitlines()
    assert all(STAMPED.match(line) for line in lines), lines
    assert lines[0].endswith(" ERROR crashed") and lines[1].endswith(" Traceback (most recent call last):")
    assert lines[-2].endswith(" RuntimeError: first") and lines[-1].endswith(" second")
