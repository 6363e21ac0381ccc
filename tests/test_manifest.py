"""Batch manifests: both twins, byte for byte against the reference."""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropr import _codec_py as codec
from dropr import _drop_py
from dropr import _manifest_py as reference

try:
    from dropr import _manifest as compiled
except ImportError:
    compiled = None

MSG_ID = "18f0c0ffee000000abcdef01000001"

messages = st.lists(
    st.tuples(
        st.integers(0, 9),
        st.builds(
            lambda t, s: f"{t:016x}deadbeef{s:06x}",
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**24 - 1),
        ),
        st.text(max_size=120) | st.text(st.sampled_from("%+/é~ a"), max_size=30),
        st.integers(0, 2**64 - 1) | st.sampled_from([0, 127, 128, 255, 256, 65535, 65536]),
        st.integers(0, 2**32 - 1),
    ),
    max_size=40,
)


def _batch(
    entries: list[tuple[int, str, str, int, int]],
) -> tuple[list[str], dict[str, str]]:
    names, texts = [], {}
    for priority, msg_id, channel, size, crc in entries:
        field = codec.escape(channel or "common")
        if field.startswith(codec.COMPACT):
            texts[field] = channel
        names.append(codec.spool_name(priority, msg_id, "peer", field, size, crc))
    return names, texts


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=messages)
def test_decodes_to_the_entries(manifest: ModuleType, entries: list) -> None:
    names, texts = _batch(entries)
    decoded = msgpack.unpackb(manifest.build(names, texts))
    assert decoded == [
        [msg_id, channel or "common", priority, msg_id, size, crc] for priority, msg_id, channel, size, crc in entries
    ]


@pytest.mark.skipif(compiled is None, reason="dropr._manifest is not built")
@given(entries=messages)
def test_compiled_is_byte_identical(entries: list) -> None:
    names, texts = _batch(entries)
    assert compiled.build(names, texts) == reference.build(names, texts)


@pytest.mark.skipif(compiled is None, reason="dropr._manifest is not built")
def test_compiled_is_byte_identical_on_large_batches_and_texts() -> None:
    names = [codec.spool_name(i % 10, f"{i:030x}", "p", "c", i, i) for i in range(70_000)]
    assert compiled.build(names, {}) == reference.build(names, {})
    long_texts = {codec.compact(str(n)): "é" * n for n in (15, 16, 31, 32, 127, 128, 40_000)}
    names = [codec.spool_name(1, MSG_ID, "p", field, 1, 1) for field in long_texts]
    assert compiled.build(names, long_texts) == reference.build(names, long_texts)


def test_compact_channel_comes_from_texts(manifest: ModuleType) -> None:
    channel = "a channel with a very long name / " * 5
    field = codec.escape(channel)
    name = codec.spool_name(3, MSG_ID, "peer", field, 10, 99)
    assert msgpack.unpackb(manifest.build([name], {field: channel})) == [[MSG_ID, channel, 3, MSG_ID, 10, 99]]
    with pytest.raises(KeyError):
        manifest.build([name], {})


def test_empty(manifest: ModuleType) -> None:
    assert manifest.build([], {}) == b"\x90"


@pytest.mark.parametrize(
    "name",
    [
        "not a name",
        MSG_ID,
        "5" + MSG_ID + "+peer+ch+1",
        "5" + MSG_ID + "+peer+ch+1+0000000z",
        "5" + MSG_ID.upper() + "+peer+ch+1+00000000",
        "5" + MSG_ID + "+peer+ch+" + "1" * 17 + "+00000000",
        "5" + MSG_ID + "+peer+%C3%28+1+00000000",
        "5" + MSG_ID + "+peer+é%41+1+00000000",
    ],
)
def test_invalid_name_rejected(manifest: ModuleType, name: str) -> None:
    good = codec.spool_name(1, MSG_ID, "peer", "ch", 1, 1)
    with pytest.raises(ValueError):
        manifest.build([good, name], {})


# -- batch files and delays --------------------------------------------------------------


