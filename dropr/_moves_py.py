"""A store's moves in batches, plain-Python reference of ``dropr._moves``.

Every state of a message in a store is a directory (see ``dropr.store.layout``), and every
change of state a ``rename`` of a fixed name between two of them, which exactly one of
several processes racing for it wins: a name gone (``ENOENT``) is another's, passed over
and never an error. A claim renames a batch of names and sets each one's lease (its times);
settling a batch renames each name whose claimed file still carries its claimant's lease
token (its mtime in nanoseconds). On the ingest side, a batch of names is looked for in a
state directory, and staged files are hard-linked into their queues under their names. The
compiled twin does each batch in C without the GIL, so the server's threads move files in
parallel instead of handing the GIL over at every system call; this twin does the same
calls one by one.

Any other failure is an OSError naming its file, raised after the moves before it were made
(``link_files`` returns the errno of a failed first link instead, so that its caller can copy
where a file system has no hard links). So is a missing directory (FileNotFoundError),
found once a name turns out gone (here, and in the compiled twin's small batches; its large
ones open their directories first), so that a batch of one costs its system calls and
nothing more.
"""

from __future__ import annotations

import errno
import os
import struct

from ._codec_py import BATCH_ENTRY, BATCH_HEADER, ID_LEN, parse_batch_index
from ._files import FILE_MODE, is_shared


def _directories(gone: bool, *paths: str) -> None:
    """After a name was found gone (``gone``): FileNotFoundError unless ``paths`` exist."""
    for path in paths if gone else ():
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def rename_files(source: str, target: str, names: list[str], start: int, limit: int) -> tuple[list[str], int]:
    """Rename ``source/NAME`` to ``target/NAME`` for the names from ``names[start]`` on, until
    ``limit`` were moved; the names moved, and the index after the last name tried."""
    if start < 0 or limit < 0:
        raise ValueError("start and limit must be zero or more")
    moved: list[str] = []
    index = start
    gone = False
    source_slash, target_slash = source + os.sep, target + os.sep
    while index < len(names) and len(moved) < limit:
        name = names[index]
        index += 1
        try:
            os.rename(source_slash + name, target_slash + name)
        except FileNotFoundError:
            gone = True
            continue
        moved.append(name)
    _directories(gone, source, target)
    return moved, index


def lease_files(directory: str, names: list[str], until_ns: int) -> list[str]:
    """Set the access and modification times of ``directory/NAME`` to ``until_ns`` for each
    name; the names whose file was there."""
    kept: list[str] = []
    times = (until_ns, until_ns)
    slash = directory + os.sep
    for name in names:
        try:
            os.utime(slash + name, ns=times)
        except FileNotFoundError:
            continue
        kept.append(name)
    _directories(len(kept) < len(names), directory)
    return kept


def settle_files(source: str, target: str, names: list[str], tokens: list[int], unlease: bool) -> list[bool]:
    """Rename ``source/NAME`` to ``target/NAME`` for each name whose file's mtime is its token
    (``tokens[i]`` nanoseconds) — with ``unlease``, after setting its times to 0 — and for
    each name whether it moved; False: gone, or not that token."""
    if len(tokens) != len(names):
        raise ValueError(f"{len(names)} names but {len(tokens)} tokens")
    moved: list[bool] = []
    gone = False
    source_slash, target_slash = source + os.sep, target + os.sep
    for name, token in zip(names, tokens, strict=True):
        path = source_slash + name
        try:
            held = os.lstat(path).st_mtime_ns == token
            if held:
                if unlease:
                    os.utime(path, ns=(0, 0))
                os.rename(path, target_slash + name)
        except FileNotFoundError:  # gone: another's now
            held, gone = False, True
        moved.append(held)
    _directories(gone, source, target)
    return moved


def link_counts(directory: str, names: list[str]) -> list[tuple[int, int] | None]:
    """For each name, ``(inode, links)`` of the file ``directory/NAME`` (a symbolic link not
    followed), or None when it is gone."""
    counts: list[tuple[int, int] | None] = []
    gone = False
    for name in names:
        try:
            info = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            gone = True
            counts.append(None)
            continue
        counts.append((info.st_ino, info.st_nlink))
    _directories(gone, directory)
    return counts


