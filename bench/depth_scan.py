"""How a deep queue costs the relay: picking the next batch out of N queued messages.

Fills a fresh spool queue with N spool-named files, in buckets as producers leave them, then,
in interleaved rounds, times taking the first 1000 in delivery order three ways:

- compiled: ``scan_queue`` (reads the first buckets only) plus parsing the names it returns;
- listdir: plain Python as a relay without the compiled scan would do it: ``os.listdir`` of
  every bucket, ``sorted()``, ``parse_spool_name`` on the first 1000 — the ratio that counts
  is listdir ÷ compiled;
- python scan: the plain-Python twin of ``scan_queue``, for what the layout alone is worth.

Prints one row per round and the median ratios. The spool is removed at the end.

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

from dropr import _codec, _codec_py, _scan, _scan_py

Batch = list[tuple[int, str, str, str, int, int]]


def fill(queue: str, count: int) -> float:
    """Creates ``count`` empty spool-named files in their buckets; returns the seconds it took."""
    rng = random.Random(count)
    made: set[str] = set()
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
        bucket = os.path.join(queue, name[: _codec.BUCKET_LEN])
        if bucket not in made:
            os.makedirs(bucket, exist_ok=True)
            made.add(bucket)
        os.close(os.open(os.path.join(bucket, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    return time.perf_counter() - started


def compiled_batch(queue: str, limit: int) -> Batch:
    return [_codec.parse_spool_name(name) for name in _scan.scan_queue(queue, limit)]


def listdir_batch(queue: str, limit: int) -> Batch:
    names = [name for bucket in os.listdir(queue) for name in os.listdir(os.path.join(queue, bucket))]
    return [_codec_py.parse_spool_name(name) for name in sorted(names)[:limit]]


def python_scan_batch(queue: str, limit: int) -> Batch:
    return [_codec_py.parse_spool_name(name) for name in _scan_py.scan_queue(queue, limit)]


WAYS: dict[str, Callable[[str, int], Batch]] = {
    "compiled": compiled_batch,
    "listdir": listdir_batch,
    "python scan": python_scan_batch,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="queued messages (200000)")
    parser.add_argument("--limit", type=int, default=1000, help="batch size (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="dropr-depth-")
    queue = os.path.join(root, "queue")
    os.mkdir(queue)
    try:
        seconds = fill(queue, args.count)
        print(f"filled {args.count:,} names in {seconds:.1f} s ({args.count / seconds:,.0f}/s), "
              f"{len(_scan.buckets(queue))} buckets")  # fmt: skip
        print(f"{'round':>5} {'compiled ms':>12} {'listdir ms':>11} {'python scan ms':>15} {'listdir/compiled':>17}")
        ratios: dict[str, list[float]] = {"listdir": [], "python scan": []}
        for round_ in range(1, args.rounds + 1):
            ways = list(WAYS.items()) if round_ % 2 else list(WAYS.items())[::-1]
            times, batches = {}, {}
            for label, way in ways:
                started = time.perf_counter()
                batches[label] = way(queue, args.limit)
                times[label] = time.perf_counter() - started
            if any(batch != batches["compiled"] for batch in batches.values()):
                print("the ways disagree", file=sys.stderr)
                return 1
            for label in ratios:
                ratios[label].append(times[label] / times["compiled"])
            print(f"{round_:>5} {times['compiled'] * 1e3:>12.1f} {times['listdir'] * 1e3:>11.1f} "
                  f"{times['python scan'] * 1e3:>15.1f} {ratios['listdir'][-1]:>17.1f}")  # fmt: skip
        print(f"median ratio at depth {args.count:,}: listdir / compiled "
              f"{statistics.median(ratios['listdir']):.1f} (target >= 3), python scan / compiled "
              f"{statistics.median(ratios['python scan']):.1f}")  # fmt: skip
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
