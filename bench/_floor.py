"""The C floors the benchmarks measure dropr against: small programs built at run time."""

from __future__ import annotations

import os
import subprocess


def build_floor(source: str, workdir: str) -> str:
    """Compile C ``source`` in ``workdir`` with ``$CC`` (default ``cc``); returns the binary."""
    path = os.path.join(workdir, "floor.c")
    binary = os.path.join(workdir, "floor")
    with open(path, "w") as file:
        file.write(source)
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-pthread", "-o", binary, path], check=True)
    return binary
