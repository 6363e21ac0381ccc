"""Exponential, jittered, capped backoff: one per peer.

A failing peer is retried after ``low``, then twice as long each time up to ``high``; each
delay is drawn between half and all of its nominal value ("equal jitter"), so relays that
lost the same server do not come back in step. Success resets it.
"""

from __future__ import annotations

import random
import time


class Backoff:
    """When a peer may be tried again, after how many failures in a row."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.failures = 0
        self.until = 0.0

    def fail(self, now: float | None = None) -> float:
        """Count a failure; returns the delay before the next attempt."""
        nominal = min(self.high, self.low * 2.0 ** min(self.failures, 64))
        delay = nominal / 2 + random.uniform(0, nominal / 2)
        self.failures += 1
        self.until = (time.monotonic() if now is None else now) + delay
        return delay

    def succeed(self) -> None:
        self.failures = 0
        self.until = 0.0

    def waiting(self, now: float) -> bool:
        """Whether the peer is still being left alone at ``now`` (monotonic seconds)."""
        return now < self.until
