"""Batch manifests, compiled twin of ``dropr._manifest_py`` (the format is documented there).

The msgpack bytes are written directly from the names' characters, and a batch file's
index, into one growing C buffer — the same bytes ``msgpack.packb(entries,
use_bin_type=True)`` gives, without building the entries as Python objects. A batch file's
index is read and checked in C (open, fstat, pread, close), so its messages cost no Python
object each; so are the files of a request's joined part, without the GIL. On the server's
side, the common entries of a received manifest are checked here, without bytecode.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.limits cimport LLONG_MAX
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from _codec cimport (
    DROPR_BATCH_ENTRY, DROPR_BATCH_HEADER, DROPR_BUCKET_LEN, DROPR_ID_LEN,
    DROPR_MAX_BATCH_COUNT, PARSE_NOT_SPOOL, PARSE_OK, PyUnicode_DATA, PyUnicode_KIND,
    PyUnicode_READ, SpoolParts, batch_header_count, batch_index_bytes, get_be, hex_digits_value,
    is_id, is_lower_hex, next_batch_id, parse_spool, unescape_into,
)
from _sys cimport EINTR, O_CLOEXEC, O_RDONLY, close, errno, fstat, open, pread, ssize_t, stat

ctypedef struct Buffer:
    char *data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _reserve(Buffer *buf, Py_ssize_t extra) except -1:
    cdef Py_ssize_t capacity = buf.capacity
    cdef char *grown
    if buf.size + extra <= capacity:
        return 0
    while capacity < buf.size + extra:
        capacity = max(256, 2 * capacity)
    grown = <char *>realloc(buf.data, capacity)
    if grown == NULL:
        raise MemoryError()
    buf.data = grown
    buf.capacity = capacity
    return 0


cdef inline void _put_be(Buffer *buf, unsigned char tag, unsigned long long value,
                         int width) noexcept:
    cdef int i
    buf.data[buf.size] = tag
    for i in range(width):
        buf.data[buf.size + width - i] = <char>(value >> (8 * i))
    buf.size += width + 1


cdef int _put_uint(Buffer *buf, unsigned long long value) except -1:
    _reserve(buf, 9)
    if value < 0x80:
        buf.data[buf.size] = <char>value
        buf.size += 1
    elif value <= 0xFF:
        _put_be(buf, 0xCC, value, 1)
    elif value <= 0xFFFF:
        _put_be(buf, 0xCD, value, 2)
    elif value <= 0xFFFFFFFF:
        _put_be(buf, 0xCE, value, 4)
    else:
        _put_be(buf, 0xCF, value, 8)
    return 0


cdef int _put_str(Buffer *buf, const char *text, Py_ssize_t length) except -1:
    _reserve(buf, length + 5)
    if length < 32:
        buf.data[buf.size] = <char>(0xA0 | length)
        buf.size += 1
    elif length <= 0xFF:
        _put_be(buf, 0xD9, length, 1)
    elif length <= 0xFFFF:
        _put_be(buf, 0xDA, length, 2)
    else:
        _put_be(buf, 0xDB, length, 4)
    memcpy(buf.data + buf.size, text, length)
    buf.size += length
    return 0


cdef int _put_array(Buffer *buf, Py_ssize_t length) except -1:
    _reserve(buf, 5)
    if length < 16:
        buf.data[buf.size] = <char>(0x90 | length)
        buf.size += 1
    elif length <= 0xFFFF:
        _put_be(buf, 0xDC, length, 2)
    else:
        _put_be(buf, 0xDD, length, 4)
    return 0


cdef int _put_text(Buffer *buf, str text) except -1:
    cdef Py_ssize_t length
    cdef const char *raw = PyUnicode_AsUTF8AndSize(text, &length)
    return _put_str(buf, raw, length)


cdef int _put_channel(Buffer *buf, Buffer *scratch, str name, Py_ssize_t start,
                      Py_ssize_t end, texts) except -1:
    """The channel's text: a compact field looked up, an escaped one unescaped."""
    cdef int kind = PyUnicode_KIND(name)
    cdef void *data = PyUnicode_DATA(name)
    cdef Py_ssize_t i, length = end - start
    cdef Py_UCS4 c
    cdef bint escaped = False, ascii = True, high = False
    if PyUnicode_READ(kind, data, start) == 126:
        return _put_text(buf, texts[name[start:end]])
    for i in range(start, end):
        c = PyUnicode_READ(kind, data, i)
        ascii &= c <= 127
        escaped |= c == 37
    if not ascii:
        field = name[start:end]
        if escaped:
            field.encode("ascii")
        return _put_text(buf, field)
    scratch.size = 0
    _reserve(scratch, 2 * length)
    for i in range(length):
        scratch.data[length + i] = <char>PyUnicode_READ(kind, data, start + i)
    length = unescape_into(scratch.data + length, length, scratch.data)
    for i in range(length):
        high |= <unsigned char>scratch.data[i] > 127
    if high:
        PyUnicode_DecodeUTF8(scratch.data, length, NULL)
    return _put_str(buf, scratch.data, length)


