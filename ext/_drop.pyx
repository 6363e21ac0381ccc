"""The put path, compiled twin of ``dropr._drop_py`` (the rules are documented there).

One call makes the id, the CRC-32 and the spool name in C and does openat (or renameat of
an acknowledged file out of ``free/`` and openat of it), write, [ftruncate], [fdatasync],
close, renameat into the queue bucket (mkdirat first if the bucket is new),
[fsync of the bucket and, when needed, of queue/] with the GIL released, so a put costs what
the file system charges and threads putting at once run in parallel. A batch is the same
steps for one file, its index built in C and written with its payloads by ``writev``.
``put`` and ``put_many`` are declared in ``dropr/_drop.pxd`` for the compiled front,
``dropr._putter``, which calls them in C.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strerror

from _codec cimport (DROPR_BATCH_ENTRY, DROPR_BATCH_HEADER, DROPR_BUCKET_LEN, DROPR_ID_LEN,
                     DROPR_MAX_BATCH_COUNT, DROPR_NAME_MAX, CodecAPI, batch_index_bytes,
                     format_spool_name, hex_value, import_codec, put_batch_entry, put_batch_header)
from _sys cimport (CLOCK_REALTIME, EEXIST, ENOENT, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_EXCL, O_RDONLY,
                   O_WRONLY, clock_gettime, close, errno, fdatasync, fsync, ftruncate, iovec, mkdirat, off_t,
                   openat, renameat, timespec, unlinkat, write_all)

cdef extern from * nogil:
    uint32_t __atomic_load_n(uint32_t *ptr, int order)
    void __atomic_store_n(uint32_t *ptr, uint32_t value, int order)
    enum:
        __ATOMIC_RELAXED

import dropr._codec  # the capsule lookup below walks attributes; the submodule must be loaded
import dropr._files

cdef const CodecAPI *_codec = import_codec()
cdef uint32_t _crc_table[8][256]

STALE_PUT_NS = 1_000_000_000
BUCKET_ATTEMPTS = 8
cdef int64_t _stale_put_ns = STALE_PUT_NS
cdef int _bucket_attempts = BUCKET_ATTEMPTS
cdef int _file_mode = dropr._files.FILE_MODE, _dir_mode = dropr._files.DIR_MODE
cdef uint32_t _synced_slot[10]  # per priority: the last bucket whose entry in queue/ this process synced


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


cdef inline uint32_t crc32(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil:
    """CRC-32 as zlib's ``crc32(data, crc)`` computes it (``crc`` 0 to start), eight bytes a
    step (slicing-by-8)."""
    cdef uint32_t c = crc ^ 0xFFFFFFFFu, a, b
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


cdef uint64_t _hex(const char *digits, int count) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(count):
        value = value * 16 + <uint64_t>hex_value(<unsigned char>digits[i])
    return value


cdef int _enter(int tmp_fd, int queue_fd, const char *msg_id, char *path, bint *made) noexcept nogil:
    """Renames tmp/ID to queue/BUCKET/NAME (``path``), making the bucket when it is missing
    (it may be new, or removed by the relay as empty meanwhile); 0 or the errno."""
    cdef int attempt
    for attempt in range(_bucket_attempts):
        if renameat(tmp_fd, msg_id, queue_fd, path) == 0:
            return 0
        if errno != ENOENT:
            return errno
        path[DROPR_BUCKET_LEN] = 0
        if mkdirat(queue_fd, path, _dir_mode) == 0:
            made[0] = True
        elif errno != EEXIST:
            path[DROPR_BUCKET_LEN] = b'/'
            return errno
        path[DROPR_BUCKET_LEN] = b'/'
    return ENOENT


cdef int _sync_entry(int queue_fd, char *path, const char *msg_id, int priority, bint made) noexcept nogil:
    """Flushes the bucket and, unless known durable already, the bucket's entry in queue/."""
    cdef timespec now
    cdef int fd
    cdef uint32_t slot = <uint32_t>_hex(msg_id, 8)
    path[DROPR_BUCKET_LEN] = 0
    fd = openat(queue_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    path[DROPR_BUCKET_LEN] = b'/'
    if fd < 0:
        return errno
    if fsync(fd) != 0:
        close(fd)
        return errno
    close(fd)
    clock_gettime(CLOCK_REALTIME, &now)
    if (made or __atomic_load_n(&_synced_slot[priority], __ATOMIC_RELAXED) != slot
            or <int64_t>now.tv_sec * 1000000000 + now.tv_nsec
               - <int64_t>_hex(msg_id, 16) > _stale_put_ns):
        if fsync(queue_fd) != 0:
            return errno
        __atomic_store_n(&_synced_slot[priority], slot, __ATOMIC_RELAXED)
    return 0


cdef int _open_tmp(int tmp_fd, const char *msg_id, int free_fd, const char *reuse, bint *reused) noexcept nogil:
    """Opens ``tmp/ID`` to write: the file ``reuse`` of ``free/`` renamed there, if it is still
    there (another producer may have taken it) and writable, else a new file; the fd or -1."""
    cdef int fd
    if reuse != NULL and renameat(free_fd, reuse, tmp_fd, msg_id) == 0:
        fd = openat(tmp_fd, msg_id, O_WRONLY | O_CLOEXEC)
        if fd >= 0:
            reused[0] = True
            return fd
        unlinkat(tmp_fd, msg_id, 0)
    return openat(tmp_fd, msg_id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, _file_mode)


cdef int _drop(int tmp_fd, int queue_fd, const char *msg_id, char *path, int priority,
               iovec *iov, Py_ssize_t iov_count, bint sync, int free_fd, const char *reuse) noexcept nogil:
    """Writes the file of ``iov``'s buffers; returns 0, or the errno of the failed step with
    nothing left. A reused file is cut to its new length and written over in place."""
    cdef int err
    cdef bint made = False, reused = False
    cdef off_t size = 0
    cdef Py_ssize_t i
    for i in range(iov_count):
        size += <off_t>iov[i].iov_len
    cdef int fd = _open_tmp(tmp_fd, msg_id, free_fd, reuse, &reused)
    if fd < 0:
        return errno
    if reused and ftruncate(fd, size) != 0:  # no byte of the old file past the new end
        return _undo(errno, fd, tmp_fd, msg_id)
    err = write_all(fd, iov, iov_count)
    if err:
        return _undo(err, fd, tmp_fd, msg_id)
    if sync and fdatasync(fd) != 0:
        return _undo(errno, fd, tmp_fd, msg_id)
    if close(fd) != 0:
        return _undo(errno, -1, tmp_fd, msg_id)
    err = _enter(tmp_fd, queue_fd, msg_id, path, &made)
    if err:
        return _undo(err, -1, tmp_fd, msg_id)
    if sync:
        err = _sync_entry(queue_fd, path, msg_id, priority, made)
        if err:
            unlinkat(queue_fd, path, 0)
            return err
    return 0


cdef int _drop_named(int tmp_fd, int queue_fd, const char *msg_id, char *path, Py_ssize_t name_len,
                     int priority, iovec *iov, Py_ssize_t iov_count, bint sync, int free_fd,
                     const char *reuse) noexcept nogil:
    """As ``_drop`` once the name is made (at ``path + DROPR_BUCKET_LEN + 1``); -1 when
    ``name_len`` says it could not be."""
    if name_len < 0:
        return -1
    memcpy(path, path + DROPR_BUCKET_LEN + 1, DROPR_BUCKET_LEN)
    path[DROPR_BUCKET_LEN] = b'/'
    return _drop(tmp_fd, queue_fd, msg_id, path, priority, iov, iov_count, sync, free_fd, reuse)


cdef int _raise(int err, str peer_field, str channel_field, int priority,
                unsigned long long delay_ms) except -1:
    if err < 0:
        raise ValueError(f"not a spool name: priority {priority!r}, fields {peer_field!r}, "
                         f"{channel_field!r}, delay {delay_ms!r} ms")
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef inline const char *_name_of(str reuse) except? NULL:
    return NULL if reuse is None else PyUnicode_AsUTF8AndSize(reuse, NULL)


cpdef str put(int tmp_fd, int queue_fd, str peer_field, str channel_field, int priority, payload,
              bint sync, unsigned long long delay_ms=0, int free_fd=-1, str reuse=None):
    """Write ``payload`` as a new queued message and return its id (see ``dropr._drop_py.put``)."""
    cdef const char *reuse_name = _name_of(reuse)
    cdef Py_ssize_t peer_len, channel_len
    cdef const char *peer = PyUnicode_AsUTF8AndSize(peer_field, &peer_len)
    cdef const char *channel = PyUnicode_AsUTF8AndSize(channel_field, &channel_len)
    cdef char msg_id[DROPR_ID_LEN + 1]
    cdef char path[DROPR_BUCKET_LEN + 1 + DROPR_NAME_MAX + 1]  # BUCKET/NAME
    cdef Py_buffer view
    cdef iovec iov
    cdef int err = 0
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            _codec.new_id(msg_id)
            iov.iov_base, iov.iov_len = view.buf, <size_t>view.len
            err = _drop_named(tmp_fd, queue_fd, msg_id, path, format_spool_name(
                path + DROPR_BUCKET_LEN + 1, priority, msg_id, peer, peer_len, channel, channel_len,
                <unsigned long long>view.len, crc32(0, <const uint8_t *>view.buf, <size_t>view.len),
                1, delay_ms), priority, &iov, 1, sync, free_fd, reuse_name)
    finally:
        PyBuffer_Release(&view)
    if err:
        _raise(err, peer_field, channel_field, priority, delay_ms)
    return msg_id[:DROPR_ID_LEN].decode("ascii")


cdef int _drop_batch(int tmp_fd, int queue_fd, const char *peer, Py_ssize_t peer_len,
                     const char *channel, Py_ssize_t channel_len, int priority, Py_buffer *views,
                     Py_ssize_t count, char *ids, char *index, iovec *iov, bint sync,
                     unsigned long long delay_ms, int free_fd, const char *reuse) noexcept nogil:
    """Builds the batch file of ``views`` (ids into ``ids``, its index into ``index``, both
    sized for ``count``; ``iov`` for ``count + 1`` buffers) and writes it as ``_drop`` does."""
    cdef char first[DROPR_ID_LEN + 1]
    cdef char path[DROPR_BUCKET_LEN + 1 + DROPR_NAME_MAX + 1]
    cdef Py_ssize_t i, index_len = batch_index_bytes(count)
    cdef unsigned long long size = <unsigned long long>index_len
    cdef uint32_t crc
    _codec.new_ids(ids, count)
    memcpy(first, ids, DROPR_ID_LEN)
    first[DROPR_ID_LEN] = 0
    put_batch_header(index, count)
    for i in range(count):
        put_batch_entry(index + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY, ids + i * DROPR_ID_LEN,
                        <unsigned long long>views[i].len,
                        crc32(0, <const uint8_t *>views[i].buf, <size_t>views[i].len))
        size += <unsigned long long>views[i].len
    crc = crc32(0, <const uint8_t *>index, <size_t>index_len)
    iov[0].iov_base, iov[0].iov_len = index, <size_t>index_len
    for i in range(count):
        crc = crc32(crc, <const uint8_t *>views[i].buf, <size_t>views[i].len)
        iov[i + 1].iov_base, iov[i + 1].iov_len = views[i].buf, <size_t>views[i].len
    return _drop_named(tmp_fd, queue_fd, first, path, format_spool_name(
        path + DROPR_BUCKET_LEN + 1, priority, first, peer, peer_len, channel, channel_len, size, crc,
        <unsigned long long>count, delay_ms), priority, iov, count + 1, sync, free_fd, reuse)


cpdef list put_many(int tmp_fd, int queue_fd, str peer_field, str channel_field, int priority,
                    list payloads, bint sync, unsigned long long delay_ms=0, int free_fd=-1, str reuse=None):
    """Write ``payloads`` as one batch file of new queued messages and return their ids (see
    ``dropr._drop_py.put_many``)."""
    cdef Py_ssize_t count = len(payloads), got = 0, i
    if count <= 1:
        return [put(tmp_fd, queue_fd, peer_field, channel_field, priority, p, sync, delay_ms, free_fd, reuse)
                for p in payloads]
    if count > DROPR_MAX_BATCH_COUNT:
        raise ValueError(f"a batch holds at most {DROPR_MAX_BATCH_COUNT} messages, not {count}")
    cdef Py_ssize_t peer_len, channel_len
    cdef const char *peer = PyUnicode_AsUTF8AndSize(peer_field, &peer_len)
    cdef const char *channel = PyUnicode_AsUTF8AndSize(channel_field, &channel_len)
    cdef Py_buffer *views = <Py_buffer *>malloc(count * sizeof(Py_buffer))
    cdef char *ids = <char *>malloc(count * DROPR_ID_LEN)
    cdef char *index = <char *>malloc(batch_index_bytes(count))
    cdef iovec *iov = <iovec *>malloc((count + 1) * sizeof(iovec))
    cdef int err = 0
    cdef const char *reuse_name = _name_of(reuse)
    try:
        if views == NULL or ids == NULL or index == NULL or iov == NULL:
            raise MemoryError()
        for i in range(count):
            PyObject_GetBuffer(payloads[i], &views[i], PyBUF_SIMPLE)
            got += 1
        with nogil:
            err = _drop_batch(tmp_fd, queue_fd, peer, peer_len, channel, channel_len, priority, views,
                              count, ids, index, iov, sync, delay_ms, free_fd, reuse_name)
        if err:
            _raise(err, peer_field, channel_field, priority, delay_ms)
        return [ids[i * DROPR_ID_LEN:(i + 1) * DROPR_ID_LEN].decode("ascii") for i in range(count)]
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        free(views)
        free(ids)
        free(index)
        free(iov)
