"""The put system-call path, compiled twin of ``dropr._drop_py``.

One call makes the id, the CRC-32 and the spool name in C and does openat, write,
[fdatasync], close, renameat, [fsync] with the GIL released, so a put costs what the file
system charges and threads putting at once run in parallel.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport strerror

from _codec cimport DROPR_ID_LEN, DROPR_NAME_MAX, CodecAPI, format_spool_name, import_codec
from _sys cimport (EINTR, ENOSPC, O_CLOEXEC, O_CREAT, O_EXCL, O_WRONLY, close, errno, fdatasync,
                   fsync, openat, renameat, ssize_t, unlinkat, write)

import dropr._codec  # the capsule lookup below walks attributes; the submodule must be loaded

cdef const CodecAPI *_codec = import_codec()
cdef uint32_t _crc_table[8][256]


cdef void _init_crc_table() noexcept:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = i
        for k in range(8):
            c = (c >> 1) ^ (0xEDB88320u if c & 1 else 0)
        _crc_table[0][i] = c
    for i in range(256):
        c = _crc_table[0][i]
        for k in range(1, 8):
            c = _crc_table[0][c & 0xFF] ^ (c >> 8)
            _crc_table[k][i] = c


_init_crc_table()


cdef inline uint32_t _load32(const uint8_t *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef uint32_t crc32(const uint8_t *p, size_t n) noexcept nogil:
    """CRC-32 as zlib computes it, eight bytes a step (slicing-by-8)."""
    cdef uint32_t c = 0xFFFFFFFFu, a, b
    while n >= 8:
        a = _load32(p) ^ c
        b = _load32(p + 4)
        c = (_crc_table[7][a & 0xFF] ^ _crc_table[6][(a >> 8) & 0xFF]
             ^ _crc_table[5][(a >> 16) & 0xFF] ^ _crc_table[4][a >> 24]
             ^ _crc_table[3][b & 0xFF] ^ _crc_table[2][(b >> 8) & 0xFF]
             ^ _crc_table[1][(b >> 16) & 0xFF] ^ _crc_table[0][b >> 24])
        p += 8
        n -= 8
    while n:
        c = _crc_table[0][(c ^ p[0]) & 0xFF] ^ (c >> 8)
        p += 1
        n -= 1
    return c ^ 0xFFFFFFFFu


cdef int _undo(int err, int fd, int tmp_fd, const char *msg_id) noexcept nogil:
    """Close and remove the temporary file; returns ``err``, the errno that called for it."""
    if fd >= 0:
        close(fd)
    unlinkat(tmp_fd, msg_id, 0)
    return err


cdef int _drop(int tmp_fd, int queue_fd, const char *msg_id, const char *name,
               const char *data, size_t left, bint sync) noexcept nogil:
    """Writes the message; returns 0, or the errno of the failed step with nothing left."""
    cdef ssize_t n
    cdef int err
    cdef int fd = openat(tmp_fd, msg_id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
    if fd < 0:
        return errno
    while left:
        n = write(fd, data, left)
        if n < 0:
            if errno == EINTR:
                continue
            return _undo(errno, fd, tmp_fd, msg_id)
        if n == 0:
            return _undo(ENOSPC, fd, tmp_fd, msg_id)
        data += n
        left -= <size_t>n
    if sync and fdatasync(fd) != 0:
        return _undo(errno, fd, tmp_fd, msg_id)
    if close(fd) != 0:
        return _undo(errno, -1, tmp_fd, msg_id)
    if renameat(tmp_fd, msg_id, queue_fd, name) != 0:
        return _undo(errno, -1, tmp_fd, msg_id)
    if sync and fsync(queue_fd) != 0:
        err = errno
        unlinkat(queue_fd, name, 0)
        return err
    return 0


def put(int tmp_fd, int queue_fd, str peer_field not None, str channel_field not None,
        int priority, payload, bint sync):
    """Write ``payload`` as a new queued message and return its id.

    ``peer_field`` and ``channel_field`` are already escaped. With ``sync`` the file data
    and then the queue directory are flushed to disk before returning. On failure nothing
    is left in ``tmp/`` or ``queue/`` and the ``OSError`` is raised with its errno; a field
    or priority outside the name format raises ValueError before anything is written.
    """
    cdef Py_ssize_t peer_len, channel_len, name_len = -1
    cdef const char *peer = PyUnicode_AsUTF8AndSize(peer_field, &peer_len)
    cdef const char *channel = PyUnicode_AsUTF8AndSize(channel_field, &channel_len)
    cdef char msg_id[DROPR_ID_LEN + 1]
    cdef char name[DROPR_NAME_MAX + 1]
    cdef Py_buffer view
    cdef int err = 0
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            _codec.new_id(msg_id)
            name_len = format_spool_name(
                name, priority, msg_id, peer, peer_len, channel, channel_len, <unsigned long long>view.len,
                crc32(<const uint8_t *>view.buf, <size_t>view.len))
            if name_len >= 0:
                err = _drop(tmp_fd, queue_fd, msg_id, name, <const char *>view.buf, <size_t>view.len, sync)
    finally:
        PyBuffer_Release(&view)
    if name_len < 0:
        raise ValueError(f"not a spool name: priority {priority!r}, fields {peer_field!r}, {channel_field!r}")
    if err:
        raise OSError(err, strerror(err).decode("utf-8", "replace"))
    return msg_id[:DROPR_ID_LEN].decode("ascii")
