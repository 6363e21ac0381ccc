"""A store's moves in batches: both twins on real directories, each call's rules and failures."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dropr import _moves_py

try:
    from dropr import _moves as _compiled
except ImportError:
    _compiled = None

TWINS = [
    pytest.param(_moves_py, id="python"),
    pytest.param(_compiled, id="compiled", marks=pytest.mark.skipif(_compiled is None, reason="not built")),
]


def _dirs(tmp_path: Path, *names: str) -> list[str]:
    paths = [tmp_path / name for name in names]
    for path in paths:
        path.mkdir()
    return [str(path) for path in paths]


def _files(directory: str, count: int) -> list[str]:
    names = [f"m{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        Path(directory, name).write_bytes(b"x" * i)
    return names


@pytest.mark.parametrize("moves", TWINS)
def test_rename_passes_over_names_gone_and_stops_at_the_limit(moves: ModuleType, tmp_path: Path) -> None:
    queue, claimed = _dirs(tmp_path, "queue", "claimed")
    names = _files(queue, 6)
    listed = [names[0], "gone", names[1], names[2], names[3], names[4], names[5]]
    moved, after = moves.rename_files(queue, claimed, listed, 0, 3)
    assert (moved, after) == (names[:3], 4)
    assert moves.rename_files(queue, claimed, listed, after, 10) == (names[3:], len(listed))
    assert sorted(os.listdir(claimed)) == names and os.listdir(queue) == []
    assert moves.rename_files(queue, claimed, listed, 2, 0) == ([], 2)
    assert moves.rename_files(queue, claimed, listed, 99, 5) == ([], 99)


@pytest.mark.parametrize("moves", TWINS)
def test_a_failure_other_than_a_name_gone_raises_after_the_moves_before_it(moves: ModuleType, tmp_path: Path) -> None:
    queue, claimed = _dirs(tmp_path, "queue", "claimed")
    names = _files(queue, 3)
    (Path(claimed) / names[1]).mkdir()  # a file cannot replace a directory
    with pytest.raises(IsADirectoryError) as raised:
        moves.rename_files(queue, claimed, names, 0, 3)
    assert raised.value.filename == os.path.join(queue, names[1])
    assert sorted(os.listdir(queue)) == names[1:]
    for call in (
        lambda: moves.rename_files(queue, str(tmp_path / "missing"), names, 0, 1),
        lambda: moves.lease_files(str(tmp_path / "missing"), names, 1),
        lambda: moves.settle_files(str(tmp_path / "missing"), claimed, names, [1, 1, 1], False),
    ):
        with pytest.raises(FileNotFoundError):
            call()
    assert sorted(os.listdir(queue)) == names[1:]
    with pytest.raises(ValueError):
        moves.rename_files(queue, claimed, names, -1, 1)
    with pytest.raises(ValueError):
        moves.settle_files(queue, claimed, names, [1], False)


@pytest.mark.parametrize("moves", TWINS)
@pytest.mark.parametrize("count", [3, 50])  # below and above the batch the compiled twin opens directories for
def test_a_claim_and_its_settling_pass_over_names_gone_in_a_batch_of_any_size(
    moves: ModuleType, tmp_path: Path, count: int
) -> None:
    queue, claimed, processed = _dirs(tmp_path, "queue", "claimed", "processed")
    names = _files(queue, count)
    listed = [name for pair in zip(names, [f"gone{i}" for i in range(count)], strict=True) for name in pair]
    assert moves.rename_files(queue, claimed, listed, 0, count) == (names, len(listed) - 1)
    token = time.time_ns()
    assert moves.lease_files(claimed, listed, token) == names
    tokens = [token if i % 3 else token + 1 for i in range(len(listed))]  # every third not its claimant's
    settled = moves.settle_files(claimed, processed, listed, tokens, False)
    assert settled == [bool(i % 3) and i % 2 == 0 for i in range(len(listed))]
    assert sorted(os.listdir(processed)) == [name for i, name in enumerate(listed) if settled[i]]
    assert sorted(os.listdir(processed) + os.listdir(claimed)) == names
    for call in (
        lambda: moves.rename_files(queue, str(tmp_path / "missing"), listed, 0, count),
        lambda: moves.lease_files(str(tmp_path / "missing"), listed, 1),
        lambda: moves.settle_files(claimed, str(tmp_path / "missing"), listed, tokens, False),
    ):
        with pytest.raises(FileNotFoundError):
            call()


@pytest.mark.parametrize("moves", TWINS)
def test_a_lease_sets_both_times_of_the_files_still_there(moves: ModuleType, tmp_path: Path) -> None:
    [claimed] = _dirs(tmp_path, "claimed")
    names = _files(claimed, 3)
    until_ns = time.time_ns() + 60 * 10**9
    assert moves.lease_files(claimed, [names[0], "gone", names[2]], until_ns) == [names[0], names[2]]
    for name in names[0], names[2]:
        info = os.lstat(os.path.join(claimed, name))
        assert (info.st_mtime_ns, info.st_atime_ns) == (until_ns, until_ns)
    assert os.lstat(os.path.join(claimed, names[1])).st_mtime_ns < until_ns


@pytest.mark.parametrize("moves", TWINS)
@pytest.mark.parametrize("count", [3, 50])
def test_link_counts_tell_the_files_shared_and_the_names_gone(moves: ModuleType, tmp_path: Path, count: int) -> None:
    [claimed] = _dirs(tmp_path, "claimed")
    names = _files(claimed, count)
    os.link(os.path.join(claimed, names[0]), os.path.join(claimed, "link"))
    os.symlink(names[1], os.path.join(claimed, "symlink"))  # its own entry, not followed
    listed = [*names, "gone", "link", "symlink"]
    counts = moves.link_counts(claimed, listed)
    infos = [os.lstat(os.path.join(claimed, name)) for name in [*names, "link", "symlink"]]
    expected = [(info.st_ino, info.st_nlink) for info in infos]
    assert counts == [*expected[:count], None, *expected[count:]]
    assert counts[0] == counts[count + 1] and counts[0][1] == 2 and counts[count + 2] != counts[1]
    with pytest.raises(FileNotFoundError):
        moves.link_counts(str(tmp_path / "missing"), listed)


def _claimed(moves: ModuleType, tmp_path: Path, target: str, count: int) -> tuple[str, str, list[str], int]:
    """``claimed/`` with ``count`` files leased by one token, and the directory ``target``."""
    claimed, into = _dirs(tmp_path, "claimed", target)
    names = _files(claimed, count)
    token = time.time_ns() + 60 * 10**9
    assert moves.lease_files(claimed, names, token) == names
    return claimed, into, names, token


@pytest.mark.parametrize("moves", TWINS)
def test_settling_moves_only_the_files_that_carry_their_token(moves: ModuleType, tmp_path: Path) -> None:
    claimed, processed, names, token = _claimed(moves, tmp_path, "processed", 4)
    tokens = [token, token + 1, token, token]
    os.unlink(os.path.join(claimed, names[2]))
    assert moves.settle_files(claimed, processed, names, tokens, False) == [True, False, False, True]
    assert sorted(os.listdir(processed)) == [names[0], names[3]]
    assert os.lstat(os.path.join(processed, names[0])).st_mtime_ns == token  # the lease stays on it
    assert os.listdir(claimed) == [names[1]]


@pytest.mark.parametrize("moves", TWINS)
def test_settling_back_to_the_queue_clears_the_lease_first(moves: ModuleType, tmp_path: Path) -> None:
    claimed, queue, names, token = _claimed(moves, tmp_path, "queue", 2)
    assert moves.settle_files(claimed, queue, names, [token, token], True) == [True, True]
    assert [os.lstat(os.path.join(queue, name)).st_mtime_ns for name in names] == [0, 0]


@pytest.mark.parametrize("moves", TWINS)
def test_reading_a_batch_stops_after_the_file_that_crosses_the_bytes_asked(moves: ModuleType, tmp_path: Path) -> None:
    [store] = _dirs(tmp_path, "store")
    names = _files(store, 5)  # 0, 1, 2, 3 and 4 bytes
    paths = [os.path.join(store, name) for name in names]
    paths.insert(2, os.path.join(store, "gone"))
    assert moves.read_files(paths, 1 << 20) == ([b"", b"x", None, b"xx", b"xxx", b"xxxx"], 6)
    assert moves.read_files(paths[1:], 3) == ([b"x", None, b"xx"], 3)
    assert moves.read_files(paths[4:], 0) == ([b"xxx"], 1)  # one file at least
    assert moves.read_files(paths[2:], 0) == ([None], 1)  # a file gone counts as that one
    assert moves.read_files([], 10) == ([], 0)
    big = os.urandom(300_000)
    Path(store, "big").write_bytes(big)
    assert moves.read_files([os.path.join(store, "big")], 0) == ([big], 1)
    with pytest.raises(IsADirectoryError):
        moves.read_files([paths[0], store], 100)


@contextlib.contextmanager
def _opened(*paths: str) -> Iterator[tuple[int, ...]]:
    fds = tuple(os.open(path, os.O_RDONLY) for path in paths)
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("moves", TWINS)
def test_the_names_absent_from_a_directory_keep_their_order(moves: ModuleType, tmp_path: Path) -> None:
    [queue] = _dirs(tmp_path, "queue")
    held = _files(queue, 2)
    os.symlink(os.path.join(queue, "nowhere"), os.path.join(queue, "link"))  # an entry, not followed
    names = [held[0], "a", "link", "b", held[1]]
    with _opened(queue) as (fd,):
        assert moves.absent_names(fd, names, [0, 1, 2, 3, 4]) == [1, 3]
        assert moves.absent_names(fd, names, [3, 0, 1]) == [3, 1]
        assert moves.absent_names(fd, names, []) == []


@pytest.mark.parametrize("moves", TWINS)
def test_linking_in_replaces_nothing_in_the_first_queue_and_removes_each_staged_file(
    moves: ModuleType, tmp_path: Path
) -> None:
    tmp, first, second = _dirs(tmp_path, "tmp", "first", "second")
    staged = [os.path.join(tmp, name) for name in _files(tmp, 3)]
    names = ["n0", "n1", "n2"]
    Path(first, "n1").write_bytes(b"held")
    Path(second, "n2").write_bytes(b"held too")  # another group's copy: left as it is
    with _opened(first, second) as fds:
        assert moves.link_files(staged, names, fds) == ([True, False, True], 0)
    assert os.listdir(tmp) == []
    assert Path(first, "n1").read_bytes() == b"held"
    assert [Path(first, name).read_bytes() for name in ("n0", "n2")] == [b"", b"xx"]
    assert sorted(os.listdir(second)) == ["n0", "n2"] and Path(second, "n2").read_bytes() == b"held too"
    assert os.stat(os.path.join(first, "n0")).st_ino == os.stat(os.path.join(second, "n0")).st_ino


@pytest.mark.parametrize("moves", TWINS)
def test_a_first_link_that_fails_stops_the_batch_with_its_errno(moves: ModuleType, tmp_path: Path) -> None:
    tmp, queue = _dirs(tmp_path, "tmp", "queue")
    staged = [os.path.join(tmp, name) for name in _files(tmp, 3)]
    os.unlink(staged[1])
    with _opened(queue) as fds:
        assert moves.link_files(staged, ["n0", "n1", "n2"], fds) == ([True], errno.ENOENT)
        assert moves.link_files([], [], fds) == ([], 0)
    assert os.listdir(queue) == ["n0"]
    assert os.listdir(tmp) == [os.path.basename(staged[2])]  # left as it was


@pytest.mark.parametrize("moves", TWINS)
def test_a_failure_after_the_first_link_raises_naming_the_staged_file(moves: ModuleType, tmp_path: Path) -> None:
    tmp, queue = _dirs(tmp_path, "tmp", "queue")
    staged = [os.path.join(tmp, name) for name in _files(tmp, 2)]
    with _opened(queue, staged[1]) as fds:  # the second "directory" is a file
        with pytest.raises(NotADirectoryError) as raised:
            moves.link_files(staged[:1], ["n0"], fds)
        with pytest.raises(ValueError):
            moves.link_files(staged, ["n0"], fds)
        with pytest.raises(ValueError):
            moves.link_files(staged, ["n0", "n1"], ())
    assert raised.value.filename == staged[0]
    assert os.listdir(queue) == ["n0"] and os.path.exists(staged[0])


@pytest.mark.parametrize("moves", TWINS)
def test_writing_a_batch_creates_new_files_only_and_stops_at_the_first_failure(
    moves: ModuleType, tmp_path: Path
) -> None:
    [tmp] = _dirs(tmp_path, "tmp")
    paths = [os.path.join(tmp, name) for name in ("a", "b", "c")]
    contents = [b"one", bytearray(b""), memoryview(os.urandom(300_000))]
    moves.write_files(paths, contents)
    assert [Path(path).read_bytes() for path in paths] == [bytes(c) for c in contents]
    os.symlink(os.path.join(tmp, "target"), os.path.join(tmp, "link"))  # not followed
    again = [os.path.join(tmp, "d"), os.path.join(tmp, "link"), os.path.join(tmp, "e")]
    with pytest.raises(FileExistsError) as raised:
        moves.write_files(again, [b"d", b"link", b"e"])
    assert raised.value.filename == again[1]
    assert sorted(os.listdir(tmp)) == ["a", "b", "c", "d", "link"] and Path(tmp, "d").read_bytes() == b"d"
    with pytest.raises(FileNotFoundError):
        moves.write_files([os.path.join(tmp, "gone", "f")], [b"f"])
    with pytest.raises(ValueError):
        moves.write_files(paths, [])
    moves.write_files([], [])
