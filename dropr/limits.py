"""Configurable limits with their documented defaults, and the defaults of a message.

Each limit can be overridden from the environment (``DROPR_MAX_PAYLOAD`` and so on) or by
passing a :class:`Limits` where an API takes one.
"""

from __future__ import annotations

import os
from typing import NamedTuple

DEFAULT_CHANNEL = "common"
DEFAULT_PRIORITY = 9
MAX_DELAY_SECONDS = 100 * 365 * 86400
"""The longest delay a put may ask for: a hundred years, well within every timestamp the
store's file systems keep."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


class Limits(NamedTuple):
    """Sizes dropr enforces; a NamedTuple rather than a dataclass keeps ``import dropr`` cheap."""

    max_payload: int = 16 * 1024 * 1024
    max_channel: int = 255
    max_peer: int = 1024
    max_client: int = 255
    batch_count: int = 1000
    batch_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, each overridden by ``DROPR_<FIELD>`` (``DROPR_MAX_PAYLOAD``…) when set."""
        return cls(**{name: _env_int(f"DROPR_{name.upper()}", value) for name, value in cls._field_defaults.items()})


DEFAULT = Limits.from_env()
