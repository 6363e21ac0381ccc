"""A store's moves in batches, compiled twin of ``dropr._moves_py`` (the rules are documented there).

Each batch runs in C without the GIL, a system call per name (``renameat``, ``utimensat``,
``fstatat``, and for the ingest side ``faccessat`` and ``linkat``): the server's threads
move files in parallel instead of handing the GIL over at every call. A batch of ``OPEN_AT`` names or more works relative to its directories,
opened once, so a name costs no path walk (four remote consumers: 52 µs of the server's CPU
a message, 62 µs with full paths); a smaller one, such as a local consumer settling each
message, uses full paths and opens nothing. Files are read the same way, into buffers that
become bytes once the batch is read, and a request's staged files written.
"""

import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, strlen, strrchr

from _codec cimport (DROPR_BATCH_ENTRY, DROPR_BATCH_HEADER, DROPR_ID_LEN, DROPR_MAX_BATCH_COUNT, batch_header_count,
                     batch_index_bytes, get_be)

from _sys cimport (AT_FDCWD, AT_SYMLINK_NOFOLLOW, EEXIST, EINVAL, EIO, ENOENT, ENOSYS, F_OK, O_CLOEXEC, O_CREAT,
                   O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY, RENAME_NOREPLACE, S_ISREG, close, errno, faccessat,
                   fs_bytes, fstat, fstatat, iovec, linkat, open, pread, raise_errno, read, renameat, renameat2, ssize_t,
                   stat, timespec, unlinkat, utimensat, write_all)

import dropr._files

DEF GROW = 65536
DEF OPEN_AT = 8  # the names of a batch from which its directories are opened (below: full paths)
cdef int _file_mode = dropr._files.FILE_MODE
cdef unsigned int _shared_bit = dropr._files.SHARED_BIT


