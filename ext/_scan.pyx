"""Directory scanning, compiled twin of ``dropr._scan_py`` (the rules are documented there).

A directory is read with ``readdir`` without the GIL. The smallest ``limit`` names
seen so far are kept as C strings in a max-heap, so a name that is not selected — skipped,
not a message, or after the first ``limit`` — costs a byte comparison and no Python object,
and memory stays bounded by ``limit`` however deep the queue is. Counting a spool's queue
reads each batch file's count from its name, in C too. A tally of the queue per peer is kept
in a C hash table of the peer fields, so it too costs no Python object per name.
"""

import os

from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, strcmp, strcspn, strlen

from _codec cimport (DROPR_BUCKET_LEN, DROPR_ID_LEN, DROPR_MAX_BATCH_COUNT, DROPR_MAX_FIELD,
                     hex_value, is_bucket_name, is_id, is_lower_hex, is_message_head)
from _sys cimport (DIR, ENOENT, PyUnicode_DecodeFSDefaultAndSize, closedir, dirent, errno, opendir, raise_errno,
                  readdir)

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


cdef DIR *_open(object path, bint gone_ok) except? NULL:
    """``opendir(path)``; NULL without an error when ``gone_ok`` and it does not exist."""
    cdef bytes raw = os.fsencode(path)
    cdef const char *c_path = raw
    cdef DIR *directory
    with nogil:
        directory = opendir(c_path)
    if directory == NULL and not (gone_ok and errno == ENOENT):
        raise_errno(errno, path)
    return directory


cdef inline dirent *_next(DIR *directory, int *error) noexcept nogil:
    """The next entry, or NULL at the end (with ``error`` set when reading failed)."""
    global errno
    cdef dirent *entry
    errno = 0
    entry = readdir(directory)
    if entry == NULL:
        error[0] = errno
    return entry


cdef int _read_into(DIR *directory, Heap *heap, const Field *skip, Py_ssize_t skip_count,
                    const char *bucket) noexcept nogil:
    """Offers every message name of ``directory`` (only those starting with ``bucket`` when
    given) to the heap; returns 0, the errno of a failed read, or -1 when out of memory."""
    cdef dirent *entry
    cdef int error = 0
    while True:
        entry = _next(directory, &error)
        if entry == NULL:
            return error
        if not is_message_head(entry.d_name):
            continue
        if bucket != NULL and memcmp(entry.d_name, bucket, DROPR_BUCKET_LEN) != 0:
            continue
        if skip_count and _skipped(entry.d_name, skip, skip_count):
            continue
        if not _offer(heap, entry.d_name):
            return -1


cdef class _Selection:
    """The smallest names offered so far, and the peers to leave out, held in C."""
    cdef Heap heap
    cdef Field *skip
    cdef Py_ssize_t skip_count
    cdef list skip_raw

    def __cinit__(self, Py_ssize_t limit, skip):
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.heap.limit = limit
        self.skip_raw = [os.fsencode(field) for field in skip]
        self.skip_count = len(self.skip_raw)
        self.skip = <Field *>malloc(max(1, self.skip_count) * sizeof(Field))
        if self.skip == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.skip_count):
            self.skip[i].data = <bytes>self.skip_raw[i]
            self.skip[i].length = len(<bytes>self.skip_raw[i])

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.heap.size):
            free(self.heap.names[i])
        free(self.heap.names)
        free(self.skip)

    cdef int read(self, path, const char *bucket) except -1:
        """Offers the names of directory ``path``; a bucket (``bucket`` given) that is gone
        offers none."""
        cdef DIR *directory = _open(path, bucket != NULL)
        cdef int error = 0
        if directory == NULL:
            return 0
        with nogil:
            if self.heap.size < self.heap.limit:
                error = _read_into(directory, &self.heap, self.skip, self.skip_count, bucket)
            closedir(directory)
        if error < 0:
            raise MemoryError()
        if error:
            return raise_errno(error, path)
        return 0

    cdef list names(self):
        cdef Py_ssize_t i
        with nogil:
            qsort(self.heap.names, self.heap.size, sizeof(char *), _compare)
        return [PyUnicode_DecodeFSDefaultAndSize(self.heap.names[i], strlen(self.heap.names[i]))
                for i in range(self.heap.size)]


def scan(path, Py_ssize_t limit, skip=()) -> list:
    """The first ``limit`` message names of directory ``path`` in delivery order, leaving out
    names whose field after the first ``+`` (a spool name's peer) is in ``skip``."""
    cdef _Selection selection = _Selection(limit, skip)
    selection.read(path, NULL)
    return selection.names()


