"""Where a store keeps what, and how channel and client texts become file-name fields.

::

    STORE/tmp/                          uploads in progress (same file system as the rest)
    STORE/names/                        texts of compact (``~``) fields
    STORE/channels/{CH}/queue/          ready for consumers, in delivery order by name
    STORE/channels/{CH}/claimed/        held by a consumer; mtime = end of its lease
    STORE/channels/{CH}/delayed/        failed, waiting to be retried; mtime = when
    STORE/channels/{CH}/processed/      done; kept until wiped
    STORE/channels/{CH}/dead/           failed too often; the reasons are in attempts/
    STORE/channels/{CH}/attempts/NAME   failures of message NAME so far (JSON)

A message keeps its exact file name ``{P}{ID}+{CLIENT}`` in every state, so "is it held
already" is one ``stat`` per state, and moving between states is one ``rename``.
"""

from __future__ import annotations

import os

from .._codec_py import COMPACT, MAX_FIELD
from .._impl import codec
from . import _fs

TMP = "tmp"
NAMES = "names"
CHANNELS = "channels"

QUEUE = "queue"
CLAIMED = "claimed"
DELAYED = "delayed"
PROCESSED = "processed"
DEAD = "dead"
ATTEMPTS = "attempts"

STATES = (QUEUE, CLAIMED, DELAYED, PROCESSED, DEAD)
"""Every state directory, in the order messages flow forward (ingest checks them so)."""


def field(text: str) -> str:
    """The file-name field of a channel or client text (escaped, or compact when long).

    A leading dot is escaped too, so a channel directory is never ``.``, ``..`` or hidden.
    """
    escaped: str = codec.escape(text)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
        if len(escaped) > MAX_FIELD:
            escaped = codec.compact(text)
    return escaped


class Names:
    """The texts of compact fields, kept in ``names/``: written once, read once, cached."""

    def __init__(self, names_dir: str) -> None:
        self.dir = names_dir
        self.written = 0
        self._texts: dict[str, str] = {}

    def register(self, text: str) -> str:
        """The field for ``text``; for a compact one its text is stored (and synced) first.

        ``written`` counts the texts this process wrote, so a caller can tell that
        ``names/`` changed and needs syncing too.
        """
        name = field(text)
        if name.startswith(COMPACT) and name not in self._texts:
            path = os.path.join(self.dir, name)
            _fs.publish(path, text.encode("utf-8"), replace=False, sync=True)
            self.written += 1
            self._texts[name] = text
        return name

    def resolve(self, name: str) -> str:
        """The text of a field; a compact field whose text is missing stays as it is."""
        if not name.startswith(COMPACT):
            plain: str = codec.unescape(name)
            return plain
        text = self._texts.get(name)
        if text is None:
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8") as file:
                    text = file.read()
            except FileNotFoundError:
                return name
            self._texts[name] = text
        return text