def absent_names(dir_fd: int, names: list[str], positions: list[int]) -> list[int]:
    """The positions (of ``positions``, in their order) of the names with no entry in the
    directory ``dir_fd``; a symbolic link is an entry, not followed."""
    return [i for i in positions if not os.access(names[i], os.F_OK, dir_fd=dir_fd, follow_symlinks=False)]


def link_files(
    staged: list[str], names: list[str], target_fds: tuple[int, ...], keep: bool = False
) -> tuple[list[bool], int]:
    """Link each staged file (a path) into every directory of ``target_fds`` as its name,
    none replacing an entry of the first, then remove its staged path, in order; the result
    of each (False: the first directory held the name, the staged path is removed all the
    same) until one whose first link fails otherwise, left as it was, and that errno (0:
    none failed). A failure after a file's first link is an OSError naming it. (The
    compiled twin renames a file into one directory without replacing instead, which Python
    cannot ask for: the outcome is the same.) With ``keep`` the staged paths are linked and
    left (shared files)."""
    if len(staged) != len(names):
        raise ValueError(f"{len(staged)} staged files but {len(names)} names")
    if not target_fds:
        raise ValueError("no directory to link into")
    first, *others = target_fds
    results: list[bool] = []
    for path, name in zip(staged, names, strict=True):
        try:
            os.link(path, name, dst_dir_fd=first, follow_symlinks=False)
        except FileExistsError:
            results.append(False)
        except OSError as exc:
            return results, exc.errno or errno.EIO  # an OSError from os.link has its errno
        else:
            results.append(True)
            for fd in others:
                try:
                    os.link(path, name, dst_dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
        if not keep:
            os.unlink(path)
    return results, 0


def write_files(paths: list[str], contents: list[bytes | bytearray | memoryview]) -> None:
    """Create each file ``paths[i]`` (new: none may be there, a symbolic link is not
    followed) holding ``contents[i]``, in order; the first failure is an OSError naming its
    file, raised after the files before it were written, with nothing left of that one."""
    if len(paths) != len(contents):
        raise ValueError(f"{len(paths)} paths but {len(contents)} contents")
    for path, content in zip(paths, contents, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)


def read_files(paths: list[str], max_bytes: int) -> tuple[list[bytes | None], int]:
    """The contents of the files ``paths``, each whole (None for one gone), until ``max_bytes``
    were read (the file that crosses it included, and one file at least); and how many. A
    file shared by several messages (``SHARED_BIT`` in its mode) gives the one its name names alone."""
    contents: list[bytes | None] = []
    size = 0
    for path in paths:
        if contents and size >= max_bytes:
            break
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            contents.append(None)
            continue
        try:
            info = os.fstat(fd)
            if is_shared(info.st_mode):
                data = _read_own(fd, path)
            else:
                want = info.st_size + 1  # one more byte tells a file that grew
                data = os.read(fd, want)
                if len(data) == want:
                    while more := os.read(fd, 1 << 16):
                        data += more
        finally:
            os.close(fd)
        contents.append(data)
        size += len(data)
    return contents, len(contents)


def _read_own(fd: int, path: str) -> bytes:
    """The bytes of the message ``path``'s name names, out of the shared file open as ``fd``
    (found by its id in the file's index); OSError (EIO) when the file holds no such message."""
    msg_id = os.path.basename(path)[1 : 1 + ID_LEN]
    try:
        _, count = BATCH_HEADER.unpack(os.pread(fd, BATCH_HEADER.size, 0))
        entries = parse_batch_index(os.pread(fd, BATCH_HEADER.size + count * BATCH_ENTRY.size, 0))
    except (ValueError, struct.error):
        entries = []
    for entry_id, offset, size, _ in entries:
        if entry_id == msg_id:
            data = os.pread(fd, size, offset)
            if len(data) == size:
                return data
            break
    raise OSError(errno.EIO, os.strerror(errno.EIO), path)