cdef class _Paths:
    """``names`` of ``directory`` as C strings for the ``*at`` calls, relative to ``fd``: the
    directory opened (a batch of ``OPEN_AT`` or more) or the working directory (full
    paths; ``directory`` None: the names are relative to ``dir_fd``, the caller's, by
    default paths). Kept alive with the list that holds them, with a flag for each, all
    cleared; a directory opened here is closed with the object."""
    cdef list raw
    cdef const char **items
    cdef char *done
    cdef Py_ssize_t count
    cdef int fd
    cdef bint owned

    def __cinit__(self, directory, list names, int dir_fd=AT_FDCWD):
        self.fd = dir_fd
        cdef bytes raw_dir
        cdef const char *c_dir
        cdef int fd
        if directory is not None and len(names) >= OPEN_AT:
            raw_dir = fs_bytes(directory)
            c_dir = raw_dir
            with nogil:
                fd = open(c_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0:
                raise_errno(errno, directory)
            self.fd = fd
            self.owned = True
            self.raw = [fs_bytes(name) for name in names]
        else:
            prefix = "" if directory is None else directory + "/"
            self.raw = [fs_bytes(prefix + name) for name in names]
        self.count = len(self.raw)
        self.items = <const char **>malloc(max(1, self.count) * sizeof(char *))
        self.done = <char *>calloc(max(1, self.count), 1)
        if self.items == NULL or self.done == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.items[i] = <bytes>self.raw[i]

    def __dealloc__(self):
        free(self.items)
        free(self.done)
        if self.owned:
            close(self.fd)

    cdef list flagged(self, list names, Py_ssize_t start, Py_ssize_t end):
        """The names from ``start`` to ``end`` whose flag is set."""
        cdef Py_ssize_t i
        return [names[i] for i in range(start, end) if self.done[i]]


cdef inline int _step(int result, char *done, bint *gone) noexcept nogil:
    """After a name's system call returned ``result``: its flag set (``done``), or ``gone``
    set for a name another took; the errno of any other failure, which ends the batch."""
    if result == 0:
        done[0] = 1
    elif errno == ENOENT:
        gone[0] = True
    else:
        return errno
    return 0


cdef int _ended(int error, list names, Py_ssize_t index, bint gone, str source, str target=None) except -1:
    """After a batch in ``source``: the OSError of ``names[index]``, which failed with
    ``error``; or, once a name was found gone, FileNotFoundError unless the directories exist."""
    if error:
        raise_errno(error, os.path.join(source, names[index]))
    if gone:
        for path in (source, target):
            if path is not None and not os.path.isdir(path):
                raise_errno(ENOENT, path)
    return 0


def rename_files(str source, str target, list names, Py_ssize_t start, Py_ssize_t limit):
    """Rename ``source/NAME`` to ``target/NAME`` for the names from ``names[start]`` on, until
    ``limit`` were moved; the names moved, and the index after the last name tried."""
    if start < 0 or limit < 0:
        raise ValueError("start and limit must be zero or more")
    cdef list moved = []
    cdef list chunk
    while start < len(names) and len(moved) < limit:
        # only the names it may take are made C strings: a claim's scan holds thousands more
        chunk = names[start : start + limit - len(moved)]
        moved += _rename_all(source, target, chunk)
        start += len(chunk)
    return moved, start


cdef list _rename_all(str source, str target, list names):
    """Rename ``source/NAME`` to ``target/NAME`` for each of ``names``; those moved."""
    cdef _Paths sources = _Paths(source, names), targets = _Paths(target, names)
    cdef Py_ssize_t index = 0
    cdef int error = 0
    cdef bint gone = False
    with nogil:
        while index < sources.count:
            error = _step(renameat(sources.fd, sources.items[index], targets.fd, targets.items[index]),
                          &sources.done[index], &gone)
            if error:
                break
            index += 1
    _ended(error, names, index, gone, source, target)
    return sources.flagged(names, 0, index)


def lease_files(str directory, list names, int64_t until_ns):
    """Set the access and modification times of ``directory/NAME`` to ``until_ns`` for each
    name; the names whose file was there."""
    cdef _Paths paths = _Paths(directory, names)
    cdef timespec times[2]
    times[0].tv_sec = times[1].tv_sec = until_ns // 1000000000
    times[0].tv_nsec = times[1].tv_nsec = until_ns % 1000000000
    cdef Py_ssize_t index = 0
    cdef int error = 0
    cdef bint gone = False
    with nogil:
        while index < paths.count:
            error = _step(utimensat(paths.fd, paths.items[index], times, 0), &paths.done[index], &gone)
            if error:
                break
            index += 1
    _ended(error, names, index, gone, directory)
    return paths.flagged(names, 0, paths.count)


def settle_files(str source, str target, list names, list tokens, bint unlease):
    """Rename ``source/NAME`` to ``target/NAME`` for each name whose file's mtime is its token
    (``tokens[i]`` nanoseconds) — with ``unlease``, after setting its times to 0 — and for
    each name whether it moved; False: gone, or not that token."""
    if len(tokens) != len(names):
        raise ValueError(f"{len(names)} names but {len(tokens)} tokens")
    cdef _Paths sources = _Paths(source, names), targets = _Paths(target, names)
    cdef Py_ssize_t count = sources.count, index = 0, i
    cdef int64_t *c_tokens = <int64_t *>malloc(max(1, count) * sizeof(int64_t))
    if c_tokens == NULL:
        raise MemoryError()
    cdef timespec zero[2]
    zero[0].tv_sec = zero[1].tv_sec = 0
    zero[0].tv_nsec = zero[1].tv_nsec = 0
    cdef stat info
    cdef int error = 0
    cdef bint gone = False
    try:
        for i in range(count):
            c_tokens[i] = tokens[i]
        with nogil:
            while index < count:
                if fstatat(sources.fd, sources.items[index], &info, AT_SYMLINK_NOFOLLOW) != 0:
                    error = errno
                elif info.st_mtim.tv_sec * <int64_t>1000000000 + info.st_mtim.tv_nsec != c_tokens[index]:
                    pass  # not its claimant's lease
                elif unlease and utimensat(sources.fd, sources.items[index], zero, 0) != 0:
                    error = errno
                elif renameat(sources.fd, sources.items[index], targets.fd, targets.items[index]) == 0:
                    sources.done[index] = 1
                else:
                    error = errno
                if error == ENOENT:  # gone: another's now
                    gone = True
                    error = 0
                elif error:
                    break
                index += 1
    finally:
        free(c_tokens)
    _ended(error, names, index, gone, source, target)
    return [bool(sources.done[i]) for i in range(count)]


def link_counts(str directory, list names):
    """For each name, ``(inode, links)`` of the file ``directory/NAME`` (a symbolic link not
    followed), or None when it is gone."""
    cdef _Paths paths = _Paths(directory, names)
    cdef Py_ssize_t count = paths.count, i = 0
    cdef stat *infos = <stat *>malloc(max(1, count) * sizeof(stat))
    if infos == NULL:
        raise MemoryError()
    cdef int error = 0
    cdef bint gone = False
    try:
        with nogil:
            for i in range(count):
                error = _step(fstatat(paths.fd, paths.items[i], &infos[i], AT_SYMLINK_NOFOLLOW), &paths.done[i], &gone)
                if error:
                    break
        _ended(error, names, i, gone, directory)
        return [(infos[i].st_ino, infos[i].st_nlink) if paths.done[i] else None for i in range(count)]
    finally:
        free(infos)


def absent_names(int dir_fd, list names, list positions):
    """The positions (of ``positions``, in their order) of the names with no entry in the
    directory ``dir_fd``; a symbolic link is an entry, not followed."""
    cdef _Paths paths = _Paths(None, [names[i] for i in positions], dir_fd)
    cdef Py_ssize_t i
    with nogil:
        for i in range(paths.count):
            if faccessat(dir_fd, paths.items[i], F_OK, AT_SYMLINK_NOFOLLOW) != 0:
                paths.done[i] = 1
    return paths.flagged(positions, 0, paths.count)


def link_files(list staged, list names, tuple target_fds, bint keep=False):
    """Link each staged file (a path) into every directory of ``target_fds`` as its name,
    none replacing an entry of the first, then remove its staged path, in order; the result
    of each (False: the first directory held the name, the staged path is removed all the
    same) until one whose first link fails otherwise, left as it was, and that errno (0:
    none failed). A failure after a file's first link is an OSError naming it. Into one
    directory, a file is renamed without replacing instead (one call, not two), where the
    file system can. With ``keep`` the staged paths are linked and left (shared files)."""
    if len(staged) != len(names):
        raise ValueError(f"{len(staged)} staged files but {len(names)} names")
    if not target_fds:
        raise ValueError("no directory to link into")
    cdef _Paths sources = _Paths(None, staged), targets = _Paths(None, names, <int>target_fds[0])
    cdef Py_ssize_t count = sources.count, index = 0, others = len(target_fds) - 1, k
    cdef int *fds = <int *>malloc(max(1, others) * sizeof(int))
    if fds == NULL:
        raise MemoryError()
    cdef int error = 0, stopped = 0
    cdef bint renames = others == 0 and not keep
    try:
        for k in range(others):
            fds[k] = target_fds[k + 1]
        with nogil:
            while index < count:
                if renames:
                    if renameat2(AT_FDCWD, sources.items[index], targets.fd, targets.items[index], RENAME_NOREPLACE) == 0:
                        targets.done[index] = 1
                        index += 1
                        continue
                    if errno == EEXIST:
                        if unlinkat(AT_FDCWD, sources.items[index], 0) != 0:
                            error = errno
                            break
                        index += 1
                        continue
                    if errno != EINVAL and errno != ENOSYS:
                        stopped = errno
                        break
                    renames = False  # not on this file system: link, then unlink
                if linkat(AT_FDCWD, sources.items[index], targets.fd, targets.items[index], 0) == 0:
                    targets.done[index] = 1
                    for k in range(others):
                        if linkat(AT_FDCWD, sources.items[index], fds[k], targets.items[index], 0) != 0 and errno != EEXIST:
                            error = errno
                            break
                elif errno != EEXIST:
                    stopped = errno
                    break
                if error or (not keep and unlinkat(AT_FDCWD, sources.items[index], 0) != 0):
                    error = error or errno
                    break
                index += 1
    finally:
        free(fds)
    if error:
        raise_errno(error, staged[index])
    return [bool(targets.done[k]) for k in range(index)], stopped


def write_files(list paths, list contents):
    """Create each file ``paths[i]`` (new: none may be there, a symbolic link is not
    followed) holding ``contents[i]``, in order; the first failure is an OSError naming its
    file, raised after the files before it were written, with nothing left of that one."""
    if len(paths) != len(contents):
        raise ValueError(f"{len(paths)} paths but {len(contents)} contents")
    cdef _Paths c_paths = _Paths(None, paths)
    cdef Py_ssize_t count = c_paths.count, index = 0, got = 0, i
    cdef Py_buffer *views = <Py_buffer *>malloc(max(1, count) * sizeof(Py_buffer))
    cdef iovec iov
    cdef int fd, error = 0
    if views == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            PyObject_GetBuffer(contents[i], &views[i], PyBUF_SIMPLE)
            got += 1
        with nogil:
            while index < count:
                fd = open(c_paths.items[index], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, _file_mode)
                if fd < 0:
                    error = errno
                    break
                iov.iov_base, iov.iov_len = views[index].buf, <size_t>views[index].len
                error = write_all(fd, &iov, 1)
                if close(fd) != 0 and not error:
                    error = errno
                if error:
                    unlinkat(AT_FDCWD, c_paths.items[index], 0)
                    break
                index += 1
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        free(views)
    if error:
        raise_errno(error, paths[index])


cdef int _read_own(int fd, const char *path, char **data, Py_ssize_t *size) noexcept nogil:
    """Reads the message named by ``path``'s last component out of the shared file open as
    ``fd`` (its range, found by its id in the file's index) into a new buffer: 0, the
    errno, -1 short of memory, or EIO for a file that holds no such message."""
    cdef const char *name = strrchr(path, 47)  # '/'
    cdef char head[DROPR_BATCH_HEADER]
    cdef char *index = NULL
    cdef Py_ssize_t count, i, at
    cdef unsigned long long offset, length
    cdef int error = EIO
    name = path if name == NULL else name + 1
    if pread(fd, head, DROPR_BATCH_HEADER, 0) != DROPR_BATCH_HEADER:
        return EIO
    count = batch_header_count(head)
    if count < 2 or count > DROPR_MAX_BATCH_COUNT or strlen(name) < 1 + DROPR_ID_LEN:
        return EIO
    index = <char *>malloc(batch_index_bytes(count))
    if index == NULL:
        return -1
    if pread(fd, index, batch_index_bytes(count), 0) == batch_index_bytes(count):
        offset = <unsigned long long>batch_index_bytes(count)
        for i in range(count):
            at = DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY
            length = get_be(index + at + DROPR_ID_LEN, 8)
            if memcmp(index + at, name + 1, DROPR_ID_LEN) == 0:
                data[0] = <char *>malloc(max(1, <Py_ssize_t>length))
                if data[0] == NULL:
                    error = -1
                elif pread(fd, data[0], length, offset) == <ssize_t>length:
                    size[0] = <Py_ssize_t>length
                    error = 0
                else:
                    free(data[0])
                    data[0] = NULL
                break
            offset += length
    free(index)
    return error


cdef int _read_whole(const char *path, char **data, Py_ssize_t *size) noexcept nogil:
    """Reads the message file at ``path`` into a new buffer (``data``, ``size``): 0, or the
    errno; a file shared by several messages gives the named one's bytes alone."""
    cdef stat info
    cdef int fd = open(path, O_RDONLY | O_CLOEXEC)
    cdef Py_ssize_t want, got = 0
    cdef ssize_t n
    cdef char *grown
    cdef int error = 0
    if fd < 0:
        return errno
    if fstat(fd, &info) != 0:
        error = errno
        close(fd)
        return error
    if S_ISREG(info.st_mode) and info.st_mode & _shared_bit:
        error = _read_own(fd, path, data, size)
        close(fd)
        return error
    want = info.st_size + 1  # one more byte tells a file that grew
    data[0] = <char *>malloc(want)
    while data[0] != NULL:
        n = read(fd, data[0] + got, want - got)
        if n < 0:
            error = errno
            break
        got += n
        if n == 0 or got < want:
            break
        want += GROW
        grown = <char *>realloc(data[0], want)
        if grown == NULL:
            free(data[0])
        data[0] = grown
    if data[0] == NULL:
        error = -1
    elif error:
        free(data[0])
        data[0] = NULL
    close(fd)
    size[0] = got
    return error


def read_files(list paths, Py_ssize_t max_bytes):
    """The contents of the files ``paths``, each whole (None for one gone), until ``max_bytes``
    were read (the file that crosses it included, and one file at least); and how many."""
    cdef _Paths c_paths = _Paths(None, paths)
    cdef Py_ssize_t count = c_paths.count, index = 0, total = 0, i
    cdef char **data = <char **>calloc(max(1, count), sizeof(char *))
    cdef Py_ssize_t *sizes = <Py_ssize_t *>malloc(max(1, count) * sizeof(Py_ssize_t))
    cdef int error = 0
    try:
        if data == NULL or sizes == NULL:
            raise MemoryError()
        with nogil:
            while index < count and (total < max_bytes or index == 0):
                error = _read_whole(c_paths.items[index], &data[index], &sizes[index])
                if error == ENOENT:
                    error = 0
                elif error:
                    break
                else:
                    total += sizes[index]
                index += 1
        if error < 0:
            raise MemoryError()
        if error:
            raise_errno(error, paths[index])
        return [None if data[i] == NULL else PyBytes_FromStringAndSize(data[i], sizes[i]) for i in range(index)], index
    finally:
        if data != NULL:
            for i in range(count):
                free(data[i])
        free(data)
        free(sizes)