cdef int _read_head(const char *path, char *data, Py_ssize_t wanted, Py_ssize_t *got,
                    unsigned long long *length) noexcept nogil:
    """Reads up to ``wanted`` bytes of the file at ``path`` from its start into ``data`` and
    its ``length``; 0 or the errno."""
    global errno
    cdef stat info
    cdef ssize_t n
    cdef int err = 0
    cdef int fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        return errno
    if fstat(fd, &info) != 0:
        err = errno
    else:
        length[0] = <unsigned long long>info.st_size
        got[0] = 0
        while got[0] < wanted:
            n = pread(fd, data + got[0], wanted - got[0], got[0])
            if n < 0:
                if errno == EINTR:
                    continue
                err = errno
                break
            if n == 0:
                break
            got[0] += n
    close(fd)
    return err


cdef object _index_problem(const char *data, Py_ssize_t got, Py_ssize_t count,
                           const char *first_id, unsigned long long size, unsigned long long length):
    """Why a batch file's first ``got`` bytes and ``length`` do not match its name, or None;
    the checks in the order of the reference."""
    cdef Py_ssize_t header_count, i
    cdef unsigned long long offset, entry_size
    cdef char expected[DROPR_ID_LEN]
    if length != size:
        return f"{length} bytes, not the {size} its name says"
    if got < DROPR_BATCH_HEADER:
        return "too short for a batch file"
    header_count = batch_header_count(data)
    if header_count < 0:
        return "not a batch file (bad magic)"
    if not 2 <= header_count <= DROPR_MAX_BATCH_COUNT:
        return f"batch file of {header_count} messages"
    if got < batch_index_bytes(header_count):
        return f"batch file index cut short: {got} of {batch_index_bytes(header_count)} bytes"
    offset = batch_index_bytes(header_count)
    for i in range(header_count):
        if not is_id(data + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY):
            return "batch file index holds a bad id"
        entry_size = get_be(data + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY + DROPR_ID_LEN, 8)
        if entry_size > 0xFFFFFFFFFFFFFFFFULL - offset:
            return "batch file index: sizes add up to more than 64 bits"
        offset += entry_size
    if header_count != count:
        return f"{header_count} messages, not the {count} its name says"
    memcpy(expected, first_id, DROPR_ID_LEN)
    for i in range(count):
        if memcmp(data + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY, expected, DROPR_ID_LEN) != 0:
            return "its ids are not those of its name"
        next_batch_id(expected)
    if offset != size:
        return f"its payloads take {offset} bytes, not {size}"
    return None


cdef int _put_batch(Buffer *buf, Buffer *scratch, str name, SpoolParts *parts, const char *first_id,
                    unsigned long long size, bytes queue_dir, texts) except -1:
    """The entries of a batch file's messages, from its index."""
    cdef Py_ssize_t count = <Py_ssize_t>parts.count, wanted = batch_index_bytes(count), got = 0, i
    cdef Py_ssize_t channel_at, channel_len
    cdef unsigned long long length = 0, offset = <unsigned long long>wanted
    cdef const char *entry
    cdef int err
    cdef bytes path = b"%s/%s/%s" % (queue_dir, name[:DROPR_BUCKET_LEN].encode("ascii"), os.fsencode(name))
    cdef const char *c_path = path
    cdef Buffer index
    memset(&index, 0, sizeof(index))
    try:
        _reserve(&index, wanted)
        with nogil:
            err = _read_head(c_path, index.data, wanted, &got, &length)
        if err:
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        problem = _index_problem(index.data, got, count, first_id, size, length)
        if problem is not None:
            raise ValueError(f"batch file {name}: {problem}")
        channel_at = channel_len = 0
        for i in range(count):
            entry = index.data + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY
            _put_array(buf, 8 if parts.delay_ms else 7)
            _put_str(buf, entry, DROPR_ID_LEN)
            if i == 0:
                channel_at = buf.size
                _put_channel(buf, scratch, name, parts.channel_start, parts.channel_end, texts)
                channel_len = buf.size - channel_at
            else:
                _reserve(buf, channel_len)
                memcpy(buf.data + buf.size, buf.data + channel_at, channel_len)
                buf.size += channel_len
            _put_uint(buf, parts.priority)
            _put_str(buf, first_id, DROPR_ID_LEN)
            _put_uint(buf, get_be(entry + DROPR_ID_LEN, 8))
            _put_uint(buf, get_be(entry + DROPR_ID_LEN + 8, 4))
            _put_uint(buf, offset)
            if parts.delay_ms:
                _put_uint(buf, parts.delay_ms)
            offset += get_be(entry + DROPR_ID_LEN, 8)
        return 0
    finally:
        free(index.data)


