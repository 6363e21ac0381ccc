"""The local transport: ``file:///path/to/store`` peers, straight into a store on this host.

The same guarantees as over HTTP, without a server, by the same path: the batch is
announced as for a server (:func:`~dropr.relay.batches.announce`, the same manifest), each
spool file is staged in the store by a hard link (a copy when the store is on another file
system, or links are refused) and each message of a batch file by a copy of its bytes from
their offset, and the batch goes through the store's one ingest path
(:meth:`dropr.store.ingest.IngestSide.commit`), which checks each message's size and CRC-32
against what was announced, makes the batch durable and answers for each message (one the
store already holds is a duplicate, kept once); only then does the relay count it
acknowledged.

The file work blocks, so it runs on the relay's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from concurrent.futures import Executor

from .. import protocol
from ..errors import DroprError
from ..names import field
from ..protocol import Acks, PeerFailure
from ..store.ingest import IngestSide, Staged
from ..store.staging import Staging, remove_staged
from .batches import Entry, SpoolFiles


class LocalTransport:
    """Hands batches to the store at a ``file://`` URL (created on first use)."""

    def __init__(
        self,
        url: str,
        executor: Executor,
        spool: SpoolFiles,
    ) -> None:
        self.url = url
        self.path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        self._executor = executor
        self._spool = spool
        # No field holds "+": no other client's prefix starts with this one.
        self._prefix = f"relay-{field(spool.client)}+"
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
        staged: list[Staged] = []
        try:
            request = self._spool.announce(batch)
            acks: Acks = dict(request.refused)
            store = self._open()
            staging = store.staging(self._prefix)
            paths = self._spool.paths(request)
            entries = request.messages()
            for part, messages in protocol.part_ranges(entries).items():
                _stage(staging, paths[part], messages, staged)
            acks.update(store.commit(self._spool.client, staged))
        except (OSError, DroprError) as exc:
            raise PeerFailure(f"store {self.path}: {exc}") from None
        finally:
            for message in staged:
                message.file.discard()
        return acks

    async def aclose(self) -> None:
        self._store = None


def _stage(staging: Staging, path: str, messages: list[protocol.Entry], staged: list[Staged]) -> None:
    """Stage the messages announced in the file at ``path`` onto ``staged``: the file itself
    when it is one message, each message's bytes of a batch file."""
    if len(messages) == 1 and messages[0].offset <= 0:
        entry = messages[0]
        staged.append(
            Staged(entry.id, entry.channel, entry.priority, entry.size, entry.crc, staging.link(path), entry.delay_ms)
        )
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for entry in messages:
            file = staging.extract(fd, entry.offset, entry.size)
            staged.append(Staged(entry.id, entry.channel, entry.priority, entry.size, entry.crc, file, entry.delay_ms))
    finally:
        os.close(fd)