def scan_queue(path, Py_ssize_t limit, skip=(), listed=None) -> list:
    """As :func:`scan` for a spool's bucketed ``queue/``: buckets are read in order until
    ``limit`` names are found, so a deep queue costs what its first buckets hold."""
    cdef _Selection selection = _Selection(limit, skip)
    cdef bytes raw
    for bucket in buckets(path) if listed is None else listed:
        if selection.heap.size >= limit:
            break
        raw = bucket.encode("ascii")
        selection.read(os.path.join(path, bucket), raw)
    return selection.names()


def buckets(path) -> list:
    """The bucket names of a spool's ``queue/`` directory ``path``, in order."""
    cdef DIR *directory = _open(path, False)
    cdef dirent *entry
    cdef int error = 0
    found = []
    try:
        while True:
            entry = _next(directory, &error)
            if entry == NULL:
                break
            if is_bucket_name(entry.d_name):
                found.append(entry.d_name[:DROPR_BUCKET_LEN].decode("ascii"))
    finally:
        closedir(directory)
    if error:
        raise_errno(error, path)
    found.sort()
    return found


cdef Py_ssize_t _messages(const char *name) noexcept nogil:
    """How many messages a queued file holds: a batch file's count (its name's ``n``), else 1."""
    cdef Py_ssize_t i = DROPR_ID_LEN + 2, count = 0, digits = 0
    cdef int plus = 1
    if not is_message_head(name):
        return 1
    while name[i] and plus < 5:
        plus += name[i] == b'+'
        i += 1
    if plus < 5 or name[i] != b'n' or name[i + 1] == b'0':
        return 1
    i += 1
    while is_lower_hex(<unsigned char>name[i]) and digits < 7:
        count = count * 16 + hex_value(<unsigned char>name[i])
        digits += 1
        i += 1
    if digits == 0 or digits > 6 or (name[i] != 0 and name[i] != b'.'):
        return 1
    return count if 2 <= count <= DROPR_MAX_BATCH_COUNT else 1


cdef Py_ssize_t _count(path, bint gone_ok, bint messages) except -1:
    cdef DIR *directory = _open(path, gone_ok)
    cdef dirent *entry
    cdef Py_ssize_t total = 0
    cdef int error = 0
    if directory == NULL:
        return 0
    with nogil:
        while True:
            entry = _next(directory, &error)
            if entry == NULL:
                break
            if entry.d_name[0] != b'.':
                total += _messages(entry.d_name) if messages else 1
        closedir(directory)
    if error:
        raise_errno(error, path)
    return total


def count(path) -> int:
    """The number of entries of directory ``path`` whose name does not start with ``.``."""
    return _count(path, False, False)


def count_queue(path) -> int:
    """The messages in the buckets of a spool's ``queue/`` directory ``path``: as :func:`count`
    does, but a batch file counts as the messages it holds."""
    return sum([_count(os.path.join(path, bucket), True, True) for bucket in buckets(path)])


def oldest(path) -> str:
    """The smallest (earliest) id among the message names of directory ``path``; "" if none."""
    cdef DIR *directory = _open(path, False)
    cdef dirent *entry
    cdef int error = 0
    cdef char found[DROPR_ID_LEN]
    cdef bint any = False
    with nogil:
        while True:
            entry = _next(directory, &error)
            if entry == NULL:
                break
            if is_message_head(entry.d_name) and (not any or memcmp(entry.d_name + 1, found, DROPR_ID_LEN) < 0):
                memcpy(found, entry.d_name + 1, DROPR_ID_LEN)
                any = True
        closedir(directory)
    if error:
        raise_errno(error, path)
    return found[:DROPR_ID_LEN].decode("ascii") if any else ""


# -- the tally of a queue per peer ------------------------------------------------------

ctypedef struct PeerTally:
    char field[DROPR_MAX_FIELD]
    size_t length               # 0: a free slot
    Py_ssize_t messages
    unsigned long long size
    char oldest[DROPR_ID_LEN]


cdef inline size_t _hash(const char *data, size_t length) noexcept nogil:
    """FNV-1a."""
    cdef size_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(length):
        h = (h ^ <unsigned char>data[i]) * 1099511628211ULL
    return h


