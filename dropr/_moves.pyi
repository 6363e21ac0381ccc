"""A store's moves in batches, compiled (``dropr._moves``); the rules are documented in ``dropr._moves_py``."""

def rename_files(source: str, target: str, names: list[str], start: int, limit: int) -> tuple[list[str], int]:
    """Rename ``source/NAME`` to ``target/NAME`` for the names from ``names[start]`` on, until
    ``limit`` were moved; the names moved, and the index after the last name tried."""

def lease_files(directory: str, names: list[str], until_ns: int) -> list[str]:
    """Set the access and modification times of ``directory/NAME`` to ``until_ns`` for each
    name; the names whose file was there."""

def settle_files(source: str, target: str, names: list[str], tokens: list[int], unlease: bool) -> list[bool]:
    """Rename ``source/NAME`` to ``target/NAME`` for each name whose file's mtime is its token
    (``tokens[i]`` nanoseconds) — with ``unlease``, after setting its times to 0 — and for
    each name whether it moved; False: gone, or not that token."""

def link_counts(directory: str, names: list[str]) -> list[tuple[int, int] | None]:
    """For each name, ``(inode, links)`` of the file ``directory/NAME`` (a symbolic link not
    followed), or None when it is gone."""

def absent_names(dir_fd: int, names: list[str], positions: list[int]) -> list[int]:
    """The positions (of ``positions``, in their order) of the names with no entry in the
    directory ``dir_fd``; a symbolic link is an entry, not followed."""

def link_files(
    staged: list[str], names: list[str], target_fds: tuple[int, ...], keep: bool = False
) -> tuple[list[bool], int]:
    """Link each staged file (a path) into every directory of ``target_fds`` as its name,
    none replacing an entry of the first, then remove its staged path, in order; the result
    of each (False: the first directory held the name, the staged path is removed all the
    same) until one whose first link fails otherwise, left as it was, and that errno (0:
    none failed). A failure after a file's first link is an OSError naming it. Into one
    directory, a file is renamed without replacing instead, where the file system can. With
    ``keep`` the staged paths are linked and left (shared files)."""

def write_files(paths: list[str], contents: list[bytes | bytearray | memoryview]) -> None:
    """Create each file ``paths[i]`` (new: none may be there, a symbolic link is not
    followed) holding ``contents[i]``, in order; the first failure is an OSError naming its
    file, raised after the files before it were written, with nothing left of that one."""

def read_files(paths: list[str], max_bytes: int) -> tuple[list[bytes | None], int]:
    """The contents of the files ``paths``, each whole (None for one gone), until ``max_bytes``
    were read (the file that crosses it included, and one file at least); and how many. A
    file shared by several messages (``SHARED_BIT`` in its mode) gives the one its name names alone."""
