"""The file-name codec: both twins, and the compiled one against the reference."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropr import _codec_py as reference

try:
    from dropr import _codec as compiled
except ImportError:
    compiled = None

needs_compiled = pytest.mark.skipif(compiled is None, reason="dropr._codec is not built")
with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

ids = st.builds(
    lambda t, nonce, seq: f"{t:016x}{nonce:08x}{seq:06x}",
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**24 - 1),
)
priorities = st.integers(0, 9)
sizes = st.integers(0, 2**64 - 1)
crcs = st.integers(0, 2**32 - 1)
# Texts rich in the characters the codec treats specially.
tricky = st.text(st.sampled_from("%+~./\x00aZ09-_AFaf é€\U0001f600"), max_size=40) | st.text()


def test_constants(codec: ModuleType) -> None:
    assert (codec.ID_LEN, codec.MAX_FIELD, codec.SEPARATOR, codec.COMPACT) == (
        30,
        80,
        "+",
        "~",
    )


def test_new_id_is_time_ordered_and_unique(codec: ModuleType) -> None:
    before = time.time_ns()
    made = [codec.new_id() for _ in range(2000)]
    after = time.time_ns()
    assert all(codec.is_message_id(msg_id) for msg_id in made)
    assert len(set(made)) == len(made)
    assert all(before <= codec.id_time_ns(msg_id) <= after for msg_id in made)
    assert {msg_id[16:24] for msg_id in made} == {made[0][16:24]}


def test_new_id_nonce_changes_after_fork(codec: ModuleType) -> None:
    parent = codec.new_id()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(writer, codec.new_id().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    assert codec.is_message_id(child)
    assert child[16:24] != parent[16:24]
    assert child[24:] == "000000"


def test_escape_examples(codec: ModuleType) -> None:
    assert codec.escape("common") == "common"
    assert codec.escape("a/b+c d") == "a%2Fb%2Bc%20d"
    assert codec.escape("é") == "%C3%A9"
    assert codec.escape(".hidden") == ".hidden"
    assert codec.escape("x" * 80) == "x" * 80
    assert codec.escape("x" * 81) == codec.compact("x" * 81)
    assert codec.escape("/" * 27) == codec.compact("/" * 27)
    assert codec.compact("abc").startswith("~") and len(codec.compact("abc")) == 33


@with_fixture
@given(text=tricky)
def test_escape_round_trip(codec: ModuleType, text: str) -> None:
    field = codec.escape(text)
    assert 0 < len(field) <= codec.MAX_FIELD or text == ""
    assert field.isascii() and "+" not in field and "/" not in field and "\x00" not in field
    if field.startswith("~"):
        assert field == codec.compact(text)
        assert codec.unescape(field) == field
    else:
        assert codec.unescape(field) == text


@with_fixture
@given(priority=priorities, msg_id=ids, peer=tricky, channel=tricky, size=sizes, crc=crcs)
def test_spool_name_round_trip_and_safety(
    codec: ModuleType,
    priority: int,
    msg_id: str,
    peer: str,
    channel: str,
    size: int,
    crc: int,
) -> None:
    peer_field, channel_field = (
        codec.escape(peer or "p"),
        codec.escape(channel * 50 or "c"),
    )
    name = codec.spool_name(priority, msg_id, peer_field, channel_field, size, crc)
    assert len(name.encode()) <= 255
    assert "/" not in name and "\x00" not in name and not name.startswith(".")
    assert codec.parse_spool_name(name) == (
        priority,
        msg_id,
        peer_field,
        channel_field,
        size,
        crc,
    )


@with_fixture
@given(priority=priorities, msg_id=ids, client=tricky)
def test_store_name_round_trip(codec: ModuleType, priority: int, msg_id: str, client: str) -> None:
    field = codec.escape(client or "c")
    name = codec.store_name(priority, msg_id, field)
    assert len(name.encode()) <= 255 and "/" not in name
    assert codec.parse_store_name(name) == (priority, msg_id, field)


@with_fixture
@given(
    puts=st.lists(
        st.tuples(priorities, st.integers(0, 2**63), st.integers(0, 2**24 - 1)),
        max_size=50,
        unique_by=lambda put: put[1:],
    )
)
def test_name_order_is_delivery_order(codec: ModuleType, puts: list[tuple[int, int, int]]) -> None:
    names = [codec.spool_name(priority, f"{t:016x}0000abcd{seq:06x}", "peer", "ch", 1, 2) for priority, t, seq in puts]
    delivered = [codec.parse_spool_name(name) for name in sorted(names)]
    assert [(p, codec.id_time_ns(msg_id)) for p, msg_id, *_ in delivered] == sorted(
        (priority, t) for priority, t, _ in puts
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "+++++",
        "5" + "a" * 30 + "+p+c+1",
        "5" + "a" * 30 + "+p+c+1+0000000",
        "5" + "a" * 30 + "+p+c+1+0000000g",
        "5" + "a" * 30 + "+p++1+00000000",
        "5" + "a" * 30 + "++c+1+00000000",
        "5" + "a" * 30 + "+p+c++00000000",
        "5" + "a" * 30 + "+p+c+1A+00000000",
        "5" + "a" * 29 + "+p+c+1+00000000",
        "5" + "A" * 30 + "+p+c+1+00000000",
        "x" + "a" * 30 + "+p+c+1+00000000",
        ".5" + "a" * 30 + "+p+c+1+00000000",
        "5" + "a" * 30 + "+p+c+1+00000000+",
    ],
)
def test_malformed_spool_names_rejected(codec: ModuleType, name: str) -> None:
    with pytest.raises(ValueError):
        codec.parse_spool_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "5" + "a" * 30, "5" + "a" * 30 + "+", "5" + "a" * 30 + "+c+d", "5abc+c", "+c"],
)
def test_malformed_store_names_rejected(codec: ModuleType, name: str) -> None:
    with pytest.raises(ValueError):
        codec.parse_store_name(name)


def test_is_message_id(codec: ModuleType) -> None:
    assert codec.is_message_id("0123456789abcdef" + "0123456789abcd")
    assert codec.is_message_id("0" * 30)
    assert not codec.is_message_id("0" * 29)
    assert not codec.is_message_id("A" * 30)
    assert not codec.is_message_id("g" * 30)


def _outcome(function: Callable[..., object], *args: object) -> tuple[str, object]:
    """The result, or the kind of ValueError raised: what two twins must agree on."""
    try:
        return "ok", function(*args)
    except ValueError as exc:
        return "error", type(exc).__name__


@needs_compiled
@given(text=tricky)
def test_compiled_escape_matches_reference(text: str) -> None:
    assert compiled.escape(text) == reference.escape(text)
    assert compiled.compact(text) == reference.compact(text)
    assert compiled.is_message_id(text) == reference.is_message_id(text)


@needs_compiled
@given(field=st.text(st.sampled_from("%0123456789ABCDEFabcdefé~+"), max_size=30) | st.text())
def test_compiled_unescape_matches_reference(field: str) -> None:
    assert _outcome(compiled.unescape, field) == _outcome(reference.unescape, field)


@needs_compiled
@given(priority=priorities, msg_id=ids, peer=tricky, channel=tricky, size=sizes, crc=crcs)
def test_compiled_names_match_reference(
    priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int
) -> None:
    peer_field, channel_field = (
        reference.escape(peer or "p"),
        reference.escape(channel or "c"),
    )
    name = reference.spool_name(priority, msg_id, peer_field, channel_field, size, crc)
    assert compiled.spool_name(priority, msg_id, peer_field, channel_field, size, crc) == name
    assert compiled.parse_spool_name(name) == reference.parse_spool_name(name)
    store = reference.store_name(priority, msg_id, peer_field)
    assert compiled.store_name(priority, msg_id, peer_field) == store
    assert compiled.parse_store_name(store) == reference.parse_store_name(store)


name_parts = st.lists(st.text(st.sampled_from("0123456789abcdefA+é%~"), max_size=40) | tricky, max_size=7)


@needs_compiled
@given(
    parts=name_parts,
    head=st.sampled_from(["", "5" + "a" * 30, "0" + "f" * 30, "9" * 31]),
)
def test_compiled_parsing_matches_reference(parts: list[str], head: str) -> None:
    name = "+".join([head, *parts]) if head else "+".join(parts)
    for parse in ("parse_spool_name", "parse_store_name"):
        assert _outcome(getattr(compiled, parse), name) == _outcome(getattr(reference, parse), name)


@pytest.mark.parametrize(
    "args",
    [
        (10, "a" * 30, "p", "c", 1, 1),
        (-1, "a" * 30, "p", "c", 1, 1),
        (5, "A" * 30, "p", "c", 1, 1),
        (5, "a" * 29, "p", "c", 1, 1),
        (5, "a" * 30, "", "c", 1, 1),
        (5, "a" * 30, "p/q", "c", 1, 1),
        (5, "a" * 30, "p", "c+d", 1, 1),
        (5, "a" * 30, "p", "x" * 81, 1, 1),
        (5, "a" * 30, "p", "é", 1, 1),
        (5, "a" * 30, "p", "~abc", 1, 1),
    ],
)
def test_spool_name_refuses_what_would_not_parse(codec: ModuleType, args: tuple) -> None:
    with pytest.raises(ValueError):
        codec.spool_name(*args)


@needs_compiled
def test_compiled_exports_its_id_generator_as_a_capsule() -> None:
    assert type(compiled._C_API).__name__ == "PyCapsule"
