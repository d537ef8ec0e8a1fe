# cython: language_level=3, boundscheck=False, wraparound=False
"""Guest memory: one anonymous, lazily backed mapping shared with KVM.

Reads and writes from Python are bounds-checked; Cython code takes `base`
directly and checks ranges itself."""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport (mmap, munmap, madvise, mincore, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_SHARED,
                         MAP_ANONYMOUS, MAP_FAILED)
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize

cdef extern from "sys/mman.h":
    int MAP_NORESERVE
    int MADV_DONTFORK

cdef extern from "errno.h":
    int errno

cdef enum:
    MADV_POPULATE_WRITE_ = 23  # Linux 5.14; older kernels answer EINVAL and we touch pages instead


cdef class SharedMemory:
    """`size` bytes of zeroed guest memory (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)."""

    def __cinit__(self, size_t size, int fd=-1, size_t offset=0, bint writable=True, bint shared=False):
        if size == 0 or size % 4096:
            raise ValueError("guest memory size must be a positive multiple of 4096")
        if offset % 4096:
            raise ValueError("a mapping's file offset must be a multiple of 4096")
        cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
        cdef int flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_NORESERVE
        cdef void *p
        if fd < 0:
            p = mmap(NULL, size, prot, flags | MAP_ANONYMOUS, -1, 0)
        else:
            p = mmap(NULL, size, prot, flags, fd, offset)
        if p == MAP_FAILED:
            import os
            raise MemoryError(f"mmap of {size} bytes of guest memory failed: {os.strerror(errno)}")
        madvise(p, size, MADV_DONTFORK)  # a fork() of the host must not copy or share guest memory
        self.base = <unsigned char *>p
        self.size = size
        self.shape[0] = <Py_ssize_t>size
        self.writable = writable

    @classmethod
    def from_fd(cls, int fd, size_t size, size_t offset=0, bint writable=True, bint shared=False):
        """Maps a file: privately (copy-on-write, the file is never modified) unless shared."""
        return cls(size, fd, offset, writable, shared)

    def resident_pages(self) -> bytearray:
        """One byte a page, 1 where the page may hold data (mincore: backed by memory),
        else 0; untouched pages of an anonymous map read as zero."""
        self._check_open()
        cdef size_t n = self.size // 4096, i
        out = bytearray(n)
        cdef unsigned char[::1] v = out
        if mincore(self.base, self.size, &v[0]) != 0:
            import os
            raise OSError(errno, f"mincore: {os.strerror(errno)}")
        for i in range(n):
            v[i] &= 1
        return out

    def resident_runs(self) -> list:
        """[start, end) page index runs of the resident pages (see resident_pages())."""
        return page_runs(self.resident_pages())

    def copy_from(self, size_t src_address, size_t offset, size_t n) -> None:
        """Copies n bytes from host address src_address (another mapping) to offset."""
        self._check_write(offset, n)
        memcpy(self.base + offset, <const void *>src_address, n)

    @property
    def address(self) -> int:
        """Host virtual address of guest physical address 0."""
        self._check_open()
        return <size_t>self.base

    cdef void _unmap(self) noexcept:
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    def close(self) -> None:
        """Unmaps now, or when the last exported buffer is released."""
        self.closed = True
        if self.exports == 0:
            self._unmap()

    def __dealloc__(self):
        self._unmap()

    cdef void _check_range(self, size_t offset, size_t n) except *:
        self._check_open()
        if offset > self.size or n > self.size - offset:
            raise IndexError(f"guest memory access [{offset:#x}, +{n:#x}) outside [0, {self.size:#x})")

    cdef void _check_write(self, size_t offset, size_t n) except *:
        self._check_range(offset, n)
        if not self.writable:
            raise ValueError("this mapping is read-only")

    def _check_open(self):
        if self.base == NULL or self.closed:
            raise ValueError("guest memory is closed")

    def prefault(self, size_t offset, size_t n) -> None:
        """Backs [offset, offset+n) with host pages now, so the guest's first touch is cheap."""
        self._check_write(offset, n)
        cdef size_t start = offset & ~<size_t>4095, i
        if madvise(self.base + start, offset + n - start, MADV_POPULATE_WRITE_) != 0:
            i = start
            while i < offset + n:
                (<volatile uint8_t *>(self.base + i))[0] = (<volatile uint8_t *>(self.base + i))[0]
                i += 4096

    def read(self, size_t offset, size_t n) -> bytes:
        self._check_range(offset, n)
        return PyBytes_FromStringAndSize(<char *>self.base + offset, n)

    def write(self, size_t offset, const uint8_t[::1] data) -> None:
        cdef size_t n = data.shape[0]
        self._check_write(offset, n)
        if n:
            memcpy(self.base + offset, &data[0], n)

    def fill(self, size_t offset, size_t n, int value=0) -> None:
        if not 0 <= value <= 255:
            raise ValueError(f"fill value {value} is not a byte")
        self._check_write(offset, n)
        memset(self.base + offset, value, n)

    def read_u64(self, size_t offset) -> int:
        self._check_range(offset, 8)
        return (<uint64_t *>(self.base + offset))[0]

    def write_u64(self, size_t offset, uint64_t value) -> None:
        self._check_write(offset, 8)
        (<uint64_t *>(self.base + offset))[0] = value

    def __getbuffer__(self, Py_buffer *buf, int flags):
        self._check_open()
        buf.buf = self.base
        buf.obj = self
        buf.len = self.size
        if (flags & PyBUF_WRITABLE) and not self.writable:
            raise BufferError("this mapping is read-only")
        buf.readonly = not self.writable
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = self.shape
        buf.strides = NULL
        buf.suboffsets = NULL
        buf.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.exports -= 1
        if self.closed and self.exports == 0:
            self._unmap()


def page_runs(const unsigned char[::1] mask) -> list:
    """[start, end) index runs where mask (one byte an entry) is nonzero."""
    cdef Py_ssize_t i = 0, start, n = mask.shape[0]
    out = []
    while i < n:
        if not mask[i]:
            i += 1
            continue
        start = i
        while i < n and mask[i]:
            i += 1
        out.append((start, i))
    return out


def nonzero_pages(const unsigned char[::1] data) -> list:
    """Indices of the 4 KiB pages of data (a whole number of pages) that are not all zero."""
    cdef Py_ssize_t n = data.shape[0] // 4096, p, j
    cdef const uint64_t *w
    if data.shape[0] % 4096:
        raise ValueError("data is not a whole number of pages")
    out = []
    for p in range(n):
        w = <const uint64_t *>&data[p * 4096]
        for j in range(512):
            if w[j]:
                out.append(p)
                break
    return out
