# C-level API of dropr's file-name codec (the format is documented in dropr/_codec_py.py).
#
# Everything here but the id generator is stateless and inline: a module that cimports it
# compiles its own copy, so nothing is looked up at run time. The id generator keeps the
# per-process nonce and sequence, so it lives once, in dropr._codec, and other modules reach
# it through a capsule fetched once at import:
#
#     from _codec cimport CodecAPI, import_codec, format_spool_name, DROPR_ID_LEN, DROPR_NAME_MAX
#
#     cdef const CodecAPI *codec = import_codec()
#
#     cdef char msg_id[DROPR_ID_LEN + 1]
#     cdef char name[DROPR_NAME_MAX + 1]
#     codec.new_id(msg_id)          # without the GIL too; writes DROPR_ID_LEN chars and a NUL
#     codec.new_ids(ids, count)     # a batch's: count consecutive ids, DROPR_ID_LEN chars each
#     length = format_spool_name(name, priority, msg_id, peer, peer_len,
#                                channel, channel_len, size, crc, count, delay_ms)
#     if length < 0: ...            # priority not 0-9, a field that is not escaped, a bad count
#
# Fields passed in are already escaped (ASCII bytes, not NUL-terminated, given by length).
# A name written here is NUL-terminated and at most DROPR_NAME_MAX bytes, since each text
# field is checked to be 1 to DROPR_MAX_FIELD escaped bytes.

from cpython.pycapsule cimport PyCapsule_Import
from libc.string cimport memcmp, memcpy
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_KIND, PyUnicode_READ

cdef enum:
    DROPR_ID_LEN = 30
    DROPR_MAX_FIELD = 80
    DROPR_COMPACT_LEN = 33
    DROPR_NAME_MAX = 255
    DROPR_BUCKET_LEN = 9    # a spool name's queue bucket: its priority digit and 8 id digits
    DROPR_SEQUENCE_AT = 24  # where an id's 6 digits of sequence start
    DROPR_SEQUENCE_SPAN = 0x1000000
    DROPR_MAX_BATCH_COUNT = 0x100000
    DROPR_BATCH_HEADER = 12  # a batch file's magic and count, then its index entries:
    DROPR_BATCH_ENTRY = 42   # the id's digits, size (8 bytes) and CRC-32 (4), big-endian

ctypedef struct CodecAPI:
    # Writes a fresh message id (DROPR_ID_LEN lower-hex chars) and a NUL into out.
    void (*new_id)(char *out) noexcept nogil
    # Writes count (1 to DROPR_MAX_BATCH_COUNT) fresh consecutive ids, one put time and
    # ascending sequence numbers, DROPR_ID_LEN chars each with no NUL, into out.
    void (*new_ids)(char *out, Py_ssize_t count) noexcept nogil

cdef inline const CodecAPI *import_codec() except NULL:
    """The id generator of dropr._codec (imports the module)."""
    return <const CodecAPI *>PyCapsule_Import(b"dropr._codec._C_API", 0)


# Byte classes.

cdef inline bint is_safe(unsigned char c) noexcept nogil:
    """A byte that escaping keeps as it is: [A-Za-z0-9._-]."""
    return ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
            or c == b'.' or c == b'_' or c == b'-')

cdef inline bint is_lower_hex(unsigned int c) noexcept nogil:
    return (c >= 48 and c <= 57) or (c >= 97 and c <= 102)

cdef inline int hex_value(unsigned int c) noexcept nogil:
    """Value of a lower- or upper-case hex digit, -1 for anything else."""
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 97 and c <= 102:
        return c - 87
    if c >= 65 and c <= 70:
        return c - 55
    return -1


# Formatting.

cdef inline void put_hex(char *out, unsigned long long value, int width) noexcept nogil:
    """``value`` as exactly ``width`` lower-hex digits."""
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = b"0123456789abcdef"[value & 15]
        value >>= 4

cdef inline int put_hex_min(char *out, unsigned long long value) noexcept nogil:
    """``value`` in lower hex without leading zeros (``0`` for zero); returns the length."""
    cdef int width = 1
    cdef unsigned long long rest = value >> 4
    while rest:
        width += 1
        rest >>= 4
    put_hex(out, value, width)
    return width

cdef inline bint is_field(const char *field, Py_ssize_t length) noexcept nogil:
    """Whether bytes are an escaped field: 1-DROPR_MAX_FIELD bytes of [A-Za-z0-9._%-], or
    ``~`` and 32 lower-hex digits (a compact field)."""
    cdef Py_ssize_t i
    if length < 1 or length > DROPR_MAX_FIELD:
        return False
    if field[0] == b'~':
        if length != DROPR_COMPACT_LEN:
            return False
        for i in range(1, length):
            if not is_lower_hex(<unsigned char>field[i]):
                return False
        return True
    for i in range(length):
        if not (is_safe(<unsigned char>field[i]) or field[i] == b'%'):
            return False
    return True