cdef Py_ssize_t _entry_count(list names) except -1:
    """How many entries the names make: a batch file's count of messages each."""
    cdef Py_ssize_t total = 0
    cdef SpoolParts parts
    cdef str name
    for name in names:
        if name is None:
            raise TypeError("a spool name must be str, not None")
        memset(&parts, 0, sizeof(parts))
        if parse_spool(name, &parts) != PARSE_OK:
            parts.count = 1  # refused with its reason by build
        total += <Py_ssize_t>parts.count
    return total


def build(names, texts, queue_dir=None, *, str joined_part=None, Py_ssize_t joined=0) -> bytes:
    """The msgpack manifest of the messages of the files with these spool names, queued in
    ``queue_dir`` (read for batch files only), the first ``joined`` of them plain messages
    in the part ``joined_part``; ValueError on a bad name or batch file."""
    cdef Buffer buf, scratch
    cdef SpoolParts parts
    cdef unsigned long long size, joined_at = 0
    cdef char msg_id[DROPR_ID_LEN]
    cdef int result, kind, i
    cdef Py_ssize_t index = 0
    cdef bint in_joined
    cdef str name
    cdef list listed = list(names)
    cdef bytes queue_raw = None if queue_dir is None else os.fsencode(queue_dir)
    if joined and joined_part is None:
        raise ValueError("joined messages need a joined_part")
    memset(&buf, 0, sizeof(buf))
    memset(&scratch, 0, sizeof(scratch))
    try:
        _put_array(&buf, _entry_count(listed))
        for name in listed:
            in_joined = index < joined
            index += 1
            memset(&parts, 0, sizeof(parts))
            result = parse_spool(name, &parts)
            if result != PARSE_OK:
                what = "spool message" if result == PARSE_NOT_SPOOL else "message"
                raise ValueError(f"not a {what} name: {name!r}")
            if not hex_digits_value(name, parts.size_start, parts.size_end, &size):
                raise ValueError(f"size out of range in {name!r}")
            kind = PyUnicode_KIND(name)
            for i in range(DROPR_ID_LEN):
                msg_id[i] = <char>PyUnicode_READ(kind, PyUnicode_DATA(name), i + 1)
            if parts.count > 1:
                if in_joined:
                    raise ValueError(f"batch file {name}: only plain messages travel joined")
                if queue_raw is None:
                    raise ValueError(f"batch file {name}: no queue directory to read it from")
                _put_batch(&buf, &scratch, name, &parts, msg_id, size, queue_raw, texts)
                continue
            _put_array(&buf, 8 if parts.delay_ms else 7 if in_joined else 6)
            _put_str(&buf, msg_id, DROPR_ID_LEN)
            _put_channel(&buf, &scratch, name, parts.channel_start, parts.channel_end, texts)
            _put_uint(&buf, parts.priority)
            if in_joined:
                _put_text(&buf, joined_part)
            else:
                _put_str(&buf, msg_id, DROPR_ID_LEN)
            _put_uint(&buf, size)
            _put_uint(&buf, parts.crc)
            if in_joined or parts.delay_ms:
                _put_uint(&buf, joined_at if in_joined else 0)
            if parts.delay_ms:
                _put_uint(&buf, parts.delay_ms)
            if in_joined:
                if size > 0xFFFFFFFFFFFFFFFFULL - joined_at:
                    raise ValueError("joined messages: sizes add up to more than 64 bits")
                joined_at += size
        return PyBytes_FromStringAndSize(buf.data, buf.size)
    finally:
        free(buf.data)
        free(scratch.data)


