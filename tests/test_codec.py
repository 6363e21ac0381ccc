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
counts = st.integers(1, reference.MAX_BATCH_COUNT)
delays = st.integers(0, 2**64 - 1)
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
@given(priority=priorities, msg_id=ids, peer=tricky, channel=tricky, size=sizes, crc=crcs, count=counts, delay=delays)
def test_spool_name_round_trip_and_safety(
    codec: ModuleType,
    priority: int,
    msg_id: str,
    peer: str,
    channel: str,
    size: int,
    crc: int,
    count: int,
    delay: int,
) -> None:
    peer_field, channel_field = (
        codec.escape(peer or "p"),
        codec.escape(channel * 50 or "c"),
    )
    count = _fitting(msg_id, count)
    name = codec.spool_name(priority, msg_id, peer_field, channel_field, size, crc, count, delay)
    assert len(name.encode()) <= 255
    assert "/" not in name and "\x00" not in name and not name.startswith(".")
    assert codec.parse_spool_name(name) == (priority, msg_id, peer_field, channel_field, size, crc, count, delay)
    assert (name.count("+") == 5) == (count > 1 or delay > 0)


def _fitting(msg_id: str, count: int) -> int:
    """``count``, or less where the batch's sequence numbers would run past the id's 6 digits."""
    return min(count, 2**24 - int(msg_id[24:], 16))


def test_a_batch_must_fit_its_first_ids_sequence(codec: ModuleType) -> None:
    last = "0" * 24 + "fffffe"
    assert codec.parse_spool_name(codec.spool_name(1, last, "p", "c", 1, 1, 2))[6] == 2
    for name_id, count in ((last, 3), ("0" * 24 + "ffffff", 2)):
        with pytest.raises(ValueError):
            codec.spool_name(1, name_id, "p", "c", 1, 1, count)
        with pytest.raises(ValueError):
            codec.parse_spool_name(f"1{name_id}+p+c+1+00000001+n{count:x}")
    assert codec.parse_spool_name("1" + "0" * 24 + "ffffff+p+c+1+00000001+d5")[6:] == (1, 5)


def test_plain_names_stay_as_they_were(codec: ModuleType) -> None:
    msg_id = "18ed3fae94f12f3a7b11b4f9000009"
    assert codec.spool_name(3, msg_id, "p", "c", 200, 0xABC) == f"3{msg_id}+p+c+c8+00000abc"
    assert codec.parse_spool_name(f"3{msg_id}+p+c+c8+00000abc") == (3, msg_id, "p", "c", 200, 0xABC, 1, 0)


def test_extra_examples(codec: ModuleType) -> None:
    msg_id = "18ed3fae94f12f3a7b11b4f9000009"
    head = f"3{msg_id}+p+c+c8+00000abc"
    assert codec.spool_name(3, msg_id, "p", "c", 200, 0xABC, 100, 1000) == head + "+n64.d3e8"
    assert codec.spool_name(3, msg_id, "p", "c", 200, 0xABC, 100) == head + "+n64"
    assert codec.spool_name(3, msg_id, "p", "c", 200, 0xABC, 1, 1000) == head + "+d3e8"
    assert codec.parse_spool_name(head + "+n64.d3e8")[6:] == (100, 1000)
    assert codec.parse_spool_name(head + "+d3e8")[6:] == (1, 1000)
    worst = codec.spool_name(
        9, "f" * 24 + "000000", "p" * 80, "c" * 80, 2**64 - 1, 2**32 - 1, codec.MAX_BATCH_COUNT, 2**64 - 1
    )
    assert len(worst) <= 255 and codec.parse_spool_name(worst)[6:] == (codec.MAX_BATCH_COUNT, 2**64 - 1)


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
        "5" + "a" * 30 + "+p+c+1+00000000+n1",
        "5" + "a" * 30 + "+p+c+1+00000000+n0",
        "5" + "a" * 30 + "+p+c+1+00000000+n02",
        "5" + "a" * 30 + "+p+c+1+00000000+d0",
        "5" + "a" * 30 + "+p+c+1+00000000+d",
        "5" + "a" * 30 + "+p+c+1+00000000+n",
        "5" + "a" * 30 + "+p+c+1+00000000+n2.",
        "5" + "a" * 30 + "+p+c+1+00000000+.d2",
        "5" + "a" * 30 + "+p+c+1+00000000+d2.n2",
        "5" + "a" * 30 + "+p+c+1+00000000+n2.n3",
        "5" + "a" * 30 + "+p+c+1+00000000+n2..d3",
        "5" + "a" * 30 + "+p+c+1+00000000+n2.d3+",
        "5" + "a" * 30 + "+p+c+1+00000000+n2A",
        "5" + "a" * 30 + "+p+c+1+00000000+x2",
        "5" + "a" * 30 + "+p+c+1+00000000+n100001",
        "5" + "a" * 30 + "+p+c+1+00000000+n1000000",
        "5" + "a" * 30 + "+p+c+1+00000000+d10000000000000000",
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
@given(priority=priorities, msg_id=ids, peer=tricky, channel=tricky, size=sizes, crc=crcs, count=counts, delay=delays)
def test_compiled_names_match_reference(
    priority: int, msg_id: str, peer: str, channel: str, size: int, crc: int, count: int, delay: int
) -> None:
    peer_field, channel_field = (
        reference.escape(peer or "p"),
        reference.escape(channel or "c"),
    )
    count = _fitting(msg_id, count)
    name = reference.spool_name(priority, msg_id, peer_field, channel_field, size, crc, count, delay)
    assert compiled.spool_name(priority, msg_id, peer_field, channel_field, size, crc, count, delay) == name
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


