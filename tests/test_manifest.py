"""Batch manifests: both twins, byte for byte against the reference."""

from __future__ import annotations

from types import ModuleType

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropr import _codec_py as codec
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
