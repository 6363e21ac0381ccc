"""Many producers at once, and producers killed with SIGKILL in the middle of puts.

Whatever happens, ``queue/`` holds only whole messages (each file's size and CRC-32 match
its name), every id a producer was given back is there, and ids never repeat.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from support import queued_files, soak

from dropr import _codec_py, spool

PEER = "http://127.0.0.1:8080/q"

PRODUCER = textwrap.dedent(
    """
    import os, random, sys
    import dropr
    root, count, sync, peer = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "sync", sys.argv[4]
    rnd = random.Random(os.getpid())
    i = 0
    while count < 0 or i < count:
        payload = os.urandom(rnd.choice((0, 1, 200, 4096, 65536, 300_000)))
        msg_id = dropr.fastput(payload, peer, channel=f"ch{i % 3}", priority=i % 10,
                               spool=root, sync=sync)
        sys.stdout.write(msg_id + "\\n")
        sys.stdout.flush()
        i += 1
    """
)


def producer(root: Path, count: int, sync: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(root), str(count), "sync" if sync else "relaxed", PEER],
        stdout=subprocess.PIPE,
        text=True,
    )


def queued_ids(root: Path) -> list[str]:
    """Ids of the queued messages, after checking each file is whole."""
    ids = []
    for path in queued_files(root / "queue"):
        _, msg_id, _, _, size, crc, _, _ = _codec_py.parse_spool_name(path.name)
        data = path.read_bytes()
        assert (len(data), zlib.crc32(data)) == (size, crc), path.name
        ids.append(msg_id)
    return ids


def reported(lines: str) -> list[str]:
    return [line for line in lines.splitlines() if _codec_py.is_message_id(line)]


def put_from_threads(client: spool.Client, threads: int, count: int) -> list[str]:
    ids: list[list[str]] = [[] for _ in range(threads)]

    def work(out: list[str]) -> None:
        for i in range(count):
            out.append(client.put(os.urandom(i % 700), peer=PEER, channel=f"t{i % 2}", priority=i % 10))

    workers = [threading.Thread(target=work, args=(out,)) for out in ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [i for out in ids for i in out]


def test_threads_put_at_once(tmp_path: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tmp_path) as client:
        ids = put_from_threads(client, threads=6, count=300)
    assert len(set(ids)) == len(ids) == 1800
    assert sorted(queued_ids(tmp_path)) == sorted(ids)
    assert os.listdir(tmp_path / "tmp") == []


def test_processes_and_threads_put_at_once(tmp_path: Path) -> None:
    procs = [producer(tmp_path, 150, sync=n == 0) for n in range(3)]
    with spool.Client(tmp_path) as client:
        ids = put_from_threads(client, threads=3, count=200)
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids += reported(out)
    assert len(set(ids)) == len(ids) == 3 * 150 + 3 * 200
    assert sorted(queued_ids(tmp_path)) == sorted(ids)
    assert os.listdir(tmp_path / "tmp") == []


def test_forked_children_put_through_the_inherited_client(
    tmp_path: Path, putter: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "putter", putter)
    with spool.Client(tmp_path) as client:
        ids = [client.put(b"parent", peer=PEER)]
        children = []
        for _ in range(3):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(read_end)
                    out = "".join(client.put(b"child", peer=PEER) + "\n" for _ in range(100))
                    os.write(write_end, out.encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            children.append((pid, read_end))
        ids += [client.put(b"parent", peer=PEER) for _ in range(100)]
        for pid, read_end in children:
            with os.fdopen(read_end) as pipe:
                ids += reported(pipe.read())
            assert os.waitpid(pid, 0)[1] == 0
    assert len(set(ids)) == len(ids) == 401
    assert sorted(queued_ids(tmp_path)) == sorted(ids)


def kill_rounds(root: Path, rounds: int) -> None:
    rnd = random.Random()
    seen: list[str] = []
    for round_no in range(rounds):
        with producer(root, -1, sync=round_no % 2 == 1) as proc:
            assert proc.stdout is not None
            lines = []
            for _ in range(rnd.randrange(3, 40)):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
            time.sleep(rnd.random() / 500)
            proc.send_signal(signal.SIGKILL)
            rest = proc.stdout.read()
        assert proc.returncode == -signal.SIGKILL
        seen += reported("".join(lines) + rest)
        present = queued_ids(root)
        assert set(seen) <= set(present)
        assert len(present) - len(seen) <= round_no + 1
        assert len(set(present)) == len(present)
    for leftover in os.listdir(root / "tmp"):
        assert _codec_py.is_message_id(leftover) and leftover not in seen


def test_kill_9_mid_put_shows_nothing_half_written(tmp_path: Path) -> None:
    kill_rounds(tmp_path, 5)


@pytest.mark.slow
def test_kill_9_mid_put_soak(tmp_path: Path) -> None:
    kill_rounds(tmp_path, soak(200))
