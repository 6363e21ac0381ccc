"""What the console commands share."""

from __future__ import annotations

import json
import sys
from typing import Any


class CommandError(Exception):
    """A one-line error for stderr; the command exits non-zero and changes nothing."""


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def minutes(text: str) -> float:
    """An argparse type: a count of minutes, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"minutes must be a number, not {text!r}") from None
    if value < 0 or value != value:
        raise CommandError(f"minutes must be zero or more, not {text!r}")
    return value
