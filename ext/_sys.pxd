# System calls used by dropr's compiled hot path, declared once (all callable without the GIL),
# the file-system encoding of names, and the steps its modules share: an errno raised as
# OSError, a name made bytes, every byte of buffers written.

cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t
    ctypedef unsigned int mode_t
    ctypedef unsigned long ino_t
    ctypedef unsigned long nlink_t
    ctypedef long off_t

cdef extern from "<time.h>" nogil:
    ctypedef long time_t

    struct timespec:
        time_t tv_sec
        long tv_nsec

    enum:
        CLOCK_REALTIME

    int clock_gettime(int clk_id, timespec *tp)

cdef extern from "<errno.h>" nogil:
    # A function that assigns errno must say `global errno`, or Cython makes it a local.
    int errno
    enum:
        EINTR
        EEXIST
        EINVAL
        EIO
        ENOENT
        ENOSYS
        ENOMEM
        ENOSPC

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass

    struct dirent:
        ino_t d_ino
        unsigned char d_type
        char d_name[256]

    DIR *opendir(const char *name)
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dirp)
    int closedir(DIR *dirp)
    int dirfd(DIR *dirp)

cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_WRONLY
        O_RDWR
        O_CREAT
        O_EXCL
        O_TRUNC
        O_APPEND
        O_CLOEXEC
        O_DIRECTORY
        O_NOFOLLOW
        AT_FDCWD
        AT_SYMLINK_NOFOLLOW

    int open(const char *pathname, int flags, ...)
    int openat(int dirfd, const char *pathname, int flags, ...)

cdef extern from "<sys/stat.h>" nogil:
    struct stat:
        mode_t st_mode
        off_t st_size
        timespec st_mtim
        ino_t st_ino
        nlink_t st_nlink

    bint S_ISREG(mode_t mode)
    int mkdirat(int dirfd, const char *pathname, mode_t mode)
    int fstat(int fd, stat *buf)
    int fstatat(int dirfd, const char *pathname, stat *buf, int flags)
    int utimensat(int dirfd, const char *pathname, const timespec *times, int flags)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)
    int close(int fd)
    int fsync(int fd)
    int fdatasync(int fd)
    int ftruncate(int fd, off_t length)
    int unlinkat(int dirfd, const char *pathname, int flags)
    int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
    int faccessat(int dirfd, const char *pathname, int mode, int flags)
    enum:
        F_OK
    int getpid()

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<limits.h>" nogil:
    enum:
        IOV_MAX

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
    # Linux 3.15+, glibc 2.28+ (_GNU_SOURCE, which Python.h defines)
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)
    enum:
        RENAME_NOREPLACE

cdef extern from "Python.h":
    str PyUnicode_DecodeFSDefaultAndSize(const char *name, Py_ssize_t size)
    bytes PyUnicode_EncodeFSDefault(object text)

from cpython.exc cimport PyErr_SetFromErrnoWithFilenameObject


cdef inline bytes fs_bytes(object name):
    """``os.fsencode(name)``, without its Python call for a ``str`` (a name of a batch)."""
    if type(name) is str:
        return PyUnicode_EncodeFSDefault(name)
    from os import fsencode
    return fsencode(name)


cdef inline int raise_errno(int error, object path) except -1:
    """Raises the OSError of a system call that failed with ``error`` on ``path``."""
    global errno
    errno = error
    PyErr_SetFromErrnoWithFilenameObject(OSError, path)
    return -1


cdef inline int write_all(int fd, iovec *iov, Py_ssize_t count) noexcept nogil:
    """Writes the ``count`` buffers of ``iov`` (consumed on the way); 0 or the errno."""
    cdef ssize_t n
    while True:
        while count and iov[0].iov_len == 0:
            iov += 1
            count -= 1
        if not count:
            return 0
        # One buffer (a plain message) by write: what the floor of bench/put.py does.
        n = write(fd, iov[0].iov_base, iov[0].iov_len) if count == 1 else writev(
            fd, iov, <int>min(count, <Py_ssize_t>IOV_MAX))
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        if n == 0:
            return ENOSPC
        while count and <size_t>n >= iov[0].iov_len:
            n -= iov[0].iov_len
            iov += 1
            count -= 1
        if n:
            iov[0].iov_base = <char *>iov[0].iov_base + n
            iov[0].iov_len -= <size_t>n
