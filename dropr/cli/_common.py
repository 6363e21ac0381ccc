"""What the console commands share."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

Number = TypeVar("Number", int, float)


class CommandError(Exception):
    """A one-line error for stderr; the command exits non-zero and changes nothing."""


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


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message}\n")
