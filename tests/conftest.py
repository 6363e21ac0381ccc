"""Fixtures shared by the whole suite.

The compiled modules and their plain-Python twins run the same tests: a fixture named after
a module (``codec``, ``scan``, ``manifest``, ``drop``, ``putter``) is parametrized over both, and
``kind`` names each for a test that runs its own processes. In the run on the plain-Python
twins (``DROPR_NO_EXTENSIONS=1``) they give the twin alone: the compiled modules are not
under test there.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import dropr._impl

KINDS = ("compiled", "python") if dropr._impl.IMPLEMENTATION != "python" else ("python",)


def load_twin(name: str, kind: str) -> ModuleType:
    """``dropr._name`` (compiled) or ``dropr._name_py``; a missing build fails when required."""
    if kind == "python":
        return importlib.import_module(f"dropr._{name}_py")
    try:
        return importlib.import_module(f"dropr._{name}")
    except ImportError:
        if os.environ.get("DROPR_REQUIRE_EXTENSIONS", "") not in ("", "0"):
            raise
        pytest.skip(f"dropr._{name} is not built")


@pytest.fixture(params=KINDS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin("codec", request.param)


@pytest.fixture(params=KINDS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin("scan", request.param)


@pytest.fixture(params=KINDS)
def manifest(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin("manifest", request.param)


@pytest.fixture(params=KINDS)
def drop(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin("drop", request.param)


@pytest.fixture(params=KINDS)
def putter(request: pytest.FixtureRequest) -> ModuleType:
    """The put front; the compiled one calls the compiled put path, the twin the twin."""
    return load_twin("putter", request.param)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, or a skip where mounting is not permitted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
