"""File-name codec, compiled twin of ``dropr._codec_py`` (the format is documented there).

Same API and same outputs. Like the reference, ``spool_name`` and ``store_name`` refuse
(ValueError) a priority outside 0-9, a malformed id, a field that is not escaped and a count
or delay out of range, so no name they return can fail to parse or exceed 255 bytes.
"""

import hashlib
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_New
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from _codec cimport (
    CodecAPI, DROPR_BATCH_ENTRY, DROPR_BATCH_HEADER, DROPR_BUCKET_LEN, DROPR_ID_LEN,
    DROPR_MAX_BATCH_COUNT, DROPR_MAX_FIELD, DROPR_NAME_MAX, DROPR_SEQUENCE_AT,
    DROPR_SEQUENCE_SPAN, PARSE_NOT_SPOOL, PARSE_NOT_STORE, PARSE_OK, SpoolParts,
    batch_fits, batch_header_count, batch_index_bytes, format_spool_name, format_store_name, get_be, hex_digits_value, is_id,
    is_lower_hex, is_safe, next_batch_id, parse_spool, parse_store, put_batch_entry,
    put_batch_header, put_hex, unescape_into,
)
from _sys cimport CLOCK_REALTIME, clock_gettime, timespec

cdef extern from * nogil:
    unsigned long long __atomic_fetch_add(unsigned long long *ptr, unsigned long long value,
                                          int order)
    void __atomic_store_n(unsigned long long *ptr, unsigned long long value, int order)
    enum:
        __ATOMIC_RELAXED

ID_LEN = DROPR_ID_LEN
BUCKET_LEN = DROPR_BUCKET_LEN
MAX_FIELD = DROPR_MAX_FIELD
SEPARATOR = "+"
COMPACT = "~"
BATCH_MAGIC = b"dropr-b1"
MAX_BATCH_COUNT = DROPR_MAX_BATCH_COUNT

cdef unsigned long long _nonce = 0
cdef unsigned long long _sequence = 0


def _new_nonce():
    global _nonce
    _nonce = int.from_bytes(os.urandom(4), "big")
    __atomic_store_n(&_sequence, 0, __ATOMIC_RELAXED)


_new_nonce()
os.register_at_fork(after_in_child=_new_nonce)


cdef void c_new_id(char *out) noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    put_hex(out, <unsigned long long>now.tv_sec * 1000000000ULL + <unsigned long long>now.tv_nsec,
            16)
    put_hex(out + 16, _nonce, 8)
    put_hex(out + 24, __atomic_fetch_add(&_sequence, 1, __ATOMIC_RELAXED) & 0xFFFFFF, 6)
    out[DROPR_ID_LEN] = 0


cdef void c_new_ids(char *out, Py_ssize_t count) noexcept nogil:
    cdef timespec now
    cdef unsigned long long first
    cdef Py_ssize_t i
    clock_gettime(CLOCK_REALTIME, &now)
    while True:  # a block never straddles the sequence's wrap, so its ids ascend
        first = __atomic_fetch_add(&_sequence, count, __ATOMIC_RELAXED) & (DROPR_SEQUENCE_SPAN - 1)
        if first + <unsigned long long>count <= DROPR_SEQUENCE_SPAN:
            break
    put_hex(out, <unsigned long long>now.tv_sec * 1000000000ULL + <unsigned long long>now.tv_nsec,
            16)
    put_hex(out + 16, _nonce, 8)
    put_hex(out + DROPR_SEQUENCE_AT, first, 6)
    for i in range(1, count):
        memcpy(out + i * DROPR_ID_LEN, out + (i - 1) * DROPR_ID_LEN, DROPR_ID_LEN)
        next_batch_id(out + i * DROPR_ID_LEN)


cdef CodecAPI _api
_api.new_id = c_new_id
_api.new_ids = c_new_ids
_C_API = PyCapsule_New(<void *>&_api, b"dropr._codec._C_API", NULL)


def new_id() -> str:
    """A fresh message id: time-ordered, unique per process without any lookup."""
    cdef char out[DROPR_ID_LEN + 1]
    c_new_id(out)
    return out[:DROPR_ID_LEN].decode("ascii")


cdef int _check_batch_count(count, Py_ssize_t least) except -1:
    if type(count) is not int or not least <= count <= DROPR_MAX_BATCH_COUNT:
        raise ValueError(f"a batch holds {least} to {DROPR_MAX_BATCH_COUNT} messages, not {count!r}")
    return 0


cdef list _id_list(const char *ids, Py_ssize_t count):
    return [ids[i * DROPR_ID_LEN:(i + 1) * DROPR_ID_LEN].decode("ascii") for i in range(count)]


