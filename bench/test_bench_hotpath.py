"""Micro-benchmarks of the hot path, compiled and plain Python side by side in each group.

Run with ``pytest bench/test_bench_hotpath.py`` (kept out of the default test paths).
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from types import ModuleType

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from dropr import _codec_py

KINDS = ("compiled", "python")
SCAN_DEPTH = 20_000


def _twin(name: str, kind: str) -> ModuleType:
    return importlib.import_module(f"dropr._{name}" if kind == "compiled" else f"dropr._{name}_py")


def _names(count: int) -> list[str]:
    rng = random.Random(1)
    return [
        _codec_py.spool_name(
            rng.randrange(10),
            _codec_py.new_id(),
            "http%3A%2F%2Fhost%3A8080%2Fq",
            "common",
            rng.randrange(1 << 16),
            rng.getrandbits(32),
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def queue_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dropr-bench-")
    for name in _names(SCAN_DEPTH):
        os.close(os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT, 0o600))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def bucketed_queue() -> Iterator[str]:
    """A spool's ``queue/`` holding SCAN_DEPTH messages in their buckets."""
    path = tempfile.mkdtemp(prefix="dropr-bench-")
    for name in _names(SCAN_DEPTH):
        bucket = os.path.join(path, name[: _codec_py.BUCKET_LEN])
        os.makedirs(bucket, exist_ok=True)
        os.close(os.open(os.path.join(bucket, name), os.O_WRONLY | os.O_CREAT, 0o600))
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("kind", KINDS)
def test_escape(benchmark: BenchmarkFixture, kind: str) -> None:
    codec = _twin("codec", kind)
    benchmark.group = "escape"
    benchmark(codec.escape, "orders/eu-west é")


@pytest.mark.parametrize("kind", KINDS)
def test_spool_name(benchmark: BenchmarkFixture, kind: str) -> None:
    codec = _twin("codec", kind)
    benchmark.group = "spool_name"
    msg_id = codec.new_id()
    benchmark(codec.spool_name, 5, msg_id, "http%3A%2F%2Fhost%2Fq", "common", 4096, 0xDEADBEEF)


@pytest.mark.parametrize("kind", KINDS)
def test_parse_spool_name(benchmark: BenchmarkFixture, kind: str) -> None:
    codec = _twin("codec", kind)
    benchmark.group = "parse_spool_name"
    benchmark(codec.parse_spool_name, _names(1)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_scan_first_1000_of_20k(benchmark: BenchmarkFixture, kind: str, queue_dir: str) -> None:
    scan = _twin("scan", kind)
    benchmark.group = "scan 1000 of 20k"
    assert len(benchmark(scan.scan, queue_dir, 1000)) == 1000


@pytest.mark.parametrize("kind", KINDS)
def test_scan_queue_first_1000_of_20k(benchmark: BenchmarkFixture, kind: str, bucketed_queue: str) -> None:
    scan = _twin("scan", kind)
    benchmark.group = "scan_queue 1000 of 20k in buckets"
    assert len(benchmark(scan.scan_queue, bucketed_queue, 1000)) == 1000


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_1000(benchmark: BenchmarkFixture, kind: str) -> None:
    manifest = _twin("manifest", kind)
    benchmark.group = "manifest of 1000"
    names = _names(1000)
    benchmark(manifest.build, names, {})
