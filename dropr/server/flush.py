"""Group commit: one file-system sync serves every batch that asked while it was pending.

``Store.flush`` (``syncfs``) blocks for as long as the disk takes, so it runs in a worker
thread and the event loop keeps serving other connections. A caller's writes are covered
only by a sync that *starts* after its call; so a caller arriving while a sync runs waits
for the next one, which starts when the running one ends and serves every caller queued
meanwhile. Under load, any number of concurrent batches costs about two syncs, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Flusher:
    """Runs ``flush`` (blocking) in a thread, sharing each run between concurrent callers."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._running: asyncio.Task[None] | None = None
        self._queued: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        """Return once everything written before this call is durable (or raise OSError)."""
        if self._running is None:
            self._running = task = asyncio.ensure_future(self._run())
        elif self._queued is None:
            self._queued = task = asyncio.ensure_future(self._run_after(self._running))
        else:
            task = self._queued
        await asyncio.shield(task)

    async def _run_after(self, previous: asyncio.Task[None]) -> None:
        await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        await self._run()

    async def _run(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._flush)
        finally:
            if self._running is asyncio.current_task():
                self._running = None
