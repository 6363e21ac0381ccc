"""Batch manifests, plain-Python reference of ``dropr._manifest``.

A manifest tells the server what each part of a batch is: a msgpack array with one entry
``[id, channel, priority, part, size, crc32]`` per spool name, in the order given. The part
name is the id. ``channel`` is the channel's text: an escaped field is unescaped, a compact
(``~``) one is looked up in ``texts`` (KeyError when it is not there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgpack

from dropr._codec_py import COMPACT, parse_spool_name, unescape

_SIZE_LIMIT = 1 << 64


def build(names: Sequence[str], texts: Mapping[str, str]) -> bytes:
    """The msgpack manifest of the messages with these spool names (ValueError on a bad one)."""
    entries = []
    for name in names:
        priority, msg_id, _peer, channel, size, crc = parse_spool_name(name)
        if size >= _SIZE_LIMIT:
            raise ValueError(f"size out of range in {name!r}")
        text = texts[channel] if channel.startswith(COMPACT) else unescape(channel)
        entries.append([msg_id, text, priority, msg_id, size, crc])
    manifest: bytes = msgpack.packb(entries, use_bin_type=True)
    return manifest
