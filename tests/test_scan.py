"""Directory scanning: both twins on real directories, and the compiled one against the reference."""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import tempfile
from collections.abc import Iterator
from types import ModuleType

import pytest

from dropr import _codec_py as codec
from dropr import _scan_py as reference

try:
    from dropr import _scan as compiled
except ImportError:
    compiled = None


def _touch(directory: str | bytes, names: list[str] | list[bytes]) -> None:
    for name in names:
        os.close(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT, 0o600))


def _names(
    count: int,
    peers: tuple[str, ...] = ("peer",),
    seed: int = 7,
    slots: tuple[str, ...] = (),
    priorities: str = "0123456789",
) -> list[str]:
    """Spool-shaped names; peers are used as they are, so a test can give odd ones. With
    ``slots`` (8 hex digits each) ids start with one of them, so names share a few buckets."""
    rng = random.Random(seed)

    def put_time() -> str:
        return rng.choice(slots) + f"{rng.getrandbits(32):08x}" if slots else f"{rng.getrandbits(64):016x}"

    return [
        f"{rng.choice(priorities)}{put_time()}00c0ffee{i:06x}+{rng.choice(peers)}+common"
        f"+{rng.randrange(1000):x}+{rng.getrandbits(32):08x}"
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def deep() -> Iterator[tuple[str, list[str]]]:
    """A directory of 100k spool names, made once for both twins."""
    path = tempfile.mkdtemp(prefix="dropr-scan-")
    names = _names(100_000)
    _touch(path, names)
    yield path, names
    shutil.rmtree(path)


def test_order_and_limit(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _names(500)
    _touch(tmp_path, names)
    ordered = sorted(names)
    for limit in (1, 2, 10, 499, 500, 501, 10_000):
        assert scan.scan(str(tmp_path), limit) == ordered[:limit]
    assert scan.scan(str(tmp_path), 0) == []
    assert scan.scan(tmp_path, 3) == ordered[:3]
    assert scan.count(str(tmp_path)) == 500


def test_skipped_peers(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _names(300, peers=("a", "b", "http%3A%2F%2Fh", "~" + "0" * 32))
    _touch(tmp_path, names)
    for skip in (
        ["a"],
        {"a", "b"},
        ("http%3A%2F%2Fh",),
        ["~" + "0" * 32],
        ["nobody"],
        ["a", "b"],
    ):
        kept = sorted(name for name in names if name.split("+")[1] not in skip)
        assert scan.scan(str(tmp_path), 50, skip) == kept[:50]
        assert scan.scan(str(tmp_path), 1000, skip=skip) == kept


def test_store_names_and_their_client_field(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = [codec.store_name(p, f"{p:030x}", client) for p, client in enumerate("xyzxy")]
    _touch(tmp_path, names)
    assert scan.scan(str(tmp_path), 10) == sorted(names)
    assert scan.scan(str(tmp_path), 10, ["x"]) == sorted(n for n in names if not n.endswith("x"))


def test_hidden_and_other_names_ignored(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _names(20)
    others = [
        "." + names[0],
        ".tmp",
        "0" * 31,
        "0" * 30 + "+p",
        "README",
        "5" + "A" * 30 + "+p",
        "5" + "a" * 29 + "+p",
        "x" + "a" * 30 + "+p",
        "1" + "a" * 30 + "-p",
    ]
    _touch(tmp_path, names + others)
    (tmp_path / ("0" * 31 + "+dir")).mkdir()
    assert scan.scan(str(tmp_path), 100) == sorted(names + ["0" * 31 + "+dir"])
    assert scan.count(str(tmp_path)) == len(names) + len(others) - 2 + 1


def test_missing_directory(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing")
    for call in (
        lambda: scan.scan(missing, 10),
        lambda: scan.scan(missing, 0),
        lambda: scan.count(missing),
    ):
        with pytest.raises(FileNotFoundError) as caught:
            call()
        assert caught.value.filename == missing
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        scan.scan(str(tmp_path / "file"), 10)
    with pytest.raises(ValueError):
        scan.scan(str(tmp_path), -1)


def test_oldest_id_of_a_directory(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    assert scan.oldest(str(tmp_path)) == ""
    names = _names(300)
    _touch(tmp_path, names + ["." + "0" * 40, "0" * 31, "5" + "A" * 30 + "+p"])
    assert scan.oldest(tmp_path) == min(name[1:31] for name in names)
    store_names = [codec.store_name(p, f"{p + 1:030x}", "client") for p in (9, 0, 5)]
    (tmp_path / "store").mkdir()
    _touch(str(tmp_path / "store"), store_names)
    assert scan.oldest(str(tmp_path / "store")) == f"{1:030x}"
    with pytest.raises(FileNotFoundError):
        scan.oldest(str(tmp_path / "missing"))


def test_deep_directory(scan: ModuleType, deep: tuple[str, list[str]]) -> None:
    path, names = deep
    ordered = sorted(names)
    assert scan.scan(path, 1000) == ordered[:1000]
    assert scan.scan(path, 1) == ordered[:1]
    assert scan.scan(path, 1000, {"peer"}) == []
    assert scan.count(path) == 100_000
    assert scan.oldest(path) == min(name[1:31] for name in names)


@pytest.mark.skipif(compiled is None, reason="dropr._scan is not built")
def test_compiled_matches_reference_on_odd_names(tmp_path: pathlib.Path) -> None:
    names = _names(200, peers=("a", "b", "é", ""))
    raw = os.fsencode(tmp_path)
    odd = [
        b"5" + b"a" * 30 + b"+\xff+x",
        b"5" + b"a" * 30 + b"+\xc3\xa9",
        b"5" + b"b" * 30 + b"+",
        b"4" + b"c" * 30 + b"+\xef\xbf\xbd",
        b"4" + b"c" * 30 + b"+\xed\xb2\x80",
    ]
    _touch(raw, odd)
    _touch(tmp_path, names)
    for limit in (0, 1, 7, 100, 1000):
        for skip in ((), ["a"], ["é", ""], [os.fsdecode(b"\xff")]):
            assert compiled.scan(str(tmp_path), limit, skip) == reference.scan(str(tmp_path), limit, skip)
    assert compiled.count(str(tmp_path)) == reference.count(str(tmp_path))


def _queue_names(count: int, seed: int = 11) -> list[str]:
    """Spool names over a few priorities and time slices, so they share a few buckets."""
    slots = tuple(f"{0x18E00000 + i * 7:08x}" for i in range(4))
    return _names(count, peers=("a", "b"), seed=seed, slots=slots, priorities="059")


def _fill_queue(queue: pathlib.Path, names: list[str]) -> None:
    for name in names:
        (queue / name[: codec.BUCKET_LEN]).mkdir(exist_ok=True)
        _touch(str(queue / name[: codec.BUCKET_LEN]), [name])


def test_queue_order_limit_and_skip(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _queue_names(600)
    _fill_queue(tmp_path, names)
    ordered = sorted(names)
    for limit in (0, 1, 10, 150, 599, 600, 601):
        assert scan.scan_queue(str(tmp_path), limit) == ordered[:limit]
        assert scan.scan_queue(tmp_path, limit, ["a"]) == [n for n in ordered if "+a+" not in n][:limit]
    assert scan.scan_queue(str(tmp_path), 600, ["a", "b"]) == []
    assert scan.buckets(str(tmp_path)) == sorted({n[: codec.BUCKET_LEN] for n in names})
    assert len(scan.buckets(str(tmp_path))) == 12
    assert scan.count_queue(str(tmp_path)) == 600


def test_queue_ignores_what_is_not_a_bucketed_message(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _queue_names(20)
    _fill_queue(tmp_path, names)
    bucket = names[0][: codec.BUCKET_LEN]
    stray = "9ffffffff" + names[0][codec.BUCKET_LEN :]  # in a bucket that is not its own
    _touch(str(tmp_path / bucket), [stray, ".hidden", "tmp-file"])
    _touch(str(tmp_path), [names[1]])  # a message name at the top: not in any bucket
    for odd in ("tmp", "0123", "0123456789", "X18e00000", "018E00000"):
        (tmp_path / odd).mkdir()
        _touch(str(tmp_path / odd), [names[2]])
    assert scan.scan_queue(str(tmp_path), 100) == sorted(names)
    assert scan.buckets(str(tmp_path)) == sorted({n[: codec.BUCKET_LEN] for n in names})
    assert scan.count_queue(str(tmp_path)) == 20 + 2


def test_names_with_extra_fields_are_scanned_and_skipped_as_others(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _queue_names(100)
    extra = [n + suffix for n, suffix in zip(names, ["+n2", "+d3e8", "+n64.d3e8"] * 40, strict=False)]
    _fill_queue(tmp_path, extra)
    assert scan.scan_queue(str(tmp_path), 100) == sorted(extra)
    assert scan.scan_queue(str(tmp_path), 100, ["a"]) == sorted(n for n in extra if "+a+" not in n)


@pytest.mark.parametrize(
    ("suffix", "messages"),
    [
        ("", 1),
        ("+n2", 2),
        ("+n64", 100),
        ("+n64.d3e8", 100),
        ("+d3e8", 1),
        ("+n100000", 1 << 20),
        ("+n100001", 1),
        ("+n1000000", 1),
        ("+n1", 1),
        ("+n02", 1),
        ("+n", 1),
        ("+n2x", 1),
        ("+nA", 1),
    ],
)
def test_a_batch_file_counts_as_its_messages(
    scan: ModuleType, tmp_path: pathlib.Path, suffix: str, messages: int
) -> None:
    names = _queue_names(3)
    _fill_queue(tmp_path, [names[0] + suffix, *names[1:]])
    _touch(str(tmp_path / names[1][: codec.BUCKET_LEN]), ["not-a-message+p+c+1+00000000+n64"])
    assert scan.count_queue(str(tmp_path)) == messages + 3
    assert scan.count(str(tmp_path / names[0][: codec.BUCKET_LEN])) >= 1


def test_queue_reads_only_the_buckets_it_needs(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    first = [f"0{0x18E00000:08x}{i:022x}+p+c+1+00000000" for i in range(10)]
    _fill_queue(tmp_path, first)
    (tmp_path / f"0{0x18E00001:08x}").write_bytes(b"")  # a later bucket that cannot be read
    assert scan.scan_queue(str(tmp_path), 10) == first
    with pytest.raises(NotADirectoryError):
        scan.scan_queue(str(tmp_path), 11)


def test_queue_reads_the_buckets_listed_and_passes_over_a_gone_one(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _queue_names(300)
    _fill_queue(tmp_path, names)
    listed = scan.buckets(str(tmp_path))
    chosen = [listed[1], "9ffffffff", listed[3]]  # "9ffffffff": removed since it was listed
    expected = sorted(n for n in names if n[: codec.BUCKET_LEN] in chosen)
    assert scan.scan_queue(str(tmp_path), 1000, (), chosen) == expected
    assert scan.scan_queue(str(tmp_path), 5, (), chosen) == expected[:5]


def test_queue_missing(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing")
    for call in (
        lambda: scan.scan_queue(missing, 10),
        lambda: scan.count_queue(missing),
        lambda: scan.buckets(missing),
    ):
        with pytest.raises(FileNotFoundError):
            call()
    with pytest.raises(ValueError):
        scan.scan_queue(str(tmp_path), -1)


@pytest.mark.skipif(compiled is None, reason="dropr._scan is not built")
def test_compiled_matches_reference_on_queues(tmp_path: pathlib.Path) -> None:
    for seed in range(5):
        queue = tmp_path / str(seed)
        queue.mkdir()
        _fill_queue(queue, _queue_names(random.Random(seed).randrange(1, 400), seed))
        for limit in (0, 1, 50, 1000):
            for skip in ((), ["a"], ["b", "x"]):
                assert compiled.scan_queue(str(queue), limit, skip) == reference.scan_queue(str(queue), limit, skip)
        assert compiled.count_queue(str(queue)) == reference.count_queue(str(queue))
        assert compiled.buckets(str(queue)) == reference.buckets(str(queue))


def test_find_names_by_id(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    wanted = "18e0000000000000c0ffee00000001"
    held = [codec.store_name(p, wanted, client) for p, client in ((9, "b"), (3, "a"), (9, "c%2Bd"))]
    others = [codec.store_name(9, f"{i:030x}", "a") for i in range(50)]
    near = ["." + held[0], held[0][:31] + "-a", "x" + wanted + "+a", "9" + wanted[:-1] + "f+a"]
    _touch(tmp_path, held + others + near)
    assert scan.find(str(tmp_path), wanted) == sorted(held)
    assert scan.find(str(tmp_path), "f" * 30) == []
    assert scan.find(str(tmp_path), others[7][1:31]) == [others[7]]


def test_find_checks_its_arguments(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    for bad in ("", "A" * 30, "a" * 29, "a" * 31, "g" * 30, "é" * 30, None):
        with pytest.raises(ValueError):
            scan.find(str(tmp_path), bad)
    with pytest.raises(FileNotFoundError):
        scan.find(str(tmp_path / "missing"), "a" * 30)


def test_find_in_a_deep_directory(scan: ModuleType, deep: tuple[str, list[str]]) -> None:
    path, names = deep
    for name in (names[0], names[-1], names[50_000]):
        assert scan.find(path, name[1:31]) == [name]


def _expected_tally(names: list[str]) -> dict[str, tuple[int, int, str]]:
    """The tally of ``names`` worked out from their fields, as a reader of the format would."""
    tally: dict[str, tuple[int, int, str]] = {}
    for name in names:
        head, peer, _channel, size, _crc = name.split("+")
        messages, total, oldest = tally.get(peer, (0, 0, head[1:]))
        tally[peer] = (messages + 1, total + int(size, 16), min(oldest, head[1:]))
    return tally


def test_queue_tally_per_peer(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    names = _queue_names(600)
    _fill_queue(tmp_path, names)
    tally = scan.tally_queue(str(tmp_path))
    assert tally == _expected_tally(names)
    assert sum(messages for messages, _, _ in tally.values()) == scan.count_queue(str(tmp_path))


def test_queue_tally_of_many_peers_and_what_it_passes_over(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    peers = tuple(f"peer{i}" for i in range(300)) + ("~" + "ab" * 16, "x" * 80)
    names = _names(3000, peers=peers, slots=("18e00000", "18e00001"), priorities="19")
    _fill_queue(tmp_path, names)
    bucket = tmp_path / names[0][: codec.BUCKET_LEN]
    head = names[0][: 1 + codec.ID_LEN]
    _touch(str(bucket), [
        head + "+" + "y" * 81 + "+c+1+00000000",  # a peer field too long
        head + "+p+c+1",  # no crc
        head + "+p+c+X+00000000",  # not a size
        head + "+p+c+10000000000000000+00000000",  # a size over 64 bits
        head + "+p",
        "." + names[0],
        "9ffffffff" + names[0][codec.BUCKET_LEN :],  # in a bucket not its own
    ])  # fmt: skip
    _touch(str(bucket), [head + "+q+c+fffffffffffffff0+00000000", head + "+q++0000000000000000001+00000000"])
    _touch(str(bucket), [head + "+r+c+ffffffffffffffff+00000000", head + "+r+c+ffffffffffffffff+00000001"])
    tally = scan.tally_queue(str(tmp_path))
    top = (1 << 64) - 1  # sums stop there
    assert tally == {**_expected_tally(names), "q": (2, top - 14, head[1:]), "r": (2, top, head[1:])}
    assert len(tally) == len(peers) + 2


def test_queue_tally_of_an_empty_or_missing_queue(scan: ModuleType, tmp_path: pathlib.Path) -> None:
    assert scan.tally_queue(str(tmp_path)) == {}
    (tmp_path / "018e00000").mkdir()
    assert scan.tally_queue(tmp_path) == {}
    with pytest.raises(FileNotFoundError):
        scan.tally_queue(str(tmp_path / "missing"))


@pytest.mark.skipif(compiled is None, reason="dropr._scan is not built")
def test_compiled_tally_matches_reference_on_odd_names(tmp_path: pathlib.Path) -> None:
    names = _queue_names(100)
    _fill_queue(tmp_path, names)
    bucket = names[0][: codec.BUCKET_LEN]
    raw = os.fsencode(tmp_path / bucket)
    head = names[0][: 1 + codec.ID_LEN].encode()
    _touch(raw, [head + b"+\xff+c+1+0", head + b"+\xc3\xa9+c+2+0", head + b"+\xed\xb2\x80+c+3+0", head + b"+p+c+a+"])
    assert compiled.tally_queue(str(tmp_path)) == reference.tally_queue(str(tmp_path))
