# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The record format of docs/abi.md: calls and results in the input/output buffers.

Both buffers are stacks of records in guest memory. The guest is untrusted:
every offset, length and tag read back is checked against the buffer bounds,
and a violation raises GuestError naming what is wrong."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.buffer cimport (PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE,
                             PyBUF_WRITABLE)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

from libc.float cimport FLT_MAX
from libc.math cimport fabs, isfinite
import numbers
import operator

from ..errors import (ArgumentTooLarge, GuestError, GuestProtocolError, GuestFunctionNotFound,
                      GuestFunctionParameterTypeMismatch, HostFunctionError, HostFunctionNotFound)

from ..abi cimport (HL_RECORD_HEADER as HEADER, HL_REC_CALL as KIND_CALL, HL_REC_RETURN as KIND_RETURN,
                   HL_REC_ERROR as KIND_ERROR, HL_REC_LOG as KIND_LOG, HL_REC_PRINT as KIND_PRINT,
                   HL_REC_FUNCTION_TABLE as KIND_FUNCTION_TABLE, HL_REC_RAW_CALL as KIND_RAW_CALL,
                   HL_REC_RAW_RESULT as KIND_RAW_RESULT, HL_TAG_VOID as T_VOID, HL_TAG_I32 as T_I32,
                   HL_TAG_U32 as T_U32, HL_TAG_I64 as T_I64, HL_TAG_U64 as T_U64, HL_TAG_F32 as T_F32,
                   HL_TAG_F64 as T_F64, HL_TAG_BOOL as T_BOOL, HL_TAG_STR as T_STR, HL_TAG_BYTES as T_BYTES,
                   HL_ERR_FUNCTION_NOT_FOUND, HL_ERR_PARAMETER_MISMATCH, HL_ERR_HOST_FUNCTION,
                   HL_ERR_HOST_FUNCTION_NOT_FOUND)

RECORD_KINDS = {"call": KIND_CALL, "return": KIND_RETURN, "error": KIND_ERROR, "log": KIND_LOG,
                "print": KIND_PRINT, "function_table": KIND_FUNCTION_TABLE, "raw_call": KIND_RAW_CALL,
                "raw_result": KIND_RAW_RESULT}
_KIND_NAMES = {v: k for k, v in RECORD_KINDS.items()}
_TYPE_NAMES = ("void", "i32", "u32", "i64", "u64", "f32", "f64", "bool", "str", "bytes")
ERROR_TYPES = {HL_ERR_FUNCTION_NOT_FOUND: GuestFunctionNotFound,
               HL_ERR_PARAMETER_MISMATCH: GuestFunctionParameterTypeMismatch,
               HL_ERR_HOST_FUNCTION: HostFunctionError, HL_ERR_HOST_FUNCTION_NOT_FOUND: HostFunctionNotFound}


cdef inline uint64_t align8(uint64_t n) nogil:
    return (n + 7) & ~<uint64_t>7


def type_name(int tag) -> str:
    return _TYPE_NAMES[tag] if 0 <= tag < 10 else f"<tag {tag}>"


