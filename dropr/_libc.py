"""The C library through ctypes, loaded once for the few calls Python's ``os`` lacks
(``syncfs``, ``inotify``, ``prctl``); imported only by the code that needs one."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library with ``errno`` kept, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


@functools.cache
def function(name: str, argtypes: tuple[type, ...], restype: type = ctypes.c_int) -> Any:
    """The C library's function ``name`` typed as given, or None where it is missing."""
    lib = libc()
    func = getattr(lib, name, None) if lib is not None else None
    if func is None:
        return None
    func.argtypes = argtypes
    func.restype = restype
    return func


def errno_error(what: str, path: str | None = None) -> OSError:
    """The OSError of the last failed C call, ``what`` naming it."""
    import os

    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)