def _queue_batch(root: Path, payloads: list[bytes], channel: str = "ch", priority: int = 4, delay_ms: int = 0) -> str:
    """Write a batch file with the plain-Python put path; its name."""
    for sub in ("tmp", "queue"):
        (root / sub).mkdir(exist_ok=True)
    tmp_fd = os.open(root / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    queue_fd = os.open(root / "queue", os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = _drop_py.put_many(tmp_fd, queue_fd, "peer", codec.escape(channel), priority, payloads, False, delay_ms)
    finally:
        os.close(tmp_fd)
        os.close(queue_fd)
    return next(p.name for p in (root / "queue" / f"{priority}{ids[0][:8]}").iterdir() if ids[0] in p.name)


def test_a_batch_file_is_one_part_with_an_entry_per_message(manifest: ModuleType, tmp_path: Path) -> None:
    payloads = [b"first", b"", b"x" * 300]
    name = _queue_batch(tmp_path, payloads, delay_ms=1500)
    first = codec.parse_spool_name(name)[1]
    ids = codec.batch_ids(first, 3)
    plain = codec.spool_name(2, MSG_ID, "peer", "other", 7, 8, 1, 250)
    decoded = msgpack.unpackb(manifest.build([plain, name], {}, str(tmp_path / "queue")))
    start = codec.batch_index_size(3)
    assert decoded == [
        [MSG_ID, "other", 2, MSG_ID, 7, 8, 0, 250],
        [ids[0], "ch", 4, first, 5, zlib.crc32(b"first"), start, 1500],
        [ids[1], "ch", 4, first, 0, 0, start + 5, 1500],
        [ids[2], "ch", 4, first, 300, zlib.crc32(b"x" * 300), start + 5, 1500],
    ]
    data = (tmp_path / "queue" / name[: codec.BUCKET_LEN] / name).read_bytes()
    for entry, payload in zip(decoded[1:], payloads, strict=True):
        assert data[entry[6] : entry[6] + entry[4]] == payload


def test_entries_without_offset_or_delay_keep_six_elements(manifest: ModuleType, tmp_path: Path) -> None:
    name = _queue_batch(tmp_path, [b"a", b"b"])
    decoded = msgpack.unpackb(
        manifest.build([name, codec.spool_name(1, MSG_ID, "p", "c", 1, 1)], {}, str(tmp_path / "queue"))
    )
    assert [len(entry) for entry in decoded] == [7, 7, 6]


@pytest.mark.skipif(compiled is None, reason="dropr._manifest is not built")
@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(st.binary(max_size=300), min_size=1, max_size=30),
            st.sampled_from(["ch", "é/ü", "x" * 100]),
            st.integers(0, 9),
            st.integers(0, 2**64 - 1) | st.just(0),
        ),
        max_size=6,
    )
)
def test_compiled_is_byte_identical_on_batch_files(batches: list) -> None:
    with tempfile.TemporaryDirectory() as root:
        names, texts = [], {}
        for payloads, channel, priority, delay_ms in batches:
            if codec.escape(channel).startswith(codec.COMPACT):
                texts[codec.escape(channel)] = channel
            names.append(_queue_batch(Path(root), payloads, channel, priority, delay_ms))
        queue = os.path.join(root, "queue")
        assert compiled.build(names, texts, queue) == reference.build(names, texts, queue)


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[:-1]
    if how == "magic":
        return b"x" + data[1:]
    if how == "count":
        return data[:8] + (3).to_bytes(4, "big") + data[12:]
    if how == "id":
        return data[:12] + b"0" * 30 + data[42:]
    if how == "sizes":
        return data[:42] + (1).to_bytes(8, "big") + data[50:]
    return data[:12]


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "117 bytes, not the 118 its name says"),
        ("magic", "bad magic"),
        ("count", "cut short"),
        ("id", "its ids are not those of its name"),
        ("sizes", "its payloads take 108 bytes, not 118"),
        ("index-only", "12 bytes, not the 118"),
    ],
)
def test_a_batch_file_not_as_named_is_refused_naming_it(
    manifest: ModuleType, tmp_path: Path, how: str, reason: str
) -> None:
    name = _queue_batch(tmp_path, [b"payload one", b"payload two"])
    path = tmp_path / "queue" / name[: codec.BUCKET_LEN] / name
    path.write_bytes(_corrupt(path.read_bytes(), how))
    with pytest.raises(ValueError, match=re.escape(f"batch file {name}: ") + ".*" + re.escape(reason)):
        manifest.build([name], {}, str(tmp_path / "queue"))


