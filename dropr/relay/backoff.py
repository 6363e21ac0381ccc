"""Exponential, jittered, capped backoff: one per peer.

A failing peer is retried after ``low``, then twice as long each time up to ``high``; each
delay is drawn between half and all of its nominal value ("equal jitter"), so relays that
lost the same server do not come back in step. Success resets it. A peer the relay cannot
send to while it runs is held: left alone for good.
"""

from __future__ import annotations

import math
import random
import time


class Backoff:
    """When a peer may be tried again, after how many failures in a row since when."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.failures = 0
        self.since = 0.0
        """When the failures in a row began (monotonic seconds)."""
        self.until = 0.0

    def fail(self, now: float | None = None, deadline: float = math.inf) -> float:
        """Count a failure; returns the delay before the next attempt, which comes by
        ``deadline`` at the latest."""
        now = time.monotonic() if now is None else now
        if not self.failures:
            self.since = now
        nominal = min(self.high, self.low * 2.0 ** min(self.failures, 64))
        delay = nominal / 2 + random.uniform(0, nominal / 2)
        self.failures += 1
        self.until = min(now + delay, deadline)
        return self.until - now

    def succeed(self) -> None:
        self.failures = 0
        self.until = 0.0

    def hold(self) -> None:
        """Leave the peer alone for good."""
        self.until = math.inf

    def waiting(self, now: float) -> bool:
        """Whether the peer is still being left alone at ``now`` (monotonic seconds)."""
        return now < self.until
