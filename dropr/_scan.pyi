"""Directory scanning, compiled (``dropr._scan``); the rules are documented in ``dropr._scan_py``."""

from collections.abc import Collection
from os import PathLike

def scan(path: str | PathLike[str], limit: int, skip: Collection[str] = ()) -> list[str]:
    """The first ``limit`` message names of directory ``path`` in delivery order, leaving out
    names whose field after the first ``+`` (a spool name's peer) is in ``skip``.

    A message name starts with a priority digit, the 30-hex-digit id and ``+``; anything else
    (hidden and temporary files among them) is ignored. Order is the names' byte order.
    FileNotFoundError when ``path`` does not exist; ValueError for a negative ``limit``.
    """

def count(path: str | PathLike[str]) -> int:
    """The number of entries of directory ``path`` whose name does not start with ``.``."""
