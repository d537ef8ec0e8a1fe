cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef class Reader:
    cdef const uint8_t *p
    cdef size_t pos, end
    cdef str what

    cdef const uint8_t *take(self, size_t n) except NULL
    cdef uint8_t u8(self) except? 0xff
    cdef uint16_t u16(self) except? 0xffff
    cdef uint32_t u32(self) except? 0xffffffff
    cdef str text(self, size_t n, str field)
    cdef str name(self)
    cdef object value(self, int *tag_out)
    cdef void done(self) except *


cdef class Writer:
    cdef bytearray buf

    cdef int raw(self, const void *p, size_t n) except -1
    cdef void u8(self, uint8_t v)
    cdef void text(self, bytes b, int len_bytes) except *
    cdef void value(self, int tag, object v, object where) except *


@cython.final
cdef class RecordStack:
    cdef uint8_t *base
    cdef readonly uint64_t size
    cdef readonly str name
    cdef object owner  # keeps the guest memory mapping alive

    cpdef void clear(self)
    cdef uint64_t checked_top(self) except? 0xffffffffffffffff
    cdef Reader pop(self, int expect_kind, str what)
    cdef int push(self, int kind, bytearray payload) except -1
    cpdef int push_call(self, bytes name, tuple tags, tuple args) except -1
    cpdef object pop_result(self, int expected_tag)
    cdef int raise_error_record(self) except -1
