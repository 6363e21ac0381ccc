"""fastput, compiled against plain Python (groups "put-relaxed" and "put-sync").

Each benchmark puts into a fresh directory under the system temp dir (not pytest's, which
sees many deletes: creates right after mass deletes are slow on some file systems).
"""

from __future__ import annotations

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


@pytest.fixture(params=["compiled", "python"])
def drop_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Routes fastput through the compiled ``dropr._drop`` or its plain-Python twin."""
    name = "dropr._drop" if request.param == "compiled" else "dropr._drop_py"
    try:
        twin = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not built")
    monkeypatch.setattr(spool, "drop", twin)
    monkeypatch.setattr(spool, "_clients", {})
    return twin


@pytest.fixture
def spool_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dropr-bench-put-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("sync", [False, True], ids=["relaxed", "sync"])
def test_fastput(benchmark: BenchmarkFixture, drop_twin: ModuleType, spool_dir: str, sync: bool) -> None:
    benchmark.group = "put-sync" if sync else "put-relaxed"
    msg_id = benchmark(spool.fastput, PAYLOAD, PEER, spool=spool_dir, sync=sync)
    assert any(name[1:31] == msg_id for name in os.listdir(os.path.join(spool_dir, "queue")))