cdef inline bint is_id(const char *msg_id) noexcept nogil:
    """Whether the DROPR_ID_LEN bytes at msg_id are lower hex (stops at a NUL)."""
    cdef int i
    for i in range(DROPR_ID_LEN):
        if not is_lower_hex(<unsigned char>msg_id[i]):
            return False
    return True

cdef inline Py_ssize_t _put_head(char *out, int priority, const char *msg_id) noexcept nogil:
    if priority < 0 or priority > 9 or not is_id(msg_id):
        return -1
    out[0] = <char>(48 + priority)
    memcpy(out + 1, msg_id, DROPR_ID_LEN)
    out[DROPR_ID_LEN + 1] = b'+'
    return DROPR_ID_LEN + 2

cdef inline Py_ssize_t _put_field(char *out, const char *field, Py_ssize_t length) noexcept nogil:
    memcpy(out, field, length)
    return length

cdef inline unsigned long long id_sequence(const char *msg_id) noexcept nogil:
    """The value of an id's 6 sequence digits (the id is known to be lower hex)."""
    cdef unsigned long long value = 0
    cdef int i
    for i in range(DROPR_SEQUENCE_AT, DROPR_ID_LEN):
        value = value * 16 + <unsigned long long>hex_value(<unsigned char>msg_id[i])
    return value

cdef inline bint batch_fits(const char *msg_id, unsigned long long count) noexcept nogil:
    """Whether a batch of ``count`` (at most DROPR_MAX_BATCH_COUNT) can start at ``msg_id``:
    its sequence numbers run without wrapping."""
    return count <= DROPR_MAX_BATCH_COUNT and id_sequence(msg_id) + count <= DROPR_SEQUENCE_SPAN

cdef inline Py_ssize_t format_spool_name(
        char *out, int priority, const char *msg_id,
        const char *peer, Py_ssize_t peer_len, const char *channel, Py_ssize_t channel_len,
        unsigned long long size, unsigned int crc, unsigned long long count,
        unsigned long long delay_ms) noexcept nogil:
    """Writes ``{P}{ID}+{PEER}+{CHANNEL}+{SIZE}+{CRC}[+{EXTRA}]`` and a NUL into out (room
    for DROPR_NAME_MAX + 1 bytes: 219 without EXTRA, which takes at most 28 more); returns
    its length, or -1 (nothing usable written) when an argument is out of the format."""
    cdef Py_ssize_t n = _put_head(out, priority, msg_id)
    if (n < 0 or not is_field(peer, peer_len) or not is_field(channel, channel_len)
            or count < 1 or (count > 1 and not batch_fits(msg_id, count))):
        return -1
    n += _put_field(out + n, peer, peer_len)
    out[n] = b'+'
    n += 1
    n += _put_field(out + n, channel, channel_len)
    out[n] = b'+'
    n += 1
    n += put_hex_min(out + n, size)
    out[n] = b'+'
    put_hex(out + n + 1, crc, 8)
    n += 9
    if count > 1:
        out[n] = b'+'
        out[n + 1] = b'n'
        n += 2 + put_hex_min(out + n + 2, count)
    if delay_ms:
        out[n] = b'.' if count > 1 else b'+'
        out[n + 1] = b'd'
        n += 2 + put_hex_min(out + n + 2, delay_ms)
    out[n] = 0
    return n

cdef inline Py_ssize_t format_store_name(
        char *out, int priority, const char *msg_id,
        const char *client, Py_ssize_t client_len) noexcept nogil:
    """Writes ``{P}{ID}+{CLIENT}`` and a NUL into out; returns its length or -1 as above."""
    cdef Py_ssize_t n = _put_head(out, priority, msg_id)
    if n < 0 or not is_field(client, client_len):
        return -1
    n += _put_field(out + n, client, client_len)
    out[n] = 0
    return n


# Parsing.

cdef inline bint is_message_head(const char *name) noexcept nogil:
    """Whether a NUL-terminated name starts as every message name does: a priority digit,
    the id and ``+``."""
    return (name[0] >= b'0' and name[0] <= b'9' and is_id(name + 1)
            and name[DROPR_ID_LEN + 1] == b'+')

cdef inline bint is_bucket_name(const char *name) noexcept nogil:
    """Whether a NUL-terminated name is a queue bucket's: a priority digit and 8 lower-hex
    digits (the id's first 8: its time in units of 2**32 ns)."""
    cdef int i
    if name[0] < b'0' or name[0] > b'9':
        return False
    for i in range(1, DROPR_BUCKET_LEN):
        if not is_lower_hex(<unsigned char>name[i]):
            return False
    return name[DROPR_BUCKET_LEN] == 0

