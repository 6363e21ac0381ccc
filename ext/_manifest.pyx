"""Batch manifests, compiled twin of ``dropr._manifest_py`` (the format is documented there).

The msgpack bytes are written directly from the names' characters into one growing C
buffer — the same bytes ``msgpack.packb(entries, use_bin_type=True)`` gives, without
building the entries as Python objects.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from _codec cimport (
    DROPR_ID_LEN, PARSE_NOT_SPOOL, PARSE_OK, PyUnicode_DATA, PyUnicode_KIND, PyUnicode_READ,
    SpoolParts, hex_digits_value, parse_spool, unescape_into,
)

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


def build(names, texts) -> bytes:
    """The msgpack manifest of the messages with these spool names (ValueError on a bad one)."""
    cdef Buffer buf, scratch
    cdef SpoolParts parts
    cdef unsigned long long size
    cdef char msg_id[DROPR_ID_LEN]
    cdef int result, kind, i
    cdef str name
    memset(&buf, 0, sizeof(buf))
    memset(&scratch, 0, sizeof(scratch))
    try:
        _put_array(&buf, len(names))
        for name in names:
            if name is None:
                raise TypeError("a spool name must be str, not None")
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
            _put_array(&buf, 6)
            _put_str(&buf, msg_id, DROPR_ID_LEN)
            _put_channel(&buf, &scratch, name, parts.channel_start, parts.channel_end, texts)
            _put_uint(&buf, parts.priority)
            _put_str(&buf, msg_id, DROPR_ID_LEN)
            _put_uint(&buf, size)
            _put_uint(&buf, parts.crc)
        return PyBytes_FromStringAndSize(buf.data, buf.size)
    finally:
        free(buf.data)
        free(scratch.data)
