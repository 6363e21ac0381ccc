"""A store's moves in batches, compiled twin of ``dropr._moves_py`` (the rules are documented there).

Each batch runs in C without the GIL: the directories are opened once and every name is
moved, leased or checked relative to them (``renameat``, ``utimensat``, ``fstatat``), so a
name costs its system call and no path walk, and the server's threads move files in
parallel instead of handing the GIL over at every call. Files are read the same way, into
buffers that become bytes once the batch is read.
"""

import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_SetFromErrnoWithFilenameObject
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc

from _sys cimport (AT_SYMLINK_NOFOLLOW, ENOENT, O_CLOEXEC, O_DIRECTORY, O_RDONLY, close, errno, fstat,
                   fstatat, open, read, renameat, ssize_t, stat, timespec, utimensat)

DEF GROW = 65536


cdef class _Names:
    """``names`` as C strings (their file-system bytes), kept alive with the list that holds them."""
    cdef list raw
    cdef const char **items
    cdef Py_ssize_t count

    def __cinit__(self, list names):
        self.raw = [os.fsencode(name) for name in names]
        self.count = len(self.raw)
        self.items = <const char **>malloc(max(1, self.count) * sizeof(char *))
        if self.items == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.items[i] = <bytes>self.raw[i]

    def __dealloc__(self):
        free(self.items)