cdef inline int _upper_hex(char c) noexcept nogil:
    if c >= b'0' and c <= b'9':
        return c - 48
    if c >= b'A' and c <= b'F':
        return c - 55
    return -1

cdef inline Py_ssize_t unescape_into(const char *field, Py_ssize_t length, char *out) noexcept nogil:
    """Decodes each ``%XX`` (upper-case hex) of ASCII bytes into out (room for length bytes),
    copying anything else; returns the length written."""
    cdef Py_ssize_t i = 0, n = 0
    cdef int high, low
    while i < length:
        if field[i] == b'%' and i + 2 < length and _upper_hex(field[i + 1]) >= 0 \
                and _upper_hex(field[i + 2]) >= 0:
            out[n] = <char>(_upper_hex(field[i + 1]) * 16 + _upper_hex(field[i + 2]))
            i += 3
        else:
            out[n] = field[i]
            i += 1
        n += 1
    return n

ctypedef struct SpoolParts:
    int priority
    Py_ssize_t peer_start, peer_end
    Py_ssize_t channel_start, channel_end
    Py_ssize_t size_start, size_end
    unsigned int crc
    unsigned long long count     # 1 for a plain message
    unsigned long long delay_ms  # 0 when due at once

cdef enum:
    PARSE_OK = 0
    PARSE_NOT_SPOOL = 1
    PARSE_NOT_MESSAGE = 2
    PARSE_NOT_STORE = 3

