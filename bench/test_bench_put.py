"""fastput, compiled against plain Python, one put per round.

Groups: ``put-memory`` (a tmpfs, where the file system's work is smallest, so the Python
and C layers' own cost shows most), ``put-disk`` and ``put-disk-sync`` (the system temp
dir). Every benchmark puts into a fresh directory.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from types import ModuleType

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from dropr import spool

PEER = "http://127.0.0.1:8080/q"
PAYLOAD = os.urandom(200)
MEMORY = "/dev/shm"


@pytest.fixture(params=["compiled", "python"])
def putter_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Routes fastput through the compiled put front ``dropr._putter`` or its plain-Python twin."""
    name = "dropr._putter" if request.param == "compiled" else "dropr._putter_py"
    try:
        twin = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not built")
    monkeypatch.setattr(spool, "putter", twin)
    return twin


@contextlib.contextmanager
def fresh_dir(where: str) -> Iterator[str]:
    if where == "memory" and not os.path.isdir(MEMORY):
        pytest.skip(f"no tmpfs at {MEMORY}")
    path = tempfile.mkdtemp(prefix="dropr-bench-put-", dir=MEMORY if where == "memory" else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("where", "sync"), [("memory", False), ("disk", False), ("disk", True)], ids=["memory", "disk", "disk-sync"]
)
def test_fastput(benchmark: BenchmarkFixture, putter_twin: ModuleType, where: str, sync: bool) -> None:
    benchmark.group = f"put-{where}{'-sync' if sync else ''}"
    with fresh_dir(where) as spool_dir:
        fastput = putter_twin.Spools(spool._open_for_fastput).fastput
        msg_id = benchmark(fastput, PAYLOAD, PEER, spool=spool_dir, sync=sync)
        queue = os.path.join(spool_dir, "queue")
        assert any(name[1:31] == msg_id for b in os.listdir(queue) for name in os.listdir(os.path.join(queue, b)))