cdef int _open_dir(object path) except -1:
    cdef bytes raw = os.fsencode(path)
    cdef const char *c_path = raw
    cdef int fd
    with nogil:
        fd = open(c_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd < 0:
        PyErr_SetFromErrnoWithFilenameObject(OSError, path)
        return -1
    return fd


cdef int _fail(int error, object path) except -1:
    global errno
    errno = error
    PyErr_SetFromErrnoWithFilenameObject(OSError, path)
    return -1


def rename_files(str source, str target, list names, Py_ssize_t start, Py_ssize_t limit):
    """Rename ``source/NAME`` to ``target/NAME`` for the names from ``names[start]`` on, until
    ``limit`` were moved; the names moved, and the index after the last name tried."""
    if start < 0 or limit < 0:
        raise ValueError("start and limit must be zero or more")
    cdef _Names c_names = _Names(names)
    cdef char *done = <char *>malloc(max(1, c_names.count))
    if done == NULL:
        raise MemoryError()
    cdef int source_fd = -1, target_fd = -1, error = 0
    cdef Py_ssize_t index = start, moved = 0, i
    try:
        source_fd = _open_dir(source)
        target_fd = _open_dir(target)
        with nogil:
            while index < c_names.count and moved < limit:
                done[index] = 0
                if renameat(source_fd, c_names.items[index], target_fd, c_names.items[index]) == 0:
                    done[index] = 1
                    moved += 1
                elif errno != ENOENT:
                    error = errno
                    break
                index += 1
        if error:
            _fail(error, os.path.join(source, names[index]))
        return [names[i] for i in range(start, index) if done[i]], index
    finally:
        free(done)
        if source_fd >= 0:
            close(source_fd)
        if target_fd >= 0:
            close(target_fd)


def lease_files(str directory, list names, int64_t until_ns):
    """Set the access and modification times of ``directory/NAME`` to ``until_ns`` for each
    name; the names whose file was there."""
    cdef _Names c_names = _Names(names)
    cdef char *done = <char *>malloc(max(1, c_names.count))
    if done == NULL:
        raise MemoryError()
    cdef timespec times[2]
    times[0].tv_sec = times[1].tv_sec = until_ns // 1000000000
    times[0].tv_nsec = times[1].tv_nsec = until_ns % 1000000000
    cdef int fd = -1, error = 0
    cdef Py_ssize_t index = 0, i
    try:
        fd = _open_dir(directory)
        with nogil:
            while index < c_names.count:
                done[index] = utimensat(fd, c_names.items[index], times, 0) == 0
                if not done[index] and errno != ENOENT:
                    error = errno
                    break
                index += 1
        if error:
            _fail(error, os.path.join(directory, names[index]))
        return [names[i] for i in range(c_names.count) if done[i]]
    finally:
        free(done)
        if fd >= 0:
            close(fd)


def settle_files(str source, str target, list names, list tokens, bint unlease):
    """Rename ``source/NAME`` to ``target/NAME`` for each name whose file's mtime is its token
    (``tokens[i]`` nanoseconds) — with ``unlease``, after setting its times to 0 — and for
    each name whether it moved; False: gone, or not that token."""
    if len(tokens) != len(names):
        raise ValueError(f"{len(names)} names but {len(tokens)} tokens")
    cdef _Names c_names = _Names(names)
    cdef Py_ssize_t count = c_names.count, index = 0, i
    cdef int64_t *c_tokens = <int64_t *>malloc(max(1, count) * sizeof(int64_t))
    cdef char *done = <char *>malloc(max(1, count))
    if c_tokens == NULL or done == NULL:
        free(c_tokens)
        free(done)
        raise MemoryError()
    cdef timespec zero[2]
    zero[0].tv_sec = zero[1].tv_sec = 0
    zero[0].tv_nsec = zero[1].tv_nsec = 0
    cdef stat info
    cdef int source_fd = -1, target_fd = -1, error = 0
    try:
        for i in range(count):
            c_tokens[i] = tokens[i]
        source_fd = _open_dir(source)
        target_fd = _open_dir(target)
        with nogil:
            while index < count:
                done[index] = 0
                if fstatat(source_fd, c_names.items[index], &info, AT_SYMLINK_NOFOLLOW) != 0:
                    if errno != ENOENT:
                        error = errno
                        break
                elif info.st_mtim.tv_sec * <int64_t>1000000000 + info.st_mtim.tv_nsec == c_tokens[index]:
                    if unlease and utimensat(source_fd, c_names.items[index], zero, 0) != 0:
                        if errno != ENOENT:
                            error = errno
                            break
                    elif renameat(source_fd, c_names.items[index], target_fd, c_names.items[index]) == 0:
                        done[index] = 1
                    elif errno != ENOENT:
                        error = errno
                        break
                index += 1
        if error:
            _fail(error, os.path.join(source, names[index]))
        return [bool(done[i]) for i in range(count)]
    finally:
        free(c_tokens)
        free(done)
        if source_fd >= 0:
            close(source_fd)
        if target_fd >= 0:
            close(target_fd)


cdef int _read_whole(const char *path, char **data, Py_ssize_t *size) noexcept nogil:
    """Reads the file at ``path`` into a new buffer (``data``, ``size``): 0, or the errno."""
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


def read_files(list paths, Py_ssize_t start, Py_ssize_t max_bytes):
    """The contents of the files ``paths[start:]``, each whole (None for one gone), until
    ``max_bytes`` were read (the file that crosses it included); and the index after the last."""
    if start < 0:
        raise ValueError("start must be zero or more")
    cdef _Names c_paths = _Names(paths)
    cdef Py_ssize_t count = c_paths.count - min(start, c_paths.count), index = start, total = 0, i
    cdef char **data = <char **>malloc(max(1, count) * sizeof(char *))
    cdef Py_ssize_t *sizes = <Py_ssize_t *>malloc(max(1, count) * sizeof(Py_ssize_t))
    cdef int error = 0
    if data == NULL or sizes == NULL:
        free(data)
        free(sizes)
        raise MemoryError()
    try:
        with nogil:
            while index < c_paths.count and (total < max_bytes or index == start):
                data[index - start] = NULL
                error = _read_whole(c_paths.items[index], &data[index - start], &sizes[index - start])
                if error == ENOENT:
                    error = 0
                elif error:
                    break
                else:
                    total += sizes[index - start]
                index += 1
        if error < 0:
            raise MemoryError()
        if error:
            _fail(error, paths[index])
        return [None if data[i] == NULL else PyBytes_FromStringAndSize(data[i], sizes[i])
                for i in range(index - start)], index
    finally:
        for i in range(index - start):
            free(data[i])
        free(data)
        free(sizes)
