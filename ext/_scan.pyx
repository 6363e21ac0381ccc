"""Directory scanning, compiled twin of ``dropr._scan_py`` (the rules are documented there).

The whole directory is read with ``readdir`` without the GIL. The smallest ``limit`` names
seen so far are kept as C strings in a max-heap, so a name that is not selected — skipped,
not a message, or after the first ``limit`` — costs a byte comparison and no Python object,
and memory stays bounded by ``limit`` however deep the queue is.
"""

import os

from cpython.exc cimport PyErr_SetFromErrnoWithFilenameObject
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, strcmp, strcspn, strlen

from _codec cimport DROPR_ID_LEN, is_message_head
from _sys cimport DIR, closedir, dirent, errno, opendir, readdir

cdef extern from "Python.h":
    str PyUnicode_DecodeFSDefaultAndSize(const char *name, Py_ssize_t size)

ctypedef struct Field:
    const char *data
    size_t length

ctypedef struct Heap:
    char **names
    Py_ssize_t size
    Py_ssize_t capacity
    Py_ssize_t limit


cdef int _compare(const void *a, const void *b) noexcept nogil:
    return strcmp((<const char **>a)[0], (<const char **>b)[0])


cdef void _sift_down(Heap *heap) noexcept nogil:
    cdef Py_ssize_t i = 0, child
    cdef char **names = heap.names
    cdef char *top = names[0]
    while True:
        child = 2 * i + 1
        if child >= heap.size:
            break
        if child + 1 < heap.size and strcmp(names[child + 1], names[child]) > 0:
            child += 1
        if strcmp(names[child], top) <= 0:
            break
        names[i] = names[child]
        i = child
    names[i] = top


cdef void _sift_up(Heap *heap) noexcept nogil:
    cdef Py_ssize_t i = heap.size - 1, parent
    cdef char **names = heap.names
    cdef char *last = names[i]
    while i > 0:
        parent = (i - 1) // 2
        if strcmp(names[parent], last) >= 0:
            break
        names[i] = names[parent]
        i = parent
    names[i] = last


cdef bint _offer(Heap *heap, const char *name) noexcept nogil:
    """Keeps ``name`` if it is among the ``limit`` smallest so far; False when out of memory."""
    cdef size_t length = strlen(name) + 1
    cdef char *copy
    cdef char **grown
    if heap.size < heap.limit:
        if heap.size == heap.capacity:
            heap.capacity = min(heap.limit, max(16, 2 * heap.capacity))
            grown = <char **>realloc(heap.names, heap.capacity * sizeof(char *))
            if grown == NULL:
                return False
            heap.names = grown
        copy = <char *>malloc(length)
        if copy == NULL:
            return False
        memcpy(copy, name, length)
        heap.names[heap.size] = copy
        heap.size += 1
        _sift_up(heap)
    elif strcmp(name, heap.names[0]) < 0:
        copy = <char *>realloc(heap.names[0], length)
        if copy == NULL:
            return False
        memcpy(copy, name, length)
        heap.names[0] = copy
        _sift_down(heap)
    return True


cdef bint _skipped(const char *name, const Field *skip, Py_ssize_t skip_count) noexcept nogil:
    cdef const char *field = name + DROPR_ID_LEN + 2
    cdef size_t length = strcspn(field, b"+")
    cdef Py_ssize_t i
    for i in range(skip_count):
        if skip[i].length == length and memcmp(skip[i].data, field, length) == 0:
            return True
    return False


cdef DIR *_open(bytes raw, object path) except NULL:
    cdef const char *c_path = raw
    cdef DIR *directory
    with nogil:
        directory = opendir(c_path)
    if directory == NULL:
        PyErr_SetFromErrnoWithFilenameObject(OSError, path)
    return directory


def scan(path, Py_ssize_t limit, skip=()) -> list:
    """The first ``limit`` message names of directory ``path`` in delivery order, leaving out
    names whose field after the first ``+`` (a spool name's peer) is in ``skip``."""
    global errno
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    skip_raw = [os.fsencode(field) for field in skip]
    cdef Py_ssize_t skip_count = len(skip_raw), i
    cdef Field *fields = <Field *>malloc(max(1, skip_count) * sizeof(Field))
    if fields == NULL:
        raise MemoryError()
    cdef Heap heap
    heap.names = NULL
    heap.size = heap.capacity = 0
    heap.limit = limit
    cdef DIR *directory = NULL
    cdef dirent *entry
    cdef int error = 0
    cdef bint out_of_memory = False
    try:
        for i in range(skip_count):
            fields[i].data = <bytes>skip_raw[i]
            fields[i].length = len(<bytes>skip_raw[i])
        directory = _open(os.fsencode(path), path)
        with nogil:
            while limit:
                errno = 0
                entry = readdir(directory)
                if entry == NULL:
                    error = errno
                    break
                if not is_message_head(entry.d_name):
                    continue
                if skip_count and _skipped(entry.d_name, fields, skip_count):
                    continue
                if not _offer(&heap, entry.d_name):
                    out_of_memory = True
                    break
            qsort(heap.names, heap.size, sizeof(char *), _compare)
        if out_of_memory:
            raise MemoryError()
        if error:
            errno = error
            PyErr_SetFromErrnoWithFilenameObject(OSError, path)
        return [PyUnicode_DecodeFSDefaultAndSize(heap.names[i], strlen(heap.names[i]))
                for i in range(heap.size)]
    finally:
        if directory != NULL:
            closedir(directory)
        for i in range(heap.size):
            free(heap.names[i])
        free(heap.names)
        free(fields)


def count(path) -> int:
    """The number of entries of directory ``path`` whose name does not start with ``.``."""
    global errno
    cdef DIR *directory = _open(os.fsencode(path), path)
    cdef dirent *entry
    cdef Py_ssize_t total = 0
    cdef int error = 0
    with nogil:
        while True:
            errno = 0
            entry = readdir(directory)
            if entry == NULL:
                error = errno
                break
            if entry.d_name[0] != b'.':
                total += 1
        closedir(directory)
    if error:
        errno = error
        PyErr_SetFromErrnoWithFilenameObject(OSError, path)
    return total
