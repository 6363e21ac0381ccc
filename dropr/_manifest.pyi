"""Batch manifests, compiled (``dropr._manifest``); the format is documented in
``dropr._manifest_py``."""

from collections.abc import Mapping, Sequence

def build(names: Sequence[str], texts: Mapping[str, str]) -> bytes:
    """The msgpack manifest of the messages with these spool names: one entry
    ``[id, channel, priority, part, size, crc32]`` each, ``channel`` unescaped, a compact
    channel field looked up in ``texts`` (KeyError when missing). ValueError on a bad name.
    """
