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

def oldest(path: str | PathLike[str]) -> str:
    """The smallest (earliest) id among the message names of directory ``path``; "" if none.
    FileNotFoundError when ``path`` does not exist."""

def scan_queue(
    path: str | PathLike[str], limit: int, skip: Collection[str] = (), listed: list[str] | None = None
) -> list[str]:
    """As :func:`scan` for a spool's bucketed ``queue/``: buckets are read in order until
    ``limit`` names are found, so a deep queue costs what its first buckets hold. A bucket
    removed while being read is passed over; a name in a bucket not its own is ignored.
    ``listed``: the buckets as :func:`buckets` returned them, when the caller has them."""

def buckets(path: str | PathLike[str]) -> list[str]:
    """The bucket names of a spool's ``queue/`` directory ``path``, in order."""

def count_queue(path: str | PathLike[str]) -> int:
    """The messages in the buckets of a spool's ``queue/`` directory ``path``: as :func:`count`
    does, but a batch file counts as the messages it holds."""

def tally_queue(path: str | PathLike[str]) -> dict[str, tuple[int, int, str]]:
    """Per peer field of the messages in a spool's ``queue/`` directory ``path``: how many (a
    batch file as the messages it holds), their bytes (the sizes their names give) and the
    oldest id. A name without a peer, a channel and a size (lower hex, at most 64 bits) is
    passed over."""

def find(path: str | PathLike[str], msg_id: str) -> list[str]:
    """The message names of directory ``path`` whose id is ``msg_id``, in byte order (one
    per client that sent that id), read in C; FileNotFoundError when ``path`` does not exist,
    ValueError when ``msg_id`` is not a message id."""
