"""The local transport: ``file:///path/to/store`` peers, straight into a store on this host.

The same guarantees as over HTTP, without a server: each spool file is hard-linked (copied
when the store is on another file system, or links are refused) into the store's staging
directory, its size and CRC-32 are checked against its name, the store is flushed, each
message is ingested (a message the store already holds is a duplicate and kept once), the
store is flushed again, and only then does the relay count the batch as acknowledged.

The file work blocks, so it runs on the relay's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import urllib.parse
import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from .. import protocol
from .._files import remove
from .._impl import codec
from ..errors import DroprError, InvalidMessage
from ..protocol import Acks, PeerFailure
from .batches import Entry

if TYPE_CHECKING:
    from ..store import Store

_CHUNK = 1 << 20
_COPY_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class LocalTransport:
    """Hands batches to the store at a ``file://`` URL (created on first use)."""

    def __init__(
        self,
        url: str,
        executor: Executor,
        *,
        client: str,
        locate: Callable[[str], str],
        resolve: Callable[[str], str],
    ) -> None:
        self.url = url
        self.path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        self._executor = executor
        self._client = client
        self._locate = locate
        self._resolve = resolve
        self._prefix = f"relay-{codec.escape(client)}-"
        self._store: Store | None = None

    async def send(self, batch: list[Entry]) -> Acks:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._deliver, batch)

    def _open(self) -> Store:
        if self._store is None:
            from ..store import Store

            store = Store(self.path, create=True)
            # What this spool's relay staged before a crash (no other process uses these names).
            for name in os.listdir(store.staging_dir):
                if name.startswith(self._prefix):
                    remove(os.path.join(store.staging_dir, name))
            self._store = store
        return self._store

    def _deliver(self, batch: list[Entry]) -> Acks:
        acks: Acks = {}
        staged: list[tuple[Entry, str]] = []
        try:
            store = self._open()
            for entry in batch:
                path = os.path.join(store.staging_dir, self._prefix + entry.id)
                self._stage(self._locate(entry.name), path)
                staged.append((entry, path))
                problem = _check(path, entry)
                if problem:
                    acks[entry.id] = (protocol.REJECTED, problem)
            store.flush()
            for entry, path in staged:
                if entry.id in acks:
                    remove(path)
                    continue
                try:
                    channel = self._resolve(entry.channel)
                    stored = store.ingest(channel, self._client, entry.id, entry.priority, path)
                except (InvalidMessage, ValueError) as exc:
                    remove(path)
                    acks[entry.id] = (protocol.REJECTED, str(exc))
                    continue
                acks[entry.id] = (protocol.STORED, "") if stored else (protocol.DUPLICATE, "already held")
            store.flush()
        except (OSError, DroprError) as exc:
            for _, path in staged:
                remove(path)
            raise PeerFailure(f"store {self.path}: {exc}") from None
        return acks

    @staticmethod
    def _stage(source: str, target: str) -> None:
        remove(target)
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in _COPY_ERRNOS:
                raise
            shutil.copyfile(source, target)

    async def aclose(self) -> None:
        self._store = None


def _check(path: str, entry: Entry) -> str:
    """Why the staged file does not match its name, or ``""`` when it does."""
    crc = 0
    size = 0
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return protocol.mismatch(entry.size, entry.crc, size, crc)