def join(paths, sizes) -> bytes:
    """The bytes of the files at ``paths`` one after another, each read whole (without the
    GIL); OSError for one that cannot be read, ValueError for one whose length is not its
    ``sizes`` entry."""
    cdef list encoded = [os.fsencode(path) for path in paths]
    cdef list wanted = [int(size) for size in sizes]
    cdef Py_ssize_t count = len(encoded), i, failed = -1, got = 0
    cdef unsigned long long total = 0, length = 0
    cdef int err = 0
    if len(wanted) != count:
        raise ValueError(f"{count} paths but {len(wanted)} sizes")
    for size in wanted:
        if size < 0:
            raise ValueError(f"a size below zero: {size}")
        total += <unsigned long long>size
    cdef const char **c_paths = <const char **>malloc(count * sizeof(char *) + 1)
    cdef unsigned long long *c_sizes = <unsigned long long *>malloc(count * sizeof(unsigned long long) + 1)
    cdef bytes joined
    cdef char *at
    try:
        if c_paths == NULL or c_sizes == NULL:
            raise MemoryError()
        for i in range(count):
            c_paths[i] = <const char *>(<bytes>encoded[i])
            c_sizes[i] = <unsigned long long>wanted[i]
        joined = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        at = PyBytes_AS_STRING(joined)
        with nogil:
            for i in range(count):
                err = _read_head(c_paths[i], at, <Py_ssize_t>c_sizes[i], &got, &length)
                if err or length != c_sizes[i] or <unsigned long long>got != c_sizes[i]:
                    failed = i
                    break
                at += c_sizes[i]
    finally:
        free(c_paths)
        free(c_sizes)
    if failed < 0:
        return joined
    path = os.fsdecode(encoded[failed])
    if err:
        raise OSError(err, os.strerror(err), path)
    read = length if length != <unsigned long long>wanted[failed] else got
    raise ValueError(f"{path}: {read} bytes, not the {wanted[failed]} its name says")


def quick_entries(list raw, set channels, set parts, object max_delay_ms, type entry, object slow):
    """The entries of a decoded manifest, the common ones checked in C (see the twin)."""
    cdef Py_ssize_t index, count = len(raw)
    cdef list entries = [None] * count
    cdef long long most_delay = max_delay_ms
    for index in range(count):
        item = raw[index]
        made = _quick_entry(item, channels, parts, most_delay, entry)
        entries[index] = slow(index, item, channels, parts) if made is None else made
    return entries


_tuple_new = tuple.__new__  # looked up once, not for each entry


cdef object _quick_entry(object item, set channels, set parts, long long max_delay_ms, type entry):
    """``item`` as an ``entry`` when the quick check takes it, else None."""
    if type(item) is not list or not 6 <= len(<list>item) <= 8:
        return None
    cdef list fields = <list>item
    cdef Py_ssize_t length = len(fields)
    msg_id, channel, priority, part, size, crc = fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]
    offset = fields[6] if length > 6 else -1  # a batch file's message: an offset, no delay
    delay_ms = fields[7] if length > 7 else 0
    if type(msg_id) is not str or type(channel) is not str or type(part) is not str:
        return None
    if channel not in channels or (part != msg_id and part not in parts):
        return None
    if len(<str>msg_id) != DROPR_ID_LEN:
        return None
    cdef Py_UCS4 c
    for c in <str>msg_id:
        if not is_lower_hex(c):
            return None
    if (type(priority) is not int or type(size) is not int or type(crc) is not int
            or type(offset) is not int or type(delay_ms) is not int):
        return None
    if not (_within(priority, 0, 9) and _within(size, 0, LLONG_MAX) and _within(crc, 0, 0xFFFFFFFF)
            and (_within(offset, 0, LLONG_MAX) or length == 6) and _within(delay_ms, 0, max_delay_ms)):
        return None
    if length == 8:
        return _tuple_new(entry, fields)
    return _tuple_new(entry, (msg_id, channel, priority, part, size, crc, offset, delay_ms))


cdef inline bint _within(object number, long long least, long long most) noexcept:
    """Whether the int ``number`` lies from ``least`` to ``most`` (one past a C integer does not)."""
    cdef int overflow = 0
    cdef long long value = PyLong_AsLongLongAndOverflow(number, &overflow)
    return not overflow and least <= value <= most