cdef class _Tally:
    """Per peer field, the messages, bytes and oldest id offered so far: an open-addressing
    table that doubles at half full (a spool has a few peers, rarely thousands)."""
    cdef PeerTally *slots
    cdef size_t capacity
    cdef size_t used

    def __cinit__(self):
        self.capacity = 16
        self.slots = <PeerTally *>calloc(self.capacity, sizeof(PeerTally))
        if self.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.slots)

    cdef PeerTally *_slot(self, const char *field, size_t length) noexcept nogil:
        cdef size_t i = _hash(field, length) & (self.capacity - 1)
        while self.slots[i].length and not (self.slots[i].length == length
                                            and memcmp(self.slots[i].field, field, length) == 0):
            i = (i + 1) & (self.capacity - 1)
        return &self.slots[i]

    cdef bint _grow(self) noexcept nogil:
        cdef PeerTally *old = self.slots
        cdef size_t old_capacity = self.capacity, i
        cdef PeerTally *grown = <PeerTally *>calloc(2 * old_capacity, sizeof(PeerTally))
        if grown == NULL:
            return False
        self.slots, self.capacity = grown, 2 * old_capacity
        for i in range(old_capacity):
            if old[i].length:
                self._slot(old[i].field, old[i].length)[0] = old[i]
        free(old)
        return True

    cdef bint offer(self, const char *name) noexcept nogil:
        """Counts the message ``name`` (a message head already checked) for its peer; a name
        without the peer, channel and size fields is passed over. False when out of memory."""
        cdef const char *field = name + DROPR_ID_LEN + 2
        cdef size_t length = strcspn(field, b"+")
        cdef const char *rest = field + length
        cdef unsigned long long size = 0
        cdef int digit
        cdef PeerTally *tally
        if length == 0 or length > DROPR_MAX_FIELD or rest[0] != b'+':
            return True
        rest += 1
        rest += strcspn(rest, b"+")
        if rest[0] != b'+':
            return True
        rest += 1
        if not is_lower_hex(<unsigned char>rest[0]):
            return True
        while is_lower_hex(<unsigned char>rest[0]) and size >> 60 == 0:
            size = size * 16 + <unsigned int>hex_value(<unsigned char>rest[0])
            rest += 1
        if rest[0] != b'+':
            return True  # not a size, or one over 64 bits
        if 2 * (self.used + 1) > self.capacity and not self._grow():
            return False
        tally = self._slot(field, length)
        if tally.length == 0:
            memcpy(tally.field, field, length)
            tally.length = length
            memcpy(tally.oldest, name + 1, DROPR_ID_LEN)
            self.used += 1
        elif memcmp(name + 1, tally.oldest, DROPR_ID_LEN) < 0:
            memcpy(tally.oldest, name + 1, DROPR_ID_LEN)
        tally.messages += _messages(name)
        tally.size = tally.size + size if tally.size + size >= size else <unsigned long long>-1
        return True

    cdef int read(self, path, const char *bucket) except -1:
        """Offers the message names of bucket ``path`` (named ``bucket``); one gone offers none."""
        cdef DIR *directory = _open(path, True)
        cdef dirent *entry
        cdef int error = 0
        cdef bint ok = True
        if directory == NULL:
            return 0
        with nogil:
            while True:
                entry = _next(directory, &error)
                if entry == NULL:
                    break
                if is_message_head(entry.d_name) and memcmp(entry.d_name, bucket, DROPR_BUCKET_LEN) == 0:
                    ok = self.offer(entry.d_name)
                    if not ok:
                        break
            closedir(directory)
        if not ok:
            raise MemoryError()
        if error:
            return raise_errno(error, path)
        return 0

    cdef dict result(self):
        cdef size_t i
        found = {}
        for i in range(self.capacity):
            if self.slots[i].length:
                found[PyUnicode_DecodeFSDefaultAndSize(self.slots[i].field, self.slots[i].length)] = (
                    self.slots[i].messages, self.slots[i].size,
                    self.slots[i].oldest[:DROPR_ID_LEN].decode("ascii"))
        return found


def tally_queue(path) -> dict:
    """Per peer field of the messages in a spool's ``queue/`` directory ``path``: how many (a
    batch file as the messages it holds), their bytes (the sizes their names give) and the
    oldest id."""
    cdef _Tally tally = _Tally()
    cdef bytes raw
    for bucket in buckets(path):
        raw = bucket.encode("ascii")
        tally.read(os.path.join(path, bucket), raw)
    return tally.result()


def find(path, msg_id) -> list:
    """The message names of directory ``path`` whose id is ``msg_id``, in byte order (one
    per client that sent that id): a readdir pass that makes a Python object of a match only."""
    cdef bytes wanted = msg_id.encode("ascii") if isinstance(msg_id, str) else b""
    if len(wanted) != DROPR_ID_LEN or not is_id(wanted):
        raise ValueError(f"not a message id: {msg_id!r}")
    cdef const char *c_wanted = wanted
    cdef DIR *directory = _open(path, False)
    cdef dirent *entry
    cdef int error = 0
    found = []
    try:
        while True:
            with nogil:
                while True:
                    entry = _next(directory, &error)
                    if entry == NULL or (is_message_head(entry.d_name)
                                         and memcmp(entry.d_name + 1, c_wanted, DROPR_ID_LEN) == 0):
                        break
            if entry == NULL:
                break
            found.append(PyUnicode_DecodeFSDefaultAndSize(entry.d_name, strlen(entry.d_name)))
    finally:
        closedir(directory)
    if error:
        raise_errno(error, path)
    found.sort()
    return found
