"""The one place that chooses between the compiled hot path and its plain-Python twins.

``DROPR_NO_EXTENSIONS=1`` forces the plain-Python modules; ``DROPR_REQUIRE_EXTENSIONS=1``
makes a missing compiled module an import error instead of a silent fallback.
:data:`IMPLEMENTATION` says which one is loaded.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_NAMES = ("codec", "scan", "manifest", "drop", "putter", "moves")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _load(name: str) -> tuple[ModuleType, bool]:
    if not _flag("DROPR_NO_EXTENSIONS"):
        try:
            return importlib.import_module(f"dropr._{name}"), True
        except ImportError:
            if _flag("DROPR_REQUIRE_EXTENSIONS"):
                raise
    return importlib.import_module(f"dropr._{name}_py"), False


_loaded = {name: _load(name) for name in _NAMES}

codec = _loaded["codec"][0]
scan = _loaded["scan"][0]
manifest = _loaded["manifest"][0]
drop = _loaded["drop"][0]
putter = _loaded["putter"][0]
moves = _loaded["moves"][0]

COMPILED = {name: compiled for name, (_, compiled) in _loaded.items()}
IMPLEMENTATION = "compiled" if all(COMPILED.values()) else "python" if not any(COMPILED.values()) else "mixed"
