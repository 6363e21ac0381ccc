# What makes dropr/_putter_py.py, compiled as dropr._putter, fast: Putter and Spools become
# extension types with C fields, and `put` is the compiled put path, called in C.

cimport cython

from dropr._drop cimport put, put_many


cdef class Putter:
    cdef int _tmp_fd, _queue_fd, _free_fd, _idle
    cdef list _free
    cdef Py_ssize_t _max_payload, _batch_count, _batch_bytes
    cdef object _fields, _coerce, _failed
    cdef dict _known
    cdef object _closer
    cdef object __weakref__

    cpdef close(self)

    @cython.locals(fields=tuple)
    cpdef str put(self, payload, peer, channel, priority, delay, bint sync)

    @cython.locals(fields=tuple, items=list, count=Py_ssize_t, i=Py_ssize_t, total=Py_ssize_t)
    cpdef list put_many(self, payloads, peer, channel, priority, delay, bint sync)

    @cython.locals(names=list, start=Py_ssize_t)
    cdef object _reusable(self)

    @cython.locals(fields=tuple)
    cdef tuple _fields_of(self, peer, channel)


cdef class Spools:
    cdef readonly dict putters
    cdef object _open_putter

    cdef Putter _open(self, spool)