cdef class Reader:
    """A bounds-checked cursor over a record payload in guest memory."""

    cdef const uint8_t *take(self, size_t n) except NULL:
        if n > self.end - self.pos:
            raise GuestProtocolError(f"{self.what}: truncated record (needs {n} bytes at payload offset "
                             f"{self.pos}, payload has {self.end})")
        cdef const uint8_t *at = self.p + self.pos
        self.pos += n
        return at

    cdef uint8_t u8(self) except? 0xff:
        return self.take(1)[0]

    cdef uint16_t u16(self) except? 0xffff:
        cdef uint16_t v
        memcpy(&v, self.take(2), 2)
        return v

    cdef uint32_t u32(self) except? 0xffffffff:
        cdef uint32_t v
        memcpy(&v, self.take(4), 4)
        return v

    cdef str text(self, size_t n, str field):
        cdef const uint8_t *s = self.take(n + 1)
        if s[n] != 0:
            raise GuestProtocolError(f"{self.what}: {field} is not NUL-terminated")
        try:
            return PyUnicode_DecodeUTF8(<const char *>s, n, "strict")
        except UnicodeDecodeError as e:
            raise GuestProtocolError(
                f"{self.what}: {field} is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    cdef str name(self):
        return self.text(self.u16(), "name")

    cdef object value(self, int *tag_out):
        cdef uint8_t tag = self.u8()
        cdef int32_t i32
        cdef uint32_t u32
        cdef int64_t i64
        cdef uint64_t u64
        cdef float f32
        cdef double f64
        cdef uint32_t n
        tag_out[0] = tag
        if tag == T_VOID:
            return None
        elif tag == T_I32:
            memcpy(&i32, self.take(4), 4); return i32
        elif tag == T_U32:
            memcpy(&u32, self.take(4), 4); return u32
        elif tag == T_I64:
            memcpy(&i64, self.take(8), 8); return i64
        elif tag == T_U64:
            memcpy(&u64, self.take(8), 8); return u64
        elif tag == T_F32:
            memcpy(&f32, self.take(4), 4); return f32
        elif tag == T_F64:
            memcpy(&f64, self.take(8), 8); return f64
        elif tag == T_BOOL:
            u32 = self.u8()
            if u32 > 1:
                raise GuestProtocolError(f"{self.what}: bool value {u32} is neither 0 nor 1")
            return u32 == 1
        elif tag == T_STR:
            n = self.u32()
            return self.text(n, "string value")
        elif tag == T_BYTES:
            n = self.u32()
            return PyBytes_FromStringAndSize(<const char *>self.take(n), n)
        raise GuestProtocolError(f"{self.what}: unknown value type tag {tag}")

    cdef void done(self) except *:
        if self.pos != self.end:
            raise GuestProtocolError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes in record")


cdef class Writer:
    """Builds a payload in a bytearray-like scratch area before it is copied to guest memory."""

    def __cinit__(self):
        self.buf = bytearray()

    cdef int raw(self, const void *p, size_t n) except -1:
        # Grown in place (bytearray over-allocates): one copy, no temporary bytes object.
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self.buf)
        PyByteArray_Resize(self.buf, old + <Py_ssize_t>n)
        if n:
            memcpy(PyByteArray_AS_STRING(self.buf) + old, p, n)
        return 0

    cdef void u8(self, uint8_t v):
        self.buf.append(v)

    cdef void text(self, bytes b, int len_bytes) except *:
        cdef uint32_t n = <uint32_t>PyBytes_GET_SIZE(b)
        cdef uint16_t n16
        if len_bytes == 2:
            if PyBytes_GET_SIZE(b) > 0xffff:
                raise ValueError("name longer than 65535 bytes")
            n16 = <uint16_t>n
            self.raw(&n16, 2)
        else:
            if PyBytes_GET_SIZE(b) > 0xffffffff:
                raise ValueError("string longer than 4 GiB")
            self.raw(&n, 4)
        self.buf += b
        self.buf.append(0)

    cdef void value(self, int tag, object v, object where) except *:
        """Encodes v as `tag`; raises GuestFunctionParameterTypeMismatch(where) if it does not fit."""
        cdef int32_t i32
        cdef uint32_t u32
        cdef int64_t i64
        cdef uint64_t u64
        cdef float f32
        cdef double f64
        cdef uint32_t n
        cdef bytes b
        cdef Py_buffer view
        self.u8(tag)
        if tag == T_VOID:
            if v is not None:
                _mismatch(where, tag, v)
        elif tag == T_I32 or tag == T_U32 or tag == T_I64 or tag == T_U64:
            if type(v) is not int:
                v = _as_int(v, where, tag)
            try:
                if tag == T_I32:
                    i32 = v; self.raw(&i32, 4)
                elif tag == T_U32:
                    u32 = v; self.raw(&u32, 4)
                elif tag == T_I64:
                    i64 = v; self.raw(&i64, 8)
                else:
                    u64 = v; self.raw(&u64, 8)
            except OverflowError:
                raise GuestFunctionParameterTypeMismatch(
                    f"{where}: {v} is out of range for {type_name(tag)}") from None
        elif tag == T_F32 or tag == T_F64:
            if type(v) is not float:
                v = _as_float(v, where, tag)
            try:
                if tag == T_F32:
                    f64 = v
                    if isfinite(f64) and fabs(f64) > FLT_MAX:  # C would make it inf
                        raise OverflowError()
                    f32 = <float>f64; self.raw(&f32, 4)
                else:
                    f64 = v; self.raw(&f64, 8)
            except OverflowError:
                raise GuestFunctionParameterTypeMismatch(
                    f"{where}: {v} is out of range for {type_name(tag)}") from None
        elif tag == T_BOOL:
            if not isinstance(v, bool):
                _mismatch(where, tag, v)
            self.u8(1 if v else 0)
        elif tag == T_STR:
            if not isinstance(v, str):
                _mismatch(where, tag, v)
            try:
                b = (<str>v).encode("utf-8")
            except UnicodeEncodeError as e:
                raise GuestFunctionParameterTypeMismatch(
                    f"{where}: string is not encodable as UTF-8 ({e.reason})") from None
            self.text(b, 4)
        elif tag == T_BYTES:
            # Any object with the buffer protocol (bytes, bytearray, memoryview, numpy
            # arrays, array.array...): its bytes are copied straight from its memory; only
            # a non-contiguous buffer is first made contiguous.
            if isinstance(v, str) or not PyObject_CheckBuffer(v):
                _mismatch(where, tag, v)
            try:
                PyObject_GetBuffer(v, &view, PyBUF_SIMPLE)
            except (BufferError, ValueError):  # not contiguous (numpy raises ValueError)
                v = memoryview(v).tobytes()
                PyObject_GetBuffer(v, &view, PyBUF_SIMPLE)
            try:
                if <size_t>view.len > 0xffffffffU:
                    raise ArgumentTooLarge(f"{where}: {view.len} bytes is more than a bytes value can hold")
                n = <uint32_t>view.len
                self.raw(&n, 4)
                self.raw(view.buf, n)
            finally:
                PyBuffer_Release(&view)
        else:
            raise ValueError(f"unknown type tag {tag}")


