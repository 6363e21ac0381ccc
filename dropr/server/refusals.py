"""The log of refused requests: one line per refusal, a flood summed up.

A refused request (any answer but 200) is logged with who sent it — the peer's address, and
the client id when the request got as far as naming it — and why; after a line for a client
and status, more of the same within :data:`WINDOW` seconds are counted, not logged, and one
line at the end of the window says how many there were. A relay retrying with a wrong token
then costs a line per 10 s, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

WINDOW = 10.0
PRUNE_AT = 1024
"""Windows kept before the ended ones are dropped (many clients refused once each)."""

log = logging.getLogger("dropr.server")


class _Window:
    __slots__ = ("reason", "suppressed", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.suppressed = 0
        self.reason = ""


class RefusalLog:
    """Logs refusals at most once per client and status per :data:`WINDOW` seconds (the loop thread only)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], _Window] = {}

    def refused(self, who: str, status: int, reason: str) -> None:
        """A request from ``who`` got ``status`` for ``reason``."""
        now = time.monotonic()
        key = (who, status)
        window = self._windows.get(key)
        if window is None or now >= window.until:
            _log(status, "refused a request from %s: %d %s", who, status, reason)
            if window is None:
                if len(self._windows) >= PRUNE_AT:
                    self._prune()
                self._windows[key] = _Window(now + WINDOW)
            else:
                window.until = now + WINDOW
            return
        if not window.suppressed:
            asyncio.get_running_loop().call_later(window.until - now, self._flush, key)
        window.suppressed += 1
        window.reason = reason

    def _flush(self, key: tuple[str, int]) -> None:
        window = self._windows[key]
        who, status = key
        if window.suppressed:
            _log(status, "refused %d more requests from %s in %g s: %d %s", window.suppressed, who, WINDOW, status,
                 window.reason)  # fmt: skip
            window.suppressed = 0
            window.until = time.monotonic() + WINDOW
        self._prune()

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [key for key, window in self._windows.items() if now >= window.until and not window.suppressed]:
            del self._windows[key]


def _log(status: int, text: str, *args: object) -> None:
    log.log(logging.ERROR if status >= 500 else logging.INFO, text, *args)
