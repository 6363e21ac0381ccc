"""Batch manifests, plain-Python reference of ``dropr._manifest``.

A manifest tells the server what each part of a request is: a msgpack array with one entry
per message, ``[id, channel, priority, part, size, crc32]`` (``dropr.protocol``'s
``MANIFEST_FIELDS``), in the order of the spool names given. A plain message travels as
its own part, named by its id. A batch file (see ``dropr._codec_py``) travels whole as one
part, named by its first id, and its messages' entries, read from its index, add their
``offset`` into that part. A message due later adds ``delay_ms`` (after ``offset``, which is
0 for a plain message). ``channel`` is the channel's text: an escaped field is unescaped, a
compact (``~``) one is looked up in ``texts`` (KeyError when it is not there).

The server reads a manifest with :func:`quick_entries`: ``dropr.protocol`` checks each entry,
and the compiled twin the common ones itself, first.

The first ``joined`` names may be plain messages that travel together in one part named
``joined_part``, one after another in the order of their names, each entry adding its
``offset`` there; :func:`join` reads their files into that part.

A batch file is read at ``queue_dir/BUCKET/NAME`` for its index alone, never its payloads,
and checked against its name: its length, its count, its ids (consecutive from the name's)
and its payloads' sizes adding up to the file. ValueError names the file that is not right,
OSError the one that cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from dropr._codec_py import (
    BUCKET_LEN,
    COMPACT,
    batch_ids,
    batch_index_size,
    parse_batch_index,
    parse_spool_name,
    unescape,
)

_SIZE_LIMIT = 1 << 64


def build(
    names: Sequence[str],
    texts: Mapping[str, str],
    queue_dir: str | None = None,
    *,
    joined_part: str | None = None,
    joined: int = 0,
) -> bytes:
    """The msgpack manifest of the messages of the files with these spool names, queued in
    ``queue_dir`` (read for batch files only), the first ``joined`` of them plain messages
    in the part ``joined_part``; ValueError on a bad name or batch file."""
    if joined and joined_part is None:
        raise ValueError("joined messages need a joined_part")
    entries: list[list[Any]] = []
    joined_at = 0
    for index, name in enumerate(names):
        priority, msg_id, _peer, channel, size, crc, count, delay_ms = parse_spool_name(name)
        if size >= _SIZE_LIMIT:
            raise ValueError(f"size out of range in {name!r}")
        text = texts[channel] if channel.startswith(COMPACT) else unescape(channel)
        tail = [0, delay_ms] if delay_ms else []
        if index < joined:
            if count > 1:
                raise ValueError(f"batch file {name}: only plain messages travel joined")
            entries.append([msg_id, text, priority, joined_part, size, crc, joined_at, *tail[1:]])
            joined_at += size
            if joined_at >= _SIZE_LIMIT:
                raise ValueError("joined messages: sizes add up to more than 64 bits")
            continue
        if count == 1:
            entries.append([msg_id, text, priority, msg_id, size, crc, *tail])
            continue
        for entry_id, offset, entry_size, entry_crc in _read_index(queue_dir, name, msg_id, size, count):
            entries.append([entry_id, text, priority, msg_id, entry_size, entry_crc, offset, *tail[1:]])
    manifest: bytes = msgpack.packb(entries, use_bin_type=True)
    return manifest


def _read_index(
    queue_dir: str | None, name: str, first_id: str, size: int, count: int
) -> list[tuple[str, int, int, int]]:
    if queue_dir is None:
        raise ValueError(f"batch file {name}: no queue directory to read it from")
    fd = os.open(os.path.join(queue_dir, name[:BUCKET_LEN], name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = os.fstat(fd).st_size
        data = os.pread(fd, batch_index_size(count), 0)
    finally:
        os.close(fd)
    if length != size:
        raise ValueError(f"batch file {name}: {length} bytes, not the {size} its name says")
    try:
        entries = parse_batch_index(data)
    except ValueError as exc:
        raise ValueError(f"batch file {name}: {exc}") from None
    if len(entries) != count:
        raise ValueError(f"batch file {name}: {len(entries)} messages, not the {count} its name says")
    if [entry[0] for entry in entries] != batch_ids(first_id, count):
        raise ValueError(f"batch file {name}: its ids are not those of its name")
    _, offset, last_size, _ = entries[-1]
    if offset + last_size != size:
        raise ValueError(f"batch file {name}: its payloads take {offset + last_size} bytes, not {size}")
    return entries


def join(paths: Sequence[str], sizes: Sequence[int]) -> bytes:
    """The bytes of the files at ``paths`` one after another, each read whole; OSError for
    one that cannot be read, ValueError for one whose length is not its ``sizes`` entry."""
    if len(paths) != len(sizes):
        raise ValueError(f"{len(paths)} paths but {len(sizes)} sizes")
    negative = next((size for size in sizes if size < 0), None)
    if negative is not None:
        raise ValueError(f"a size below zero: {negative}")
    chunks: list[bytes] = []
    for path, size in zip(paths, sizes, strict=True):
        with open(path, "rb") as file:
            length = os.fstat(file.fileno()).st_size
            data = file.read(size)
        if length != size or len(data) != size:
            raise ValueError(f"{path}: {length if length != size else len(data)} bytes, not the {size} its name says")
        chunks.append(data)
    return b"".join(chunks)


def quick_entries(
    raw: list[Any],
    channels: set[str],
    parts: set[str],
    max_delay_ms: int,
    entry: type[tuple[Any, ...]],
    slow: Callable[[int, Any, set[str], set[str]], tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """The entries of a decoded manifest ``raw``: each ``slow(index, item, channels,
    parts)``'s, the full check with its reasons (it may raise, and adds each channel and part
    found valid to the sets). The compiled twin takes an item whose channel and part are
    known, each field of its type and in its range (``max_delay_ms`` the longest delay, the
    last two fields optional as the manifest says), as an ``entry`` by itself, and leaves
    every other to ``slow``."""
    return [slow(index, item, channels, parts) for index, item in enumerate(raw)]
