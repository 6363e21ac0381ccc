"""The package as producers see it: cheap to import, typed, honest about its hot path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dropr
import dropr._impl

HEAVY = ("aiohttp", "uvloop", "pycurl", "prometheus_client", "dropr.server", "dropr.relay", "dropr.cli")


def test_import_dropr_loads_no_server_or_relay_stack() -> None:
    code = "import sys, dropr; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert [name for name in loaded if name.startswith(HEAVY)] == []


def test_public_names_are_few_and_present() -> None:
    assert sorted(dropr.__all__) == [
        "Client",
        "DroprError",
        "InvalidMessage",
        "SpoolError",
        "Store",
        "StoreError",
        "fastput",
    ]
    for name in dropr.__all__:
        assert getattr(dropr, name) is not None


def test_package_is_typed() -> None:
    assert (Path(dropr.__file__).parent / "py.typed").is_file()


def test_implementation_names_the_modules_loaded() -> None:
    for name, compiled in dropr._impl.COMPILED.items():
        module = getattr(dropr._impl, name)
        assert module.__name__ == (f"dropr._{name}" if compiled else f"dropr._{name}_py")
    if os.environ.get("DROPR_REQUIRE_EXTENSIONS", "") not in ("", "0"):
        assert dropr._impl.IMPLEMENTATION == "compiled", dropr._impl.COMPILED
    if os.environ.get("DROPR_NO_EXTENSIONS", "") not in ("", "0"):
        assert dropr._impl.IMPLEMENTATION == "python", dropr._impl.COMPILED


def test_no_extensions_switch_loads_the_twins() -> None:
    code = "import dropr._impl as i; print(i.IMPLEMENTATION)"
    env = {**os.environ, "DROPR_NO_EXTENSIONS": "1"}
    env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "python"
