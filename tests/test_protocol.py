"""The manifest as both ends read it: entries of six elements, or with an offset into a
shared part and a delay (the relay's batch files and delayed messages)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from dropr import protocol
from dropr._impl import codec
from dropr.limits import MAX_DELAY_SECONDS, Limits
from dropr.protocol import Entry, RequestError

try:
    from dropr import _manifest as _compiled
except ImportError:
    _compiled = None

LIMITS = Limits()
FIRST, SECOND, THIRD = "1" * 30, "2" * 30, "3" * 30


def parse(entries: list[list[Any]]) -> list[Entry]:
    return protocol.parse_manifest(msgpack.packb(entries), LIMITS, 1 << 30)


def test_six_elements_are_a_whole_part_due_at_once() -> None:
    assert parse([[FIRST, "c", 5, FIRST, 3, 7]]) == [Entry(FIRST, "c", 5, FIRST, 3, 7, -1, 0)]


def test_a_part_shared_by_messages_at_offsets() -> None:
    entries = parse(
        [
            [SECOND, "c", 5, FIRST, 4, 1, 100, 2500],
            [FIRST, "c", 5, FIRST, 100, 2, 0, 2500],
            [THIRD, "d", 0, "other", 0, 0, 0],
        ]
    )
    assert [(e.id, e.offset, e.delay_ms) for e in entries] == [(SECOND, 100, 2500), (FIRST, 0, 2500), (THIRD, 0, 0)]
    ranges = protocol.part_ranges(entries)
    assert [e.id for e in ranges[FIRST]] == [FIRST, SECOND] and [e.id for e in ranges["other"]] == [THIRD]


def test_a_delay_comes_after_an_offset() -> None:
    (entry,) = parse([[FIRST, "c", 5, FIRST, 3, 7, 0, MAX_DELAY_SECONDS * 1000]])
    assert (entry.offset, entry.delay_ms) == (0, MAX_DELAY_SECONDS * 1000)


def test_ranges_may_touch_and_be_empty() -> None:
    entries = parse([[SECOND, "c", 5, "p", 5, 0, 10], [FIRST, "c", 5, "p", 0, 0, 10], [THIRD, "c", 5, "p", 1, 0, 15]])
    assert [e.id for e in protocol.part_ranges(entries)["p"]] == [FIRST, SECOND, THIRD]


BAD = {
    "five-elements": [[FIRST, "c", 5, FIRST, 3]],
    "nine-elements": [[FIRST, "c", 5, FIRST, 3, 7, 0, 0, 1]],
    "offset-negative": [[FIRST, "c", 5, FIRST, 3, 7, -1]],
    "offset-text": [[FIRST, "c", 5, FIRST, 3, 7, "0"]],
    "offset-bool": [[FIRST, "c", 5, FIRST, 3, 7, True]],
    "delay-negative": [[FIRST, "c", 5, FIRST, 3, 7, 0, -1]],
    "delay-float": [[FIRST, "c", 5, FIRST, 3, 7, 0, 1.5]],
    "delay-too-long": [[FIRST, "c", 5, FIRST, 3, 7, 0, MAX_DELAY_SECONDS * 1000 + 1]],
    "shared-part-without-offsets": [[FIRST, "c", 5, "p", 1, 0], [SECOND, "c", 5, "p", 1, 0]],
    "shared-part-one-without-offset": [[FIRST, "c", 5, "p", 1, 0, 0], [SECOND, "c", 5, "p", 1, 0]],
    "overlapping-ranges": [[FIRST, "c", 5, "p", 10, 0, 0], [SECOND, "c", 5, "p", 1, 0, 9]],
    "same-range-twice": [[FIRST, "c", 5, "p", 1, 0, 3], [SECOND, "c", 5, "p", 1, 0, 3]],
    "duplicate-id-in-ranges": [[FIRST, "c", 5, "p", 1, 0, 0], [FIRST, "c", 5, "p", 1, 0, 1]],
    "entry-text": ["x"],
    "id-upper-case": [["A" * 30, "c", 5, "p", 1, 0, 0, 0]],
    "id-number": [[7, "c", 5, "p", 1, 0, 0, 0]],
    "channel-list": [[FIRST, ["c"], 5, "p", 1, 0, 0, 0]],
    "channel-empty": [[FIRST, "", 5, "p", 1, 0, 0, 0]],
    "priority-ten": [[FIRST, "c", 10, "p", 1, 0, 0, 0]],
    "priority-bool": [[FIRST, "c", True, "p", 1, 0, 0, 0]],
    "part-list": [[FIRST, "c", 5, ["p"], 1, 0, 0, 0]],
    "part-map": [[FIRST, "c", 5, {"p": 1}, 1, 0, 0, 0]],
    "part-reserved": [[FIRST, "c", 5, protocol.PAYLOAD, 1, 0, 0, 0]],
    "size-float": [[FIRST, "c", 5, "p", 1.0, 0, 0, 0]],
    "crc-negative": [[FIRST, "c", 5, "p", 1, -1, 0, 0]],
    "crc-over-32-bits": [[FIRST, "c", 5, "p", 1, 1 << 32, 0, 0]],
    # the second entry of each repeats a channel or a part found valid, its other fields wrong
    "known-part-bad-size": [[FIRST, "c", 5, "p", 1, 0, 0, 0], [SECOND, "c", 5, "p", -1, 0, 1, 0]],
    "known-channel-bad-delay": [[FIRST, "c", 5, FIRST, 1, 0, 0, 0], [SECOND, "c", 5, SECOND, 1, 0, 0, -5]],
    "part-empty": [[FIRST, "c", 5, "", 1, 0, 0, 0]],
    "part-reserved-known-as-a-channel": [[FIRST, "payload", 5, FIRST, 1, 0, 0, 0], [SECOND, "c", 5, "payload", 1, 0]],
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_manifests_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(BAD[name])
    assert info.value.status == 400 and "manifest" in info.value.reason


def test_the_fields_are_named_once() -> None:
    assert protocol.MANIFEST_FIELDS[6:] == ("offset", "delay_ms") and protocol.OPTIONAL_FIELDS == 2


ODD_VALUES = [None, True, 0, -1, 5, 9, 10, 2**32 - 1, 2**32, 2**64 - 1, -(2**63), 1.5, "", "c", "1" * 30, "A" * 30,
              "payload", "client", b"x", [], ["c"], {}, "a" * 300, "\x00", "ü" * 15]  # fmt: skip


def _odd_items(count: int) -> list[Any]:
    """Manifest entries near valid ones, each field now and then of a wrong type or range."""
    rng = random.Random(7)
    items: list[Any] = []
    for index in range(count):
        item = [f"{index:030x}", "c", 5, rng.choice(["p", f"{index:030x}"]), 1, 0, 10 * index, 0][
            : rng.choice([6, 7, 8, 8])
        ]
        for field in range(len(item)):
            if rng.random() < 0.15:
                item[field] = rng.choice(ODD_VALUES)
        items.append(item if rng.random() < 0.97 else rng.choice(ODD_VALUES))
    return items


@pytest.mark.skipif(_compiled is None, reason="not built")
def test_the_quick_check_takes_only_entries_the_full_check_takes_as_they_are() -> None:
    """Each entry of the compiled ``quick_entries``: the same as the full check's, and it
    refuses what that refuses (the plain twin is the full check). Known channels and parts
    are what take an entry the quick way."""
    channels: set[str] = {"c"}
    parts: set[str] = {"p"}
    asked: list[Any] = []

    def slow(i: int, it: Any, ch: set[str], pa: set[str]) -> Entry:
        asked.append(it)
        return protocol._entry(i, it, ch, pa, limits=LIMITS)

    quick = 0
    for item in _odd_items(3000):
        asked.clear()
        try:
            full: Entry | str = protocol._entry(0, item, set(channels), set(parts), limits=LIMITS)
        except RequestError as exc:
            full = exc.reason
        try:
            [made] = _compiled.quick_entries([item], channels, parts, protocol.MAX_DELAY_MS, Entry, slow)
        except RequestError as exc:
            made = exc.reason
        assert made == full and type(made) is type(full), item
        quick += not asked
    assert 500 < quick < 3000  # both ways were taken


@pytest.mark.skipif(_compiled is None, reason="not built")
@pytest.mark.parametrize("fields", [6, 7, 8])  # a plain message, a batch file's, one due later
def test_the_quick_check_takes_the_entries_a_relay_sends_of_each_length(fields: int) -> None:
    msg_id = codec.new_id()
    item = [msg_id, "c", 5, msg_id if fields == 6 else "p", 1, 0, 10, 250][:fields]
    asked: list[Any] = []

    def slow(i: int, it: Any, ch: set[str], pa: set[str]) -> Entry:
        asked.append(it)
        return protocol._entry(i, it, ch, pa, limits=LIMITS)

    [made] = _compiled.quick_entries([item], {"c"}, {"p"}, protocol.MAX_DELAY_MS, Entry, slow)
    assert asked == [] and type(made) is Entry
    assert made == protocol._entry(0, item, {"c"}, {"p"}, limits=LIMITS)