def new_ids(count) -> list:
    """``count`` fresh consecutive ids (a batch's): one put time, ascending sequence numbers."""
    _check_batch_count(count, 1)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>count * DROPR_ID_LEN)
    c_new_ids(PyBytes_AS_STRING(out), count)
    return _id_list(out, count)


def batch_ids(str first_id not None, count) -> list:
    """The ids of the ``count`` messages of a batch file whose first id is ``first_id``."""
    _check_batch_count(count, 1)
    if not is_message_id(first_id) or not batch_fits(PyUnicode_AsUTF8AndSize(first_id, NULL), count):
        raise ValueError(f"not the first id of a batch of {count}: {first_id!r}")
    cdef Py_ssize_t n = count, i
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n * DROPR_ID_LEN)
    cdef char *ids = PyBytes_AS_STRING(out)
    memcpy(ids, PyUnicode_AsUTF8AndSize(first_id, NULL), DROPR_ID_LEN)
    for i in range(1, n):
        memcpy(ids + i * DROPR_ID_LEN, ids + (i - 1) * DROPR_ID_LEN, DROPR_ID_LEN)
        next_batch_id(ids + i * DROPR_ID_LEN)
    return _id_list(ids, n)


def batch_index(entries) -> bytes:
    """The index of a batch file holding messages ``(id, size, crc32)``, in this order."""
    cdef Py_ssize_t count = len(entries), i = 0
    _check_batch_count(count, 2)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, batch_index_bytes(count))
    cdef char *data = PyBytes_AS_STRING(out)
    cdef unsigned long long size
    cdef unsigned int crc
    cdef const char *raw_id
    put_batch_header(data, count)
    for msg_id, size_value, crc_value in entries:
        size, crc = size_value, crc_value
        raw_id = _id(msg_id)
        if not is_id(raw_id):
            raise ValueError(f"not a message id: {msg_id!r}")
        put_batch_entry(data + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY, raw_id, size, crc)
        i += 1
    return out


def batch_index_size(Py_ssize_t count) -> int:
    """The bytes of a batch file's index for ``count`` messages: where its payloads start."""
    return batch_index_bytes(count)


def parse_batch_index(const unsigned char[::1] data) -> list:
    """``(id, offset, size, crc32)`` of each message of a batch file that starts with
    ``data`` (its index at least); ValueError when that is no batch file's index."""
    cdef Py_ssize_t length = data.shape[0], count, i
    cdef const char *raw
    cdef const char *entry
    cdef unsigned long long offset, size
    if length < DROPR_BATCH_HEADER:
        raise ValueError("too short for a batch file")
    raw = <const char *>&data[0]
    count = batch_header_count(raw)
    if count < 0:
        raise ValueError("not a batch file (bad magic)")
    if not 2 <= count <= DROPR_MAX_BATCH_COUNT:
        raise ValueError(f"batch file of {count} messages")
    offset = batch_index_bytes(count)
    if length < <Py_ssize_t>offset:
        raise ValueError(f"batch file index cut short: {length} of {offset} bytes")
    entries = []
    for i in range(count):
        entry = raw + DROPR_BATCH_HEADER + i * DROPR_BATCH_ENTRY
        if not is_id(entry):
            raise ValueError(f"batch file index holds a bad id: {entry[:DROPR_ID_LEN]!r}")
        size = get_be(entry + DROPR_ID_LEN, 8)
        if size > 0xFFFFFFFFFFFFFFFFULL - offset:
            raise ValueError("batch file index: sizes add up to more than 64 bits")
        entries.append((entry[:DROPR_ID_LEN].decode("ascii"), offset, size,
                        get_be(entry + DROPR_ID_LEN + 8, 4)))
        offset += size
    return entries


def id_time_ns(msg_id: str) -> int:
    """Nanoseconds since the epoch at which the message with this id was put."""
    return int(msg_id[:16], 16)


def escape(str text not None) -> str:
    """The file-name-safe form of ``text`` (its compact form when too long)."""
    cdef Py_ssize_t length, i, n = 0
    cdef const unsigned char *raw = <const unsigned char *>PyUnicode_AsUTF8AndSize(text, &length)
    cdef char out[DROPR_MAX_FIELD]
    if length > DROPR_MAX_FIELD:
        return compact(text)
    for i in range(length):
        if is_safe(raw[i]):
            if n + 1 > DROPR_MAX_FIELD:
                return compact(text)
            out[n] = raw[i]
            n += 1
        else:
            if n + 3 > DROPR_MAX_FIELD:
                return compact(text)
            out[n] = b'%'
            out[n + 1] = b"0123456789ABCDEF"[raw[i] >> 4]
            out[n + 2] = b"0123456789ABCDEF"[raw[i] & 15]
            n += 3
    return out[:n].decode("ascii")


