"""How a deep queue costs the relay: picking the next batch out of N queued messages.

Fills a fresh directory with N spool names, then, in interleaved rounds, times taking the first
1000 in delivery order two ways: the compiled ``scan`` (plus parsing the names it returns)
against plain Python (``os.listdir``, ``sorted()``, ``parse_spool_name`` on the first 1000).
Prints one row per round and the median ratio. The directory is removed at the end.

    python bench/depth_scan.py --count 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from dropr import _codec, _codec_py, _scan

Batch = list[tuple[int, str, str, str, int, int]]


def fill(path: str, count: int) -> float:
    """Creates ``count`` empty spool-named files; returns the seconds it took."""
    rng = random.Random(count)
    started = time.perf_counter()
    for _ in range(count):
        name = _codec.spool_name(
            rng.randrange(10),
            _codec.new_id(),
            "http%3A%2F%2Fhost%2Fq",
            "common",
            rng.randrange(1 << 16),
            rng.getrandbits(32),
        )
        os.close(os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    return time.perf_counter() - started


def compiled_batch(path: str, limit: int) -> Batch:
    return [_codec.parse_spool_name(name) for name in _scan.scan(path, limit)]


def python_batch(path: str, limit: int) -> Batch:
    return [_codec_py.parse_spool_name(name) for name in sorted(os.listdir(path))[:limit]]


def timed(function: Callable[[str, int], Batch], path: str, limit: int) -> tuple[float, Batch]:
    started = time.perf_counter()
    batch = function(path, limit)
    return time.perf_counter() - started, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="queued messages (200000)")
    parser.add_argument("--limit", type=int, default=1000, help="batch size (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    args = parser.parse_args(argv)

    path = tempfile.mkdtemp(prefix="dropr-depth-")
    try:
        seconds = fill(path, args.count)
        print(f"filled {args.count} names in {seconds:.1f} s ({args.count / seconds:,.0f}/s)")
        print(f"{'round':>5} {'compiled ms':>12} {'python ms':>10} {'ratio':>6}")
        ratios = []
        for round_ in range(1, args.rounds + 1):
            fast, expected = timed(compiled_batch, path, args.limit)
            slow, got = timed(python_batch, path, args.limit)
            if got != expected:
                print("the two ways disagree", file=sys.stderr)
                return 1
            ratios.append(slow / fast)
            print(f"{round_:>5} {fast * 1e3:>12.1f} {slow * 1e3:>10.1f} {slow / fast:>6.2f}")
        print(f"median ratio (python / compiled) at depth {args.count}: {statistics.median(ratios):.2f}")
    finally:
        shutil.rmtree(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