cdef inline bint _is_head(int kind, void *data, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i
    cdef unsigned int first
    if end != DROPR_ID_LEN + 1:
        return False
    first = PyUnicode_READ(kind, data, 0)
    if first < 48 or first > 57:
        return False
    for i in range(1, end):
        if not is_lower_hex(PyUnicode_READ(kind, data, i)):
            return False
    return True

cdef inline bint _is_hex_run(int kind, void *data, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i
    if start >= end:
        return False
    for i in range(start, end):
        if not is_lower_hex(PyUnicode_READ(kind, data, i)):
            return False
    return True

cdef inline bint _parse_extra(int kind, void *data, Py_ssize_t start, Py_ssize_t end,
                              SpoolParts *parts) noexcept:
    """Reads EXTRA, ``n{count}`` and ``d{delay}`` in this order separated by ``.``, each
    once at most, as lower hex without a leading zero; False when it is not that."""
    cdef Py_ssize_t i = start, digits
    cdef unsigned int tag
    cdef int next_tag = 0   # 0: n or d may come, 1: d only, 2: nothing more
    cdef unsigned long long value
    while True:
        if i >= end:
            return False
        tag = PyUnicode_READ(kind, data, i)
        if tag == 110 and next_tag == 0:      # n
            digits, next_tag = 6, 1
        elif tag == 100 and next_tag <= 1:    # d
            digits, next_tag = 16, 2
        else:
            return False
        i += 1
        if i >= end or PyUnicode_READ(kind, data, i) == 48:
            return False
        value = 0
        while i < end and PyUnicode_READ(kind, data, i) != 46:
            if digits == 0 or not is_lower_hex(PyUnicode_READ(kind, data, i)):
                return False
            value = value * 16 + <unsigned int>hex_value(PyUnicode_READ(kind, data, i))
            digits -= 1
            i += 1
        if tag == 110:
            if value < 2 or value > DROPR_MAX_BATCH_COUNT:
                return False
            parts.count = value
        else:
            parts.delay_ms = value
        if i == end:
            return True
        i += 1  # the "."

cdef inline bint _sequence_holds(int kind, void *data, unsigned long long count) noexcept:
    """Whether the id of a name (at [1, 1 + DROPR_ID_LEN)) can start a batch of ``count``."""
    cdef unsigned long long value = 0
    cdef Py_ssize_t i
    for i in range(1 + DROPR_SEQUENCE_AT, 1 + DROPR_ID_LEN):
        value = value * 16 + <unsigned int>hex_value(PyUnicode_READ(kind, data, i))
    return value + count <= DROPR_SEQUENCE_SPAN

cdef inline int parse_spool(str name, SpoolParts *parts) noexcept:
    """Splits a spool name (any str) into zeroed ``parts``: PARSE_OK, or which error applies, in the
    order the reference checks them. The id is always at [1, 1 + DROPR_ID_LEN)."""
    cdef int kind = PyUnicode_KIND(name)
    cdef void *data = PyUnicode_DATA(name)
    cdef Py_ssize_t length = len(name), i, crc_end
    cdef Py_ssize_t plus[5]
    cdef int found = 0
    cdef unsigned int crc = 0
    for i in range(length):
        if PyUnicode_READ(kind, data, i) == 43:
            if found == 5:
                return PARSE_NOT_SPOOL
            plus[found] = i
            found += 1
    if found < 4:
        return PARSE_NOT_SPOOL
    if not _is_head(kind, data, plus[0]):
        return PARSE_NOT_MESSAGE
    crc_end = plus[4] if found == 5 else length
    parts.peer_start, parts.peer_end = plus[0] + 1, plus[1]
    parts.channel_start, parts.channel_end = plus[1] + 1, plus[2]
    parts.size_start, parts.size_end = plus[2] + 1, plus[3]
    if (parts.peer_start == parts.peer_end or parts.channel_start == parts.channel_end
            or not _is_hex_run(kind, data, parts.size_start, parts.size_end)
            or crc_end - plus[3] - 1 != 8 or not _is_hex_run(kind, data, plus[3] + 1, crc_end)):
        return PARSE_NOT_SPOOL
    parts.count = 1
    parts.delay_ms = 0
    if found == 5 and not _parse_extra(kind, data, plus[4] + 1, length, parts):
        return PARSE_NOT_SPOOL
    if parts.count > 1 and not _sequence_holds(kind, data, parts.count):
        return PARSE_NOT_SPOOL
    for i in range(plus[3] + 1, crc_end):
        crc = crc * 16 + <unsigned int>hex_value(PyUnicode_READ(kind, data, i))
    parts.crc = crc
    parts.priority = <int>PyUnicode_READ(kind, data, 0) - 48
    return PARSE_OK

cdef inline int parse_store(str name, Py_ssize_t *client_start) noexcept:
    """Checks a store name (any str): PARSE_OK with the client field's start, or the error."""
    cdef int kind = PyUnicode_KIND(name)
    cdef void *data = PyUnicode_DATA(name)
    cdef Py_ssize_t length = len(name), i, sep = -1
    for i in range(length):
        if PyUnicode_READ(kind, data, i) == 43:
            if sep >= 0:
                return PARSE_NOT_STORE
            sep = i
    if sep < 0 or sep == length - 1:
        return PARSE_NOT_STORE
    if not _is_head(kind, data, sep):
        return PARSE_NOT_MESSAGE
    client_start[0] = sep + 1
    return PARSE_OK

cdef inline int hex_digits_value(str text, Py_ssize_t start, Py_ssize_t end,
                                 unsigned long long *value) noexcept:
    """Value of lower-hex digits text[start:end]; 0 if it needs more than 64 bits, else 1."""
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef unsigned long long v = 0
    cdef Py_ssize_t i
    for i in range(start, end):
        if v >> 60:
            return 0
        v = v * 16 + <unsigned int>hex_value(PyUnicode_READ(kind, data, i))
    value[0] = v
    return 1


# Batch files (the format is documented in dropr/_codec_py.py).

cdef inline void put_be(char *out, unsigned long long value, int width) noexcept nogil:
    """``value`` as ``width`` bytes, big-endian."""
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(value & 0xFF)
        value >>= 8

cdef inline unsigned long long get_be(const char *data, int width) noexcept nogil:
    cdef unsigned long long value = 0
    cdef int i
    for i in range(width):
        value = (value << 8) | <unsigned char>data[i]
    return value

cdef inline Py_ssize_t batch_index_bytes(Py_ssize_t count) noexcept nogil:
    """The bytes of a batch file's index for ``count`` messages: where its payloads start."""
    return DROPR_BATCH_HEADER + count * DROPR_BATCH_ENTRY

cdef inline void put_batch_header(char *out, Py_ssize_t count) noexcept nogil:
    memcpy(out, b"dropr-b1", 8)
    put_be(out + 8, <unsigned long long>count, 4)

cdef inline Py_ssize_t batch_header_count(const char *data) noexcept nogil:
    """The count of a batch file's header, -1 when the magic is not there."""
    if memcmp(data, b"dropr-b1", 8) != 0:
        return -1
    return <Py_ssize_t>get_be(data + 8, 4)

cdef inline void put_batch_entry(char *out, const char *msg_id, unsigned long long size,
                                 unsigned int crc) noexcept nogil:
    memcpy(out, msg_id, DROPR_ID_LEN)
    put_be(out + DROPR_ID_LEN, size, 8)
    put_be(out + DROPR_ID_LEN + 8, crc, 4)

cdef inline void next_batch_id(char *msg_id) noexcept nogil:
    """Turns a batch's id into the next one's: the sequence digits plus one (the caller
    knows they do not overflow)."""
    cdef int i = DROPR_ID_LEN - 1
    while msg_id[i] == b'f':
        msg_id[i] = b'0'
        i -= 1
    msg_id[i] = b'a' if msg_id[i] == b'9' else msg_id[i] + 1