cdef object _as_int(object v, object where, int tag):
    """An int, or an integer scalar such as numpy's (by __index__); not a bool."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return operator.index(v)
    _mismatch(where, tag, v)


cdef object _as_float(object v, object where, int tag):
    """A float from a float, an int or a real scalar such as numpy's; not a bool."""
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        return v
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    _mismatch(where, tag, v)


cdef void _mismatch(object where, int tag, object v) except *:
    raise GuestFunctionParameterTypeMismatch(
        f"{where}: expected {type_name(tag)}, got {type(v).__name__} {v!r:.60}")


cdef class RecordStack:
    """One of the two buffers: a stack of records at guest memory [base, base+size)."""

    def __init__(self, owner, size_t address, uint64_t size, str name):
        """owner exports the memory (keeps it mapped); address is the host address of the buffer."""
        if size < 64 or size % 8:
            raise ValueError("buffer size must be a multiple of 8 and at least 64")
        self.owner = owner
        self.base = <uint8_t *>address
        self.size = size
        self.name = name

    cpdef void clear(self):
        (<uint64_t *>self.base)[0] = HEADER

    def top(self) -> int:
        return (<uint64_t *>self.base)[0]

    cdef uint64_t checked_top(self) except? 0xffffffffffffffff:
        cdef uint64_t top = (<uint64_t *>self.base)[0]
        if top < HEADER or top > self.size or top % 8:
            raise GuestProtocolError(f"{self.name} buffer: stack pointer {top:#x} is outside [8, {self.size:#x}] "
                             "or not 8-aligned")
        return top

    cdef Reader pop(self, int expect_kind, str what):
        """Pops the top record; checks the stack pointer, back-pointer, length and kind."""
        cdef uint64_t top = self.checked_top()
        if top < HEADER + 16:
            raise GuestProtocolError(f"{self.name} buffer: empty, expected a {what}")
        cdef uint64_t p = (<uint64_t *>(self.base + top - 8))[0]
        if p < HEADER or p % 8 or p > top - 16:
            raise GuestProtocolError(f"{self.name} buffer: record back-pointer {p:#x} is out of range "
                             f"(stack pointer {top:#x})")
        cdef uint32_t length = (<uint32_t *>(self.base + p))[0]
        if p + 8 + align8(length) + 8 != top:
            raise GuestProtocolError(f"{self.name} buffer: record length {length} at {p:#x} does not match the "
                             f"stack pointer {top:#x}")
        cdef uint8_t kind = self.base[p + 4]
        if expect_kind >= 0 and kind != expect_kind:
            raise GuestProtocolError(f"{self.name} buffer: expected a {what}, found kind "
                             f"{_KIND_NAMES.get(kind, kind)}")
        (<uint64_t *>self.base)[0] = p
        cdef Reader r = Reader.__new__(Reader)
        r.p = self.base + p + 8
        r.pos = 0
        r.end = length
        r.what = what
        return r

    cdef int push(self, int kind, bytearray payload) except -1:
        """Pushes a record; returns 0, or 1 if it does not fit (nothing written)."""
        cdef uint64_t top = self.checked_top()
        cdef uint64_t n = len(payload)
        if n > 0xffffffff or top + 16 + align8(n) > self.size:
            return 1
        cdef uint8_t *at = self.base + top
        (<uint32_t *>at)[0] = <uint32_t>n
        at[4] = kind
        at[5] = at[6] = at[7] = 0
        if n:
            memcpy(at + 8, <const char *>payload, n)
        memset(at + 8 + n, 0, align8(n) - n)
        (<uint64_t *>(at + 8 + align8(n)))[0] = top
        (<uint64_t *>self.base)[0] = top + 16 + align8(n)
        return 0

    # -- host -> guest ------------------------------------------------------------------------

    cpdef int push_call(self, bytes name, tuple tags, tuple args) except -1:
        """Empties the buffer and pushes a CALL record; args are checked against tags."""
        if len(args) != len(tags):
            raise GuestFunctionParameterTypeMismatch(
                f"{name.decode()}: takes {len(tags)} arguments, got {len(args)}")
        if len(args) > 255:
            raise GuestFunctionParameterTypeMismatch(f"{name.decode()}: at most 255 arguments, got {len(args)}")
        cdef Writer w = Writer.__new__(Writer)
        w.text(name, 2)
        w.u8(len(args))
        cdef Py_ssize_t i
        for i in range(len(args)):
            w.value(tags[i], args[i], _ArgWhere(name, i))
        self.clear()
        if self.push(KIND_CALL, w.buf):
            raise ArgumentTooLarge(f"call to {name.decode()} needs {len(w.buf) + 24} bytes, more than the "
                             f"input buffer's {self.size}: raise SandboxConfiguration.input_data_size")
        return 0

    def push_return(self, int tag, object value, str where):
        """Pushes a host function's result; raises HostFunctionError-worthy TypeError on mismatch,
        and returns False if the record does not fit."""
        cdef Writer w = Writer.__new__(Writer)
        w.value(tag, value, where)
        return self.push(KIND_RETURN, w.buf) == 0

    def push_error(self, uint32_t code, str message):
        """Pushes an ERROR record, truncating the message so it fits."""
        cdef Writer w
        cdef bytes m = message.encode("utf-8", "replace")
        cdef uint64_t room = self.size - self.checked_top()
        if room < 16 + 16:
            raise GuestProtocolError(f"{self.name} buffer: no room for an error record")
        m = _truncate_utf8(m, room - 16 - 16)
        w = Writer.__new__(Writer)
        w.raw(&code, 4)
        w.text(m, 4)
        if self.push(KIND_ERROR, w.buf):
            raise GuestProtocolError(f"{self.name} buffer: no room for an error record")

    # -- guest -> host ------------------------------------------------------------------------

    cdef int raise_error_record(self) except -1:
        """Raises the error an ERROR record on top reports (if there is one)."""
        cdef uint64_t top = self.checked_top()
        cdef uint64_t p
        if top >= HEADER + 16:
            p = (<uint64_t *>(self.base + top - 8))[0]
            if HEADER <= p <= top - 16 and self.base[p + 4] == KIND_ERROR:
                code, message = self.pop_error()
                raise ERROR_TYPES[code](message) if code in ERROR_TYPES else GuestError(message, code)
        return 0

    def pop_result_into(self, object out):
        """pop_result() of a bytes result, copied into the writable buffer `out` (any
        C-contiguous writable buffer: bytearray, numpy array, memoryview...) instead of a
        new bytes object; returns the number of bytes written. ValueError if it does not fit."""
        cdef Py_buffer view
        cdef Reader r
        cdef uint32_t n
        cdef const uint8_t *src
        PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            self.raise_error_record()
            r = self.pop(KIND_RETURN, "result record")
            tag = r.u8()
            if tag != T_BYTES:
                raise GuestProtocolError(f"guest returned {type_name(tag)}, expected bytes")
            n = r.u32()
            src = r.take(n)
            r.done()
            if n > <size_t>view.len:
                raise ValueError(f"the guest's result is {n} bytes, `out` holds {view.len}")
            if n:
                memcpy(view.buf, src, n)
            return n
        finally:
            PyBuffer_Release(&view)

    cpdef object pop_result(self, int expected_tag):
        """Pops the RETURN or ERROR record that ends a call; raises the matching error."""
        cdef int tag = 0
        self.raise_error_record()
        cdef Reader r = self.pop(KIND_RETURN, "result record")
        value = r.value(&tag)
        r.done()
        if tag != expected_tag and expected_tag >= 0:  # -1: any type (a guest's fallback)
            raise GuestProtocolError(f"guest returned {type_name(tag)}, its signature says {type_name(expected_tag)}")
        return value

    def pop_error(self):
        """Pops an ERROR record: (code, message)."""
        cdef Reader r = self.pop(KIND_ERROR, "error record")
        cdef uint32_t code = r.u32()
        message = r.text(r.u32(), "message")
        r.done()
        return code, message

    def pop_call(self):
        """Pops a CALL record (a host call from the guest): (name, args, tags)."""
        cdef Reader r = self.pop(KIND_CALL, "host call record")
        cdef int tag = 0
        name = r.name()
        cdef int argc = r.u8()
        args, tags = [], []
        for _ in range(argc):
            args.append(r.value(&tag))
            tags.append(tag)
        r.done()
        return name, tuple(args), tuple(tags)

    def top_kind(self):
        """The kind of the top record (checked like a pop), without popping it."""
        cdef uint64_t top = self.checked_top()
        cdef Reader r = self.pop(-1, "record")
        cdef uint8_t kind = r.p[-4]
        (<uint64_t *>self.base)[0] = top  # put it back
        return kind

    def pop_raw_call(self):
        """Pops a RAW_CALL record: (fn_id, offset of the request in the buffer, its length).
        The request is read in place: the length is the record's, checked by the pop."""
        cdef Reader r = self.pop(KIND_RAW_CALL, "raw host call record")
        cdef uint32_t fn_id = r.u32()
        return fn_id, <size_t>(r.p - self.base) + r.pos, r.end - r.pos

    def push_raw_result(self, uint32_t status, data):
        """Pushes a RAW_RESULT record; False (nothing written) if it does not fit."""
        cdef const uint8_t[::1] view = memoryview(data).cast("B") if len(data) else b""
        cdef Writer w = Writer.__new__(Writer)
        w.raw(&status, 4)
        if view.shape[0]:
            w.raw(&view[0], view.shape[0])
        return self.push(KIND_RAW_RESULT, w.buf) == 0

    def pop_log(self):
        """Pops a LOG record: (level, line, file, message)."""
        cdef Reader r = self.pop(KIND_LOG, "log record")
        cdef int level = r.u8()
        cdef uint32_t line = r.u32()
        source = r.text(r.u32(), "source file")
        message = r.text(r.u32(), "message")
        r.done()
        return level, line, source, message

    def pop_print(self):
        """Pops a PRINT record: the text."""
        cdef Reader r = self.pop(KIND_PRINT, "print record")
        text = r.text(r.u32(), "text")
        r.done()
        return text

    def pop_function_table(self):
        """Pops the FUNCTION_TABLE record of init: [(name, (param tags), return tag)]."""
        cdef Reader r = self.pop(KIND_FUNCTION_TABLE, "function table record")
        cdef int count = r.u16(), nparams, _i
        out = []
        for _i in range(count):
            name = r.name()
            ret = r.u8()
            nparams = r.u8()
            params = tuple(r.u8() for _ in range(nparams))
            for t in (ret,) + params:
                if t > T_BYTES:
                    raise GuestProtocolError(f"function table: {name} uses unknown type tag {t}")
            if any(t == T_VOID for t in params):
                raise GuestProtocolError(f"function table: {name} has a void parameter")
            if not name and (ret != T_VOID or nparams):  # the fallback's entry (docs/abi.md)
                raise GuestProtocolError("function table: the entry with an empty name (a fallback "
                                         "dispatcher) must be void without parameters")
            out.append((name, params, ret))
        r.done()
        return out


cdef class _ArgWhere:
    """Formats "Name: argument N" only when an error needs it (keeps the hot path cheap)."""
    cdef bytes name
    cdef int index

    def __cinit__(self, bytes name, int index):
        self.name = name
        self.index = index

    def __str__(self):
        return f"{self.name.decode()}: argument {self.index + 1}"

    def __format__(self, spec):
        return str(self)


def _truncate_utf8(bytes m, uint64_t room):
    if <uint64_t>len(m) <= room:
        return m
    return m[:room].decode("utf-8", "ignore").encode("utf-8")


def encode_payload_for_tests(int kind, bytes payload):
    """(kind, payload) -> the record bytes as they sit in a buffer at offset 8 (for tests)."""
    n = len(payload)
    pad = b"\0" * (align8(n) - n)
    return (n.to_bytes(4, "little") + bytes([kind, 0, 0, 0]) + payload + pad + (8).to_bytes(8, "little"))
