"""Batch manifests, compiled (``dropr._manifest``); the format is documented in
``dropr._manifest_py``."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

def build(
    names: Sequence[str],
    texts: Mapping[str, str],
    queue_dir: str | None = None,
    *,
    joined_part: str | None = None,
    joined: int = 0,
) -> bytes:
    """The msgpack manifest of the messages of the files with these spool names: one entry
    ``[id, channel, priority, part, size, crc32, offset, delay_ms]`` each (see
    ``dropr.protocol.MANIFEST_FIELDS``), ``channel`` unescaped, a compact channel field looked
    up in ``texts`` (KeyError when missing); a batch file's messages each, its index read in
    ``queue_dir``; the first ``joined`` names plain messages one after another in the part
    ``joined_part``. ValueError on a bad name or batch file.
    """

def join(paths: Sequence[str], sizes: Sequence[int]) -> bytes:
    """The bytes of the files at ``paths`` one after another, each read whole; OSError for
    one that cannot be read, ValueError for one whose length is not its ``sizes`` entry."""

def quick_entries(
    raw: list[Any],
    channels: set[str],
    parts: set[str],
    max_delay_ms: int,
    entry: type[tuple[Any, ...]],
    slow: Callable[[int, Any, set[str], set[str]], tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """The entries of a decoded manifest ``raw``, each an ``entry`` of its fields: the common
    ones checked here, every other by ``slow(index, item, channels, parts)``."""
