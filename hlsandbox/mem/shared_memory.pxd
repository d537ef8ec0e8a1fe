cdef class SharedMemory:
    cdef unsigned char *base
    cdef readonly size_t size
    cdef int exports
    cdef bint closed
    cdef readonly bint writable
    cdef Py_ssize_t shape[1]
    cdef void _unmap(self) noexcept
    cdef void _check_range(self, size_t offset, size_t n) except *
    cdef void _check_write(self, size_t offset, size_t n) except *