def test_a_batch_file_needs_its_queue(manifest: ModuleType, tmp_path: Path) -> None:
    name = _queue_batch(tmp_path, [b"a", b"b"])
    with pytest.raises(ValueError, match="batch file"):
        manifest.build([name], {})
    os.unlink(tmp_path / "queue" / name[: codec.BUCKET_LEN] / name)
    with pytest.raises(FileNotFoundError):
        manifest.build([name], {}, str(tmp_path / "queue"))


# -- joined messages ---------------------------------------------------------------------


def test_joined_messages_come_one_after_another_in_their_part(manifest: ModuleType, tmp_path: Path) -> None:
    batch = _queue_batch(tmp_path, [b"a", b"bc"])
    first = codec.parse_spool_name(batch)[1]
    second = MSG_ID[:-1] + "2"
    names = [
        codec.spool_name(1, MSG_ID, "p", "c", 5, 11),
        codec.spool_name(2, second, "p", "d", 3, 12, 1, 250),
        codec.spool_name(3, MSG_ID[:-1] + "3", "p", "c", 9, 13),
        batch,
    ]
    decoded = msgpack.unpackb(manifest.build(names, {}, str(tmp_path / "queue"), joined_part="joined", joined=2))
    start = codec.batch_index_size(2)
    assert decoded == [
        [MSG_ID, "c", 1, "joined", 5, 11, 0],
        [second, "d", 2, "joined", 3, 12, 5, 250],
        [MSG_ID[:-1] + "3", "c", 3, MSG_ID[:-1] + "3", 9, 13],
        [codec.batch_ids(first, 2)[0], "ch", 4, first, 1, zlib.crc32(b"a"), start],
        [codec.batch_ids(first, 2)[1], "ch", 4, first, 2, zlib.crc32(b"bc"), start + 1],
    ]


def test_only_plain_messages_travel_joined(manifest: ModuleType, tmp_path: Path) -> None:
    batch = _queue_batch(tmp_path, [b"a", b"b"])
    plain = codec.spool_name(1, MSG_ID, "p", "c", 1, 1)
    with pytest.raises(ValueError, match=re.escape(f"batch file {batch}: only plain messages travel joined")):
        manifest.build([plain, batch], {}, str(tmp_path / "queue"), joined_part="joined", joined=2)
    with pytest.raises(ValueError, match="need a joined_part"):
        manifest.build([plain], {}, joined=1)


@pytest.mark.skipif(compiled is None, reason="dropr._manifest is not built")
@given(entries=messages, joined=st.integers(0, 40))
def test_compiled_is_byte_identical_when_joined(entries: list, joined: int) -> None:
    names, texts = _batch(entries)

    def outcome(module: ModuleType) -> bytes | str:
        try:
            built: bytes = module.build(names, texts, joined_part="jo", joined=joined)
        except ValueError as exc:  # sizes past 64 bits, which no relay's batch reaches
            return str(exc)
        return built

    assert outcome(compiled) == outcome(reference)


def test_join_reads_the_files_one_after_another(manifest: ModuleType, tmp_path: Path) -> None:
    contents = [b"first", b"", b"x" * 70_000, bytes(range(256))]
    paths = []
    for index, data in enumerate(contents):
        paths.append(str(tmp_path / f"m{index}"))
        Path(paths[-1]).write_bytes(data)
    assert manifest.join(paths, [len(data) for data in contents]) == b"".join(contents)
    assert manifest.join([], []) == b""


def test_join_names_a_file_of_another_length_or_missing(manifest: ModuleType, tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"12345")
    bad.write_bytes(b"123")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: 3 bytes, not the 4 its name says")):
        manifest.join([str(good), str(bad)], [5, 4])
    with pytest.raises(ValueError, match=re.escape(f"{bad}: 3 bytes, not the 2 its name says")):
        manifest.join([str(bad)], [2])
    with pytest.raises(FileNotFoundError):
        manifest.join([str(good), str(tmp_path / "gone")], [5, 1])
    with pytest.raises(ValueError, match="2 paths but 1 sizes"):
        manifest.join([str(good), str(bad)], [5])
