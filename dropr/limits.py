"""Configurable limits with their documented defaults.

Each can be overridden from the environment (``DROPR_MAX_PAYLOAD`` and so on) or by
passing a :class:`Limits` where an API takes one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


@dataclass(frozen=True)
class Limits:
    max_payload: int = 16 * 1024 * 1024
    max_channel: int = 255
    max_peer: int = 1024
    max_client: int = 255
    batch_count: int = 1000
    batch_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_payload=_env_int("DROPR_MAX_PAYLOAD", cls.max_payload),
            max_channel=_env_int("DROPR_MAX_CHANNEL", cls.max_channel),
            max_peer=_env_int("DROPR_MAX_PEER", cls.max_peer),
            max_client=_env_int("DROPR_MAX_CLIENT", cls.max_client),
            batch_count=_env_int("DROPR_BATCH_COUNT", cls.batch_count),
            batch_bytes=_env_int("DROPR_BATCH_BYTES", cls.batch_bytes),
        )


DEFAULT = Limits.from_env()
