"""What the console commands share: one-line errors, argument types, help with the defaults
shown, ``--version``, the check for an extra's dependencies, and the log format."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .. import __version__

Number = TypeVar("Number", int, float)

EXIT_USAGE = 2
"""Bad usage or a missing optional dependency: a run cannot help (argparse exits with it too)."""

EXTRAS = {
    "relay": ("pycurl", "prometheus_client"),
    "server": ("aiohttp", "multipart", "uvloop", "prometheus_client"),
    "remote": ("urllib3",),
}
"""The modules each optional extra of the package (``pip install 'dropr[EXTRA]'``) brings."""


class CommandError(Exception):
    """A one-line error for stderr; the command exits non-zero and changes nothing."""


class MissingExtra(CommandError):
    """An optional dependency of the command is not installed: exit status 2."""


def require(extra: str) -> None:
    """Import the modules of ``extra``; MissingExtra, naming the extra to install, if one fails."""
    for name in EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name == name
            problem = f"{name} is not installed" if missing else f"cannot import {name} ({exc})"
            raise MissingExtra(f"{problem}: pip install 'dropr[{extra}]'") from None


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def _number(
    text: str, convert: Callable[[str], Number], noun: str, kind: str, ok: Callable[[Number], bool], rule: str
) -> Number:
    """``text`` converted, or the argparse error that says what was expected."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{noun}must be {kind}, not {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{noun}must be {rule}, not {text!r}")
    return value


def minutes(text: str) -> float:
    """An argparse type: a count of minutes, zero or more."""
    return _number(text, float, "minutes ", "a number", lambda value: value >= 0, "zero or more")


def positive_int(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    return _number(text, int, "", "a whole number", lambda value: value >= 1, "1 or more")


def positive_number(text: str) -> float:
    """An argparse type: a finite number above zero (seconds, say)."""
    return _number(text, float, "", "a number", lambda value: 0 < value < math.inf, "more than zero")


def listen_address(text: str) -> tuple[str, int]:
    """An argparse type: ``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless there is none or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if action.option_strings and "default" not in text and default not in (None, argparse.SUPPRESS):
            if default is not False:
                text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser with ``--version``, whose usage errors are one line on stderr and
    exit status 2; its subcommands' parsers are of this kind too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        program = self.prog.split()[0]
        self.add_argument(
            "--version", action="version", version=f"{program} {__version__}", help="print the version and exit"
        )

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


class LineFormatter(logging.Formatter):
    """``TIME PROGRAM[PID] LEVEL`` before every line of a record, a traceback's lines too, so
    that each line of a log says when and where it was written."""

    default_msec_format = "%s.%03d"

    def __init__(self, program: str) -> None:
        super().__init__("%(message)s")
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {self.program}[{record.process}] {record.levelname} "
        return "\n".join(head + line for line in super().format(record).split("\n"))


def log_to(handler: logging.Handler, level: str) -> None:
    """Send every logger's records of ``level`` and above to ``handler`` alone."""
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def stderr_handler(program: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(program))
    return handler
