"""The local transport: ``file:///path/to/store`` peers, straight into a store on this host.

The same guarantees as over HTTP, without a server, by the same path: each spool file is
staged in the store by a hard link (a copy when the store is on another file system, or
links are refused), and the batch goes through the store's one ingest path
(:meth:`dropr.store.ingest.IngestSide.commit`), which checks each file's size and CRC-32
against its name, makes the batch durable and answers for each message (one the store
already holds is a duplicate, kept once); only then does the relay count it acknowledged.

The file work blocks, so it runs on the relay's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Executor

from .. import protocol
from ..errors import DroprError, InvalidMessage
from ..names import field
from ..protocol import Acks, PeerFailure
from ..store.ingest import IngestSide, Staged
from ..store.staging import remove_staged
from .batches import Entry


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
        # No field holds "+": no other client's prefix starts with this one.
        self._prefix = f"relay-{field(client)}+"
        self._store: IngestSide | None = None

    async def send(self, batch: list[Entry]) -> Acks:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._deliver, batch)

    def _open(self) -> IngestSide:
        if self._store is None:
            store = IngestSide(self.path, create=True)
            # What this spool's relay staged before a crash (no other process uses these names).
            remove_staged(store.staging_dir, self._prefix)
            self._store = store
        return self._store

    def _deliver(self, batch: list[Entry]) -> Acks:
        acks: Acks = {}
        staged: list[Staged] = []
        try:
            store = self._open()
            staging = store.staging(self._prefix)
            for entry in batch:
                try:
                    channel = self._resolve(entry.channel)
                except (InvalidMessage, ValueError) as exc:
                    acks[entry.id] = (protocol.REJECTED, str(exc))
                    continue
                file = staging.link(self._locate(entry.name))
                staged.append(Staged(entry.id, channel, entry.priority, entry.size, entry.crc, file))
            acks.update(store.commit(self._client, staged))
        except (OSError, DroprError) as exc:
            raise PeerFailure(f"store {self.path}: {exc}") from None
        finally:
            for message in staged:
                message.file.discard()
        return acks

    async def aclose(self) -> None:
        self._store = None
