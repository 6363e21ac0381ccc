"""Puts into a spool whose files are unlinked once read, beside one whose files are reused.

What the spool's ``free/`` is for (see ``dropr.spool``), measured at the file system alone:
in rounds, a producer writes ``--count`` 200-byte files (create, write, close, rename; or,
reusing, rename out of ``free/``, open, cut, write, close, rename) and a reader then reads
each and unlinks it, or renames it into ``free/``. On a file system without a journal a
create right after many deletes is slow, so the unlinking spool's later rounds show it; the
reusing one creates files only in its first round. The two kinds alternate, each in a fresh
directory after a ``sync``; each line gives a kind's put rates by round and its system CPU
per put.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

PAYLOAD = b"x" * 200


def produce(spool: str, free: str, count: int, reuse: bool, round_no: int) -> tuple[float, float]:
    """Puts/s and system CPU µs per put of one round."""
    pool = os.listdir(free) if reuse else []
    started, cpu = time.perf_counter(), os.times().system
    for i in range(count):
        tmp, final = os.path.join(spool, f".{i}"), os.path.join(spool, f"{round_no}-{i}")
        if pool:
            os.rename(os.path.join(free, pool.pop()), tmp)
            fd = os.open(tmp, os.O_WRONLY)
            os.ftruncate(fd, len(PAYLOAD))
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, PAYLOAD)
        os.close(fd)
        os.rename(tmp, final)
    return count / (time.perf_counter() - started), (os.times().system - cpu) / count * 1e6


def dispose(spool: str, free: str, count: int, reuse: bool, round_no: int) -> None:
    for i in range(count):
        path = os.path.join(spool, f"{round_no}-{i}")
        with open(path, "rb") as file:
            file.read()
        if reuse:
            os.rename(path, os.path.join(free, f"{round_no}-{i}"))
        else:
            os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="files per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per cell (default 4)")
    parser.add_argument("--cells", type=int, default=2, help="cells of each kind, alternating (default 2)")
    parser.add_argument("--dir", default=None, help="where work directories go (default: temp dir)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dropr-reuse-", dir=args.dir)
    try:
        for _ in range(args.cells):
            for reuse in (False, True):
                subprocess.run(["sync"], check=True)
                cell = tempfile.mkdtemp(dir=root)
                spool, free = os.path.join(cell, "spool"), os.path.join(cell, "free")
                os.mkdir(spool)
                os.mkdir(free)
                rounds = []
                for round_no in range(args.rounds):
                    rounds.append(produce(spool, free, args.count, reuse, round_no))
                    dispose(spool, free, args.count, reuse, round_no)
                rates = ", ".join(f"{rate:,.0f}" for rate, _ in rounds)
                cpu = ", ".join(f"{us:.0f}" for _, us in rounds)
                print(f"{'reused' if reuse else 'unlinked'}: puts/s {rates}; system µs a put {cpu}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