@needs_compiled
@given(extra=st.text(st.sampled_from("nd.0123456789abcdefA+x"), max_size=30))
def test_compiled_extra_parsing_matches_reference(extra: str) -> None:
    name = "5" + "a" * 30 + "+p+c+1+00000000+" + extra
    assert _outcome(compiled.parse_spool_name, name) == _outcome(reference.parse_spool_name, name)


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
        (5, "a" * 30, "p", "c", 1, 1, 0),
        (5, "a" * 30, "p", "c", 1, 1, -1),
        (5, "a" * 30, "p", "c", 1, 1, (1 << 20) + 1),
        (5, "a" * 30, "p", "c", 1, 1, 2**70),
        (5, "a" * 30, "p", "c", 1, 1, True),
        (5, "a" * 30, "p", "c", 1, 1, 2, -1),
        (5, "a" * 30, "p", "c", 1, 1, 2, 2**64),
        (5, "a" * 30, "p", "c", 1, 1, 2, 1.5),
    ],
)
def test_spool_name_refuses_what_would_not_parse(codec: ModuleType, args: tuple) -> None:
    with pytest.raises(ValueError):
        codec.spool_name(*args)


@needs_compiled
def test_compiled_exports_its_id_generator_as_a_capsule() -> None:
    assert type(compiled._C_API).__name__ == "PyCapsule"


def test_new_ids_are_one_put_time_and_consecutive(codec: ModuleType) -> None:
    before = time.time_ns()
    made = codec.new_ids(500)
    after = time.time_ns()
    assert len(set(made)) == 500 and made == sorted(made)
    assert {msg_id[:24] for msg_id in made} == {made[0][:24]}
    assert before <= codec.id_time_ns(made[0]) <= after
    assert codec.batch_ids(made[0], 500) == made
    assert codec.new_ids(1)[0] > made[-1]
    assert codec.new_id() > made[-1]


def test_new_ids_never_straddle_the_sequence_wrap(codec: ModuleType) -> None:
    for _ in range(4):
        made = codec.new_ids(codec.MAX_BATCH_COUNT)
        assert made == sorted(made) and len(set(made)) == len(made)


def test_new_ids_refuse_a_bad_count(codec: ModuleType) -> None:
    for count in (0, -1, codec.MAX_BATCH_COUNT + 1, 2.0, True):
        with pytest.raises(ValueError):
            codec.new_ids(count)


def test_batch_ids_carry_into_higher_digits(codec: ModuleType) -> None:
    first = "18ed3fae94f12f3a7b11b4f900fffe"
    assert codec.batch_ids(first, 4) == [
        "18ed3fae94f12f3a7b11b4f900fffe",
        "18ed3fae94f12f3a7b11b4f900ffff",
        "18ed3fae94f12f3a7b11b4f9010000",
        "18ed3fae94f12f3a7b11b4f9010001",
    ]
    for bad in (("0" * 24 + "ffffff", 2), ("A" * 30, 2), ("0" * 29, 2), ("0" * 30, 0)):
        with pytest.raises(ValueError):
            codec.batch_ids(*bad)


batch_entries = st.lists(st.tuples(ids, st.integers(0, 2**48), crcs), min_size=2, max_size=40)


@with_fixture
@given(entries=batch_entries)
def test_batch_index_round_trip(codec: ModuleType, entries: list[tuple[str, int, int]]) -> None:
    index = codec.batch_index(entries)
    assert len(index) == codec.batch_index_size(len(entries)) == 12 + 42 * len(entries)
    assert index.startswith(codec.BATCH_MAGIC)
    parsed = codec.parse_batch_index(index + b"payloads follow")
    assert [(i, size, crc) for i, _, size, crc in parsed] == entries
    offset = len(index)
    for _, at, size, _ in parsed:
        assert at == offset
        offset += size


@needs_compiled
@given(entries=batch_entries)
def test_compiled_batch_index_matches_reference(entries: list[tuple[str, int, int]]) -> None:
    index = reference.batch_index(entries)
    assert compiled.batch_index(entries) == index
    assert compiled.parse_batch_index(index) == reference.parse_batch_index(index)


@needs_compiled
@given(
    data=st.binary(max_size=200)
    | st.builds(
        lambda n, tail: b"dropr-b1" + n.to_bytes(4, "big") + tail, st.integers(0, 2**32 - 1), st.binary(max_size=200)
    )
)
def test_compiled_batch_index_parsing_matches_reference(data: bytes) -> None:
    assert _outcome(compiled.parse_batch_index, data) == _outcome(reference.parse_batch_index, data)


def test_batch_index_refuses_what_is_not_one(codec: ModuleType) -> None:
    good = codec.batch_index([("a" * 30, 1, 2), ("b" * 30, 3, 4)])
    for bad in (
        b"",
        good[:11],
        b"dropr-b2" + good[8:],
        good[:8] + (1).to_bytes(4, "big") + good[12:],
        good[:-1],
        good[:12] + b"G" + good[13:],
    ):
        with pytest.raises(ValueError):
            codec.parse_batch_index(bad)
    for entries in ([], [("a" * 30, 1, 2)], [("a" * 30, 1, 2), ("A" * 30, 1, 2)]):
        with pytest.raises(ValueError):
            codec.batch_index(entries)