def compact(str text not None) -> str:
    """``~`` and the BLAKE2b-128 digest of ``text``: the form of a field too long to escape."""
    return COMPACT + hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def unescape(str field not None) -> str:
    """The text of an escaped field; a compact field is returned as it is."""
    if field.startswith(COMPACT) or "%" not in field:
        return field
    cdef bytes raw = field.encode("ascii")
    cdef Py_ssize_t length = len(raw)
    cdef char *out = <char *>malloc(length)
    if out == NULL:
        raise MemoryError()
    try:
        return PyUnicode_DecodeUTF8(out, unescape_into(raw, length, out), NULL)
    finally:
        free(out)


cdef const char *_ascii(str field, Py_ssize_t *length):
    """The bytes of an ASCII field, or NULL (no exception) for any other text."""
    if not field.isascii():
        return NULL
    return PyUnicode_AsUTF8AndSize(field, length)


cdef const char *_id(str msg_id) except? NULL:
    cdef Py_ssize_t length
    cdef const char *raw = _ascii(msg_id, &length)
    if raw == NULL or length != DROPR_ID_LEN:
        raise ValueError(f"not a message id: {msg_id!r}")
    return raw


def spool_name(int priority, str msg_id not None, str peer not None, str channel not None,
               unsigned long long size, unsigned int crc, count=1, delay_ms=0) -> str:
    """The spool file name of a message, or with ``count`` above 1 of a batch file, due
    ``delay_ms`` after its put time; ``peer`` and ``channel`` are already escaped."""
    cdef Py_ssize_t peer_len = 0, channel_len = 0, n = -1
    cdef const char *peer_raw = _ascii(peer, &peer_len)
    cdef const char *channel_raw = _ascii(channel, &channel_len)
    cdef char out[DROPR_NAME_MAX + 1]
    if (type(count) is int and 1 <= count <= DROPR_MAX_BATCH_COUNT and type(delay_ms) is int
            and 0 <= delay_ms < 1 << 64):
        n = format_spool_name(out, priority, _id(msg_id), peer_raw, peer_len, channel_raw,
                              channel_len, size, crc, count, delay_ms)
    if n < 0:
        raise ValueError(f"cannot name a message with priority {priority!r}, "
                         f"peer field {peer!r}, channel field {channel!r}, "
                         f"count {count!r}, delay {delay_ms!r} ms")
    return out[:n].decode("ascii")


def store_name(int priority, str msg_id not None, str client not None) -> str:
    """The store file name of a message; ``client`` is already escaped."""
    cdef Py_ssize_t client_len = 0, n
    cdef const char *client_raw = _ascii(client, &client_len)
    cdef char out[DROPR_NAME_MAX + 1]
    n = format_store_name(out, priority, _id(msg_id), client_raw, client_len)
    if n < 0:
        raise ValueError(f"cannot name a message with priority {priority!r}, "
                         f"client field {client!r}")
    return out[:n].decode("ascii")


def parse_spool_name(str name not None) -> tuple:
    """``(priority, id, peer, channel, size, crc, count, delay_ms)`` of a spool name (fields
    still escaped; ``count`` is 1 for a plain message, ``delay_ms`` 0 when due at once)."""
    cdef SpoolParts parts
    cdef unsigned long long size
    memset(&parts, 0, sizeof(parts))
    cdef int result = parse_spool(name, &parts)
    if result != PARSE_OK:
        raise _rejection(result, name)
    if hex_digits_value(name, parts.size_start, parts.size_end, &size):
        size_value = size
    else:
        size_value = int(name[parts.size_start:parts.size_end], 16)
    return (parts.priority, name[1:DROPR_ID_LEN + 1], name[parts.peer_start:parts.peer_end],
            name[parts.channel_start:parts.channel_end], size_value, parts.crc, parts.count,
            parts.delay_ms)


def parse_store_name(str name not None) -> tuple:
    """``(priority, id, client)`` of a store name (client still escaped)."""
    cdef Py_ssize_t client_start = 0
    cdef int result = parse_store(name, &client_start)
    if result != PARSE_OK:
        raise _rejection(result, name)
    return ord(name[0]) - 48, name[1:DROPR_ID_LEN + 1], name[client_start:]


def is_message_id(str text not None) -> bool:
    """Whether ``text`` has the form of a message id (30 lower-case hex digits)."""
    if len(text) != DROPR_ID_LEN:
        return False
    cdef Py_UCS4 c
    for c in text:
        if not is_lower_hex(c):
            return False
    return True


cdef object _rejection(int result, str name):
    if result == PARSE_NOT_SPOOL:
        return ValueError(f"not a spool message name: {name!r}")
    if result == PARSE_NOT_STORE:
        return ValueError(f"not a store message name: {name!r}")
    return ValueError(f"not a message name: {name!r}")
