"""The ``.pyi`` stub of each compiled module names what the module and its plain-Python twin
offer, with the twin's parameters: type checkers read the stubs, so a stale one hides a
changed signature."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import dropr
from dropr._impl import IMPLEMENTATION

MODULES = ["codec", "scan", "manifest", "drop", "moves"]


def declared(module: str) -> tuple[dict[str, list[str]], set[str]]:
    """The functions of a stub with their parameter names, and its constants."""
    tree = ast.parse(Path(dropr.__file__).with_name(f"_{module}.pyi").read_text())
    functions: dict[str, list[str]] = {}
    constants: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            functions[node.name] = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            constants.add(node.target.id)
    return functions, constants


def own_functions(twin: ModuleType) -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(value).parameters)
        for name, value in vars(twin).items()
        if inspect.isfunction(value) and value.__module__ == twin.__name__ and not name.startswith("_")
    }


@pytest.mark.parametrize("module", MODULES)
def test_a_stub_declares_the_twins_functions_and_constants(module: str) -> None:
    functions, constants = declared(module)
    twin = importlib.import_module(f"dropr._{module}_py")
    assert functions == own_functions(twin)
    assert all(hasattr(twin, name) for name in constants)


@pytest.mark.parametrize("module", MODULES)
def test_a_stub_declares_what_the_compiled_module_offers(module: str) -> None:
    try:
        compiled_module = importlib.import_module(f"dropr._{module}")
    except ImportError:  # an install without a compiler: only the twins exist
        assert IMPLEMENTATION != "compiled"
        return
    functions, constants = declared(module)
    public = {
        name
        for name in dir(compiled_module)
        if not name.startswith("_") and not isinstance(getattr(compiled_module, name), ModuleType)
    }
    assert {name for name in public if callable(getattr(compiled_module, name))} == set(functions)
    assert {name for name in public if not callable(getattr(compiled_module, name))} == constants
    twin = importlib.import_module(f"dropr._{module}_py")
    assert {name: getattr(compiled_module, name) for name in constants} == {
        name: getattr(twin, name) for name in constants
    }
