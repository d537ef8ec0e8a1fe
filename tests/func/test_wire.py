"""The record format of docs/abi.md, host side (no KVM): encoding CALL records, decoding what the
guest writes, and rejecting every kind of corruption with GuestProtocolError."""
from __future__ import annotations

import ctypes
import enum
import math
import mmap
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hlsandbox as hl
from hlsandbox.func.wire import RECORD_KINDS, RecordStack, encode_payload_for_tests, type_name
from hlsandbox.mem.shared_memory import SharedMemory

PAGE = 4096
CALL, RETURN, ERROR, LOG, PRINT, FUNCTION_TABLE = 1, 2, 3, 4, 5, 6
VOID, I32, U32, I64, U64, F32, F64, BOOL, STR, BYTES = range(10)


# -- encoding helpers (written from docs/abi.md, independently of wire.pyx) ------------------

def align8(n: int) -> int:
    return (n + 7) & ~7


def record(kind: int, payload: bytes, at: int, *, length: int | None = None, back: int | None = None) -> bytes:
    """A record as it sits at offset `at`: header, payload, zero padding, back-pointer."""
    n = len(payload)
    return (struct.pack("<IB3x", n if length is None else length, kind) + payload + bytes(align8(n) - n)
            + struct.pack("<Q", at if back is None else back))


def name_(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<H", len(b)) + b + b"\0"


def str_(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<I", len(b)) + b + b"\0"


def val(tag: int, v=None) -> bytes:
    if tag == VOID:
        return b"\0"
    fmt = {I32: "<i", U32: "<I", I64: "<q", U64: "<Q", F32: "<f", F64: "<d", BOOL: "<B"}
    if tag in fmt:
        return bytes([tag]) + struct.pack(fmt[tag], v)
    if tag == STR:
        return bytes([tag]) + str_(v)
    if tag == BYTES:
        return bytes([tag]) + struct.pack("<I", len(v)) + v
    raise AssertionError(tag)


class Buffer:
    """A RecordStack over `size` bytes of a SharedMemory, at `offset` in it."""

    def __init__(self, size: int = 256, name: str = "output", offset: int = 0, mem_size: int = PAGE):
        self.shm = SharedMemory(mem_size)
        self.offset = offset
        self.size = size
        self.stack = RecordStack(self.shm, self.shm.address + offset, size, name)

    def set_top(self, top: int) -> None:
        self.shm.write_u64(self.offset, top)

    @property
    def top(self) -> int:
        return self.shm.read_u64(self.offset)

    def put(self, *records: tuple[int, bytes]) -> None:
        """Pushes records the way the guest does, starting from an empty buffer."""
        p = 8
        for kind, payload in records:
            rec = record(kind, payload, p)
            self.shm.write(self.offset + p, rec)
            p += len(rec)
        self.set_top(p)

    def raw(self, at: int, data: bytes) -> None:
        self.shm.write(self.offset + at, data)

    def read(self, at: int, n: int) -> bytes:
        return self.shm.read(self.offset + at, n)


@pytest.fixture
def buf():
    b = Buffer()
    yield b
    b.shm.close()


def decode_call(b: Buffer):
    """Decodes the buffer after push_call by hand: (name, [(tag, raw data)], top)."""
    top = b.top
    length, kind = struct.unpack("<IB", b.read(8, 5))
    assert b.read(13, 3) == b"\0\0\0"
    assert kind == CALL
    assert top == 8 + 8 + align8(length) + 8
    assert struct.unpack("<Q", b.read(top - 8, 8))[0] == 8
    payload = b.read(16, length)
    assert b.read(16 + length, align8(length) - length) == bytes(align8(length) - length)
    (nlen,) = struct.unpack_from("<H", payload, 0)
    name = payload[2:2 + nlen]
    assert payload[2 + nlen] == 0
    pos = 3 + nlen
    argc = payload[pos]
    pos += 1
    args = []
    for _ in range(argc):
        tag = payload[pos]
        pos += 1
        size = {VOID: 0, I32: 4, U32: 4, I64: 8, U64: 8, F32: 4, F64: 8, BOOL: 1}.get(tag)
        if size is None:
            (n,) = struct.unpack_from("<I", payload, pos)
            size = 4 + n + (1 if tag == STR else 0)
        args.append((tag, payload[pos:pos + size]))
        pos += size
    assert pos == length
    return name, args, top


# -- construction -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 8, 56, 65, 100, 4097])
def test_bad_buffer_size(size):
    shm = SharedMemory(2 * PAGE)
    with pytest.raises(ValueError, match="^buffer size must be a multiple of 8 and at least 64$"):
        RecordStack(shm, shm.address, size, "input")
    shm.close()


def test_attributes_and_clear(buf):
    assert buf.stack.size == 256
    assert buf.stack.name == "output"
    buf.set_top(1234)
    buf.stack.clear()
    assert buf.top == 8
    assert buf.stack.top() == 8


def test_record_kinds_and_type_names():
    assert RECORD_KINDS == {"call": 1, "return": 2, "error": 3, "log": 4, "print": 5, "function_table": 6,
                            "raw_call": 7, "raw_result": 8}
    assert [type_name(t) for t in range(10)] == ["void", "i32", "u32", "i64", "u64", "f32", "f64", "bool",
                                                  "str", "bytes"]
    assert type_name(10) == "<tag 10>"
    assert type_name(-1) == "<tag -1>"


def test_encode_payload_for_tests_matches_abi():
    assert encode_payload_for_tests(PRINT, str_("hi")) == record(PRINT, str_("hi"), 8)


# -- push_call -------------------------------------------------------------------------------

def test_push_call_layout(buf):
    buf.stack.push_call(b"Echo", (STR,), ("hi",))
    raw = buf.read(0, 48)
    assert raw == (struct.pack("<Q", 40) + struct.pack("<IB3x", 16, CALL) + b"\x04\x00Echo\x00" + b"\x01"
                   + b"\x08\x02\x00\x00\x00hi\x00" + struct.pack("<Q", 8) + bytes(8))


def test_push_call_no_args(buf):
    buf.stack.push_call(b"GetAnswer", (), ())
    name, args, top = decode_call(buf)
    assert (name, args, top) == (b"GetAnswer", [], 8 + 8 + 16 + 8)


@pytest.mark.parametrize("tag, value, data", [
    (I32, -1, b"\xff\xff\xff\xff"),
    (I32, 2**31 - 1, struct.pack("<i", 2**31 - 1)),
    (I32, -2**31, struct.pack("<i", -2**31)),
    (U32, 2**32 - 1, b"\xff" * 4),
    (U32, 0, bytes(4)),
    (I64, -2**63, struct.pack("<q", -2**63)),
    (I64, 2**63 - 1, struct.pack("<q", 2**63 - 1)),
    (U64, 2**64 - 1, b"\xff" * 8),
    (F32, 1.5, struct.pack("<f", 1.5)),
    (F32, 3, struct.pack("<f", 3.0)),
    (F64, -2.25, struct.pack("<d", -2.25)),
    (F64, 7, struct.pack("<d", 7.0)),
    (F64, math.inf, struct.pack("<d", math.inf)),
    (BOOL, True, b"\x01"),
    (BOOL, False, b"\x00"),
    (STR, "", b"\0\0\0\0\0"),
    (STR, "héllo €", str_("héllo €")),
    (STR, "a\0b", b"\x03\0\0\0a\0b\0"),
    (BYTES, b"", bytes(4)),
    (BYTES, b"\0\xff\x10", b"\x03\0\0\0\0\xff\x10"),
    (BYTES, bytearray(b"ab"), b"\x02\0\0\0ab"),
    (BYTES, memoryview(b"xyz"), b"\x03\0\0\0xyz"),
])
def test_push_call_values(buf, tag, value, data):
    buf.stack.push_call(b"F", (tag,), (value,))
    name, args, _ = decode_call(buf)
    assert name == b"F"
    assert args == [(tag, data)]


def test_push_call_many_args(buf):
    tags = (I32, U32, I64, U64, F32, F64, BOOL, STR, BYTES)
    values = (-7, 7, -70, 70, 0.5, 0.25, True, "s", b"b")
    buf.stack.push_call(b"All", tags, values)
    name, args, top = decode_call(buf)
    assert [t for t, _ in args] == list(tags)
    assert [d for _, d in args] == [val(t, v)[1:] for t, v in zip(tags, values, strict=True)]


def test_push_call_int_subclass_accepted(buf):
    class Color(enum.IntEnum):
        RED = 3

    buf.stack.push_call(b"F", (I32,), (Color.RED,))
    assert decode_call(buf)[1] == [(I32, struct.pack("<i", 3))]


def test_push_call_replaces_previous_contents(buf):
    buf.stack.push_call(b"First", (BYTES,), (b"x" * 50,))
    buf.stack.push_call(b"G", (I32,), (1,))
    name, args, top = decode_call(buf)
    assert name == b"G" and top == 8 + 8 + 16 + 8


@pytest.mark.parametrize("tag, value, match", [
    (I32, "1", r"^F: argument 1: expected i32, got str '1'$"),
    (I32, 1.0, r"^F: argument 1: expected i32, got float 1\.0$"),
    (I32, None, r"^F: argument 1: expected i32, got NoneType None$"),
    (I32, True, r"^F: argument 1: expected i32, got bool True$"),
    (U64, False, r"^F: argument 1: expected u64, got bool False$"),
    (I32, 2**31, r"^F: argument 1: 2147483648 is out of range for i32$"),
    (I32, -2**31 - 1, r"^F: argument 1: -2147483649 is out of range for i32$"),
    (U32, -1, r"^F: argument 1: -1 is out of range for u32$"),
    (U32, 2**32, r"^F: argument 1: 4294967296 is out of range for u32$"),
    (I64, 2**63, r"^F: argument 1: 9223372036854775808 is out of range for i64$"),
    (I64, -2**63 - 1, r"is out of range for i64$"),
    (U64, -1, r"^F: argument 1: -1 is out of range for u64$"),
    (U64, 2**64, r"^F: argument 1: 18446744073709551616 is out of range for u64$"),
    (BOOL, 1, r"^F: argument 1: expected bool, got int 1$"),
    (BOOL, 0, r"^F: argument 1: expected bool, got int 0$"),
    (BOOL, None, r"expected bool, got NoneType"),
    (F64, "1.0", r"^F: argument 1: expected f64, got str '1\.0'$"),
    (F32, True, r"^F: argument 1: expected f32, got bool True$"),
    (STR, b"x", r"^F: argument 1: expected str, got bytes b'x'$"),
    (STR, 5, r"expected str, got int 5$"),
    (BYTES, "x", r"^F: argument 1: expected bytes, got str 'x'$"),
    (BYTES, [1, 2], r"expected bytes, got list"),
])
def test_push_call_type_mismatch(buf, tag, value, match):
    buf.stack.push_call(b"Old", (), ())
    before = buf.read(0, 64)
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match=match) as ei:
        buf.stack.push_call(b"F", (tag,), (value,))
    assert ei.value.code == 3
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, hl.GuestError)
    assert buf.read(0, 64) == before  # nothing written


def test_push_call_mismatch_names_the_argument(buf):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match=r"^Add: argument 3: expected i32, got str"):
        buf.stack.push_call(b"Add", (I32, I32, I32), (1, 2, "3"))


def test_push_call_long_repr_is_truncated(buf):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch) as ei:
        buf.stack.push_call(b"F", (I32,), ("z" * 1000,))
    assert str(ei.value) == "F: argument 1: expected i32, got str '" + "z" * 59


@pytest.mark.parametrize("tags, args", [((I32, I32), (1,)), ((), (1,)), ((I32,), ()), ((STR,), ("a", "b"))])
def test_push_call_wrong_arity(buf, tags, args):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch,
                       match=rf"^Fn: takes {len(tags)} arguments, got {len(args)}$"):
        buf.stack.push_call(b"Fn", tags, args)


def test_push_call_exact_fit_and_too_large():
    b = Buffer(size=64)
    # payload: name "f" (4) + argc (1) + bytes tag (1) + len (4) + data = 40 -> 8 + 8 + 40 + 8 = 64
    b.stack.push_call(b"f", (BYTES,), (b"x" * 30,))
    assert b.top == 64
    with pytest.raises(ValueError, match=r"^call to f needs 65 bytes, more than the input buffer's 64: raise "
                                         r"SandboxConfiguration\.input_data_size$"):
        b.stack.push_call(b"f", (BYTES,), (b"x" * 31,))
    with pytest.raises(ValueError, match=r"^call to f needs 1034 bytes"):
        b.stack.push_call(b"f", (BYTES,), (b"x" * 1000,))
    b.shm.close()


def test_push_call_name_too_long(buf):
    with pytest.raises(ValueError, match="^name longer than 65535 bytes$"):
        buf.stack.push_call(b"n" * 65536, (), ())


@pytest.mark.parametrize("tag", [F32, F64])
def test_push_call_float_overflow_is_a_type_mismatch(buf, tag):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match="argument 1"):
        buf.stack.push_call(b"F", (tag,), (10**400,))


def test_push_return_float_overflow_is_a_type_mismatch(buf):
    buf.stack.clear()
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match="^host function H result: "):
        buf.stack.push_return(F64, 10**400, "host function H result")


def test_push_call_more_than_255_args_rejected(buf):
    big = Buffer(size=PAGE)
    with pytest.raises((hl.GuestFunctionParameterTypeMismatch, ValueError)):
        big.stack.push_call(b"F", (BOOL,) * 256, (True,) * 256)
    big.shm.close()


def test_push_call_lone_surrogate_rejected(buf):
    with pytest.raises((hl.GuestFunctionParameterTypeMismatch, UnicodeEncodeError)):
        buf.stack.push_call(b"F", (STR,), ("\ud800",))


# -- guest -> host: well-formed records ---------------------------------------------------------

@pytest.mark.parametrize("tag, value", [
    (VOID, None), (I32, -5), (I32, 2**31 - 1), (U32, 2**32 - 1), (I64, -2**63), (U64, 2**64 - 1), (F32, 1.5),
    (F64, -2.25), (BOOL, True), (BOOL, False), (STR, "héllo"), (STR, ""), (BYTES, b"\0\x01\xff"), (BYTES, b""),
])
def test_pop_result(buf, tag, value):
    buf.put((RETURN, val(tag, value)))
    got = buf.stack.pop_result(tag)
    assert got == value and type(got) is type(value)
    assert buf.top == 8


def test_pop_result_f32_is_rounded_to_single(buf):
    buf.put((RETURN, val(F32, 0.1)))
    assert buf.stack.pop_result(F32) == struct.unpack("<f", struct.pack("<f", 0.1))[0]


def test_pop_result_nan(buf):
    buf.put((RETURN, val(F64, math.nan)))
    assert math.isnan(buf.stack.pop_result(F64))


def test_pop_result_wrong_tag(buf):
    buf.put((RETURN, val(I32, 1)))
    with pytest.raises(hl.GuestProtocolError, match=r"^guest returned i32, its signature says i64$"):
        buf.stack.pop_result(I64)


def test_pop_error(buf):
    buf.put((ERROR, struct.pack("<I", 7) + str_("it broke")))
    assert buf.stack.pop_error() == (7, "it broke")
    assert buf.top == 8


@pytest.mark.parametrize("code, exc", [(2, hl.GuestFunctionNotFound), (3, hl.GuestFunctionParameterTypeMismatch),
                                       (4, hl.HostFunctionError), (5, hl.HostFunctionNotFound)])
def test_pop_result_error_codes(buf, code, exc):
    buf.put((ERROR, struct.pack("<I", code) + str_(f"message {code}")))
    with pytest.raises(exc) as ei:
        buf.stack.pop_result(I32)
    assert type(ei.value) is exc
    assert str(ei.value) == f"message {code}"
    assert ei.value.message == f"message {code}"
    assert ei.value.code == code
    assert buf.top == 8


@pytest.mark.parametrize("code", [0, 1, 6, 7, 1000, 2**32 - 1])
def test_pop_result_other_error_codes(buf, code):
    buf.put((ERROR, struct.pack("<I", code) + str_("guest says no")))
    with pytest.raises(hl.GuestError) as ei:
        buf.stack.pop_result(VOID)
    assert type(ei.value) is hl.GuestError
    assert ei.value.code == code
    assert str(ei.value) == "guest says no"


def test_pop_call(buf):
    payload = name_("HostAdd") + b"\x03" + val(I32, 2) + val(STR, "x") + val(BYTES, b"\x00\x01")
    buf.put((CALL, payload))
    assert buf.stack.pop_call() == ("HostAdd", (2, "x", b"\x00\x01"), (I32, STR, BYTES))
    assert buf.top == 8


def test_pop_call_no_args(buf):
    buf.put((CALL, name_("Ping") + b"\x00"))
    assert buf.stack.pop_call() == ("Ping", (), ())


def test_pop_log(buf):
    buf.put((LOG, b"\x03" + struct.pack("<I", 42) + str_("main.c") + str_("hello ✓")))
    assert buf.stack.pop_log() == (3, 42, "main.c", "hello ✓")
    assert buf.top == 8


def test_pop_print(buf):
    buf.put((PRINT, str_("line\n")))
    assert buf.stack.pop_print() == "line\n"
    assert buf.top == 8


def test_pop_function_table(buf):
    payload = (struct.pack("<H", 3) + name_("Echo") + bytes([STR, 1, STR]) + name_("Add") + bytes([I32, 2, I32, I32])
               + name_("Nothing") + bytes([VOID, 0]))
    buf.put((FUNCTION_TABLE, payload))
    assert buf.stack.pop_function_table() == [("Echo", (STR,), STR), ("Add", (I32, I32), I32),
                                              ("Nothing", (), VOID)]
    assert buf.top == 8


def test_pop_function_table_with_a_fallback(buf):
    table = struct.pack("<H", 2) + name_("") + bytes([VOID, 0]) + name_("Echo") + bytes([STR, 1, STR])
    buf.put((FUNCTION_TABLE, table))
    assert buf.stack.pop_function_table() == [("", (), VOID), ("Echo", (STR,), STR)]


@pytest.mark.parametrize("entry", [bytes([VOID, 1, I32]), bytes([I32, 0])])
def test_pop_function_table_refuses_a_fallback_entry_with_a_signature(buf, entry):
    buf.put((FUNCTION_TABLE, struct.pack("<H", 1) + name_("") + entry))
    with pytest.raises(hl.GuestProtocolError, match="empty name"):
        buf.stack.pop_function_table()


def test_pop_empty_function_table(buf):
    buf.put((FUNCTION_TABLE, struct.pack("<H", 0)))
    assert buf.stack.pop_function_table() == []


def test_records_pop_in_lifo_order(buf):
    buf.put((PRINT, str_("first")), (LOG, b"\x02" + struct.pack("<I", 1) + str_("f") + str_("m")),
            (PRINT, str_("third")))
    assert buf.stack.pop_print() == "third"
    assert buf.stack.pop_log() == (2, 1, "f", "m")
    assert buf.stack.pop_print() == "first"
    assert buf.top == 8


def test_buffer_not_at_start_of_memory():
    b = Buffer(size=128, offset=PAGE - 128)
    b.put((PRINT, str_("edge")))
    assert b.stack.pop_print() == "edge"
    b.shm.close()


# -- push_return / push_error round trips ------------------------------------------------------

@pytest.mark.parametrize("tag, value", [
    (VOID, None), (I32, -3), (U32, 3), (I64, -2**40), (U64, 2**63), (F32, 0.5), (F64, 1e300), (BOOL, True),
    (STR, "añb"), (BYTES, b"\xff\x00"),
])
def test_push_return_round_trip(buf, tag, value):
    buf.stack.clear()
    assert buf.stack.push_return(tag, value, "host function H result") is True
    assert buf.stack.pop_result(tag) == value
    assert buf.top == 8


def test_push_return_stacks_above_existing_records(buf):
    buf.stack.push_call(b"F", (I32,), (1,))
    top = buf.top
    assert buf.stack.push_return(I32, 9, "r")
    assert buf.read(top, 8) == struct.pack("<IB3x", 5, RETURN)
    assert buf.stack.pop_result(I32) == 9
    assert buf.top == top


def test_push_return_mismatch(buf):
    buf.stack.clear()
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match=r"^host function H result: expected i32, got str"):
        buf.stack.push_return(I32, "no", "host function H result")
    assert buf.top == 8


def test_push_return_does_not_fit():
    b = Buffer(size=64)
    b.stack.clear()
    assert b.stack.push_return(BYTES, b"x" * 35, "r") is True  # 1 + 4 + 35 = 40: exactly fits
    b.stack.clear()
    assert b.stack.push_return(BYTES, b"x" * 36, "r") is False
    assert b.top == 8
    b.shm.close()


@pytest.mark.parametrize("code, message", [(4, "host function raised"), (5, ""), (1, "ünïcode ✓"),
                                           (2**32 - 1, "max code")])
def test_push_error_round_trip(buf, code, message):
    buf.stack.clear()
    buf.stack.push_error(code, message)
    assert buf.stack.pop_error() == (code, message)
    assert buf.top == 8


def test_push_error_truncates_to_fit():
    b = Buffer(size=64)
    b.stack.clear()
    b.stack.push_error(4, "x" * 100)
    assert b.top == 64  # fills the buffer exactly
    assert b.stack.pop_error() == (4, "x" * 24)
    b.stack.clear()
    b.stack.push_error(4, "a" + "€" * 20)  # the cut falls inside a 3-byte character: drop it
    assert b.stack.pop_error() == (4, "a" + "€" * 7)
    b.shm.close()


def test_push_error_above_a_call(buf):
    buf.stack.push_call(b"F", (STR,), ("arg",))
    top = buf.top
    buf.stack.push_error(5, "no such host function " * 20)
    code, message = buf.stack.pop_error()
    assert code == 5
    assert ("no such host function " * 20).startswith(message)
    assert len(message.encode()) == 256 - top - 32
    assert buf.top == top


def test_push_error_no_room():
    b = Buffer(size=64)
    b.set_top(40)  # 24 bytes left: less than the 32 an error record needs
    with pytest.raises(hl.GuestProtocolError, match=r"^output buffer: no room for an error record$"):
        b.stack.push_error(4, "m")
    b.set_top(32)
    b.stack.push_error(4, "m")
    assert b.stack.pop_error() == (4, "")
    b.shm.close()


def test_push_error_lone_surrogate_is_replaced(buf):
    buf.stack.clear()
    buf.stack.push_error(1, "a\ud800b")
    assert buf.stack.pop_error() == (1, "a?b")


def test_push_with_corrupt_top_raises(buf):
    buf.set_top(3)
    with pytest.raises(hl.GuestProtocolError, match="stack pointer 0x3"):
        buf.stack.push_return(I32, 1, "r")
    with pytest.raises(hl.GuestProtocolError, match="stack pointer 0x3"):
        buf.stack.push_error(4, "m")


# -- corruption ------------------------------------------------------------------------------

POPS = {
    "result": lambda s: s.pop_result(I32),
    "error": lambda s: s.pop_error(),
    "call": lambda s: s.pop_call(),
    "log": lambda s: s.pop_log(),
    "print": lambda s: s.pop_print(),
    "function table": lambda s: s.pop_function_table(),
}
WHAT = {"result": "result", "error": "error", "call": "host call", "log": "log", "print": "print",
        "function table": "function table"}


@pytest.mark.parametrize("pop", POPS)
@pytest.mark.parametrize("top", [0, 4, 7, 12, 257, 264, 2**63, 2**64 - 8, 2**64 - 1])
def test_stack_pointer_out_of_range_or_misaligned(buf, pop, top):
    buf.set_top(top)
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^output buffer: stack pointer {top:#x} is outside \[8, 0x100\] or not 8-aligned$"):
        POPS[pop](buf.stack)
    assert buf.top == top  # nothing popped


@pytest.mark.parametrize("pop", POPS)
@pytest.mark.parametrize("top", [8, 16])
def test_empty_buffer(buf, pop, top):
    buf.set_top(top)
    with pytest.raises(hl.GuestProtocolError, match=rf"^output buffer: empty, expected a {WHAT[pop]} record$"):
        POPS[pop](buf.stack)


@pytest.mark.parametrize("pop", POPS)
@pytest.mark.parametrize("back", [0, 4, 7, 9, 17, 52, 56, 64, 256, 2**64 - 8, 2**63])
def test_back_pointer_out_of_range(buf, pop, back):
    buf.set_top(64)
    buf.raw(56, struct.pack("<Q", back))
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^output buffer: record back-pointer {back:#x} is out of range \(stack pointer 0x40\)$"):
        POPS[pop](buf.stack)
    assert buf.top == 64


@pytest.mark.parametrize("pop", POPS)
@pytest.mark.parametrize("length", [0, 8, 24, 33, 2**32 - 1])
def test_length_mismatch(buf, pop, length):
    kind = {"result": RETURN, "error": ERROR, "call": CALL, "log": LOG, "print": PRINT,
            "function table": FUNCTION_TABLE}[pop]
    buf.raw(8, record(kind, bytes(16), 8, length=length))  # 16 payload bytes, length says otherwise
    buf.set_top(8 + 8 + 16 + 8)
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^output buffer: record length {length} at 0x8 does not match the stack pointer 0x28$"):
        POPS[pop](buf.stack)


def test_back_pointer_to_a_lower_record_is_a_length_mismatch(buf):
    buf.put((PRINT, str_("a")), (PRINT, str_("b")))
    top = buf.top
    buf.raw(top - 8, struct.pack("<Q", 8))  # skips the second record
    with pytest.raises(hl.GuestProtocolError, match=r"record length 6 at 0x8 does not match the stack pointer"):
        buf.stack.pop_print()


@pytest.mark.parametrize("pop, kind, found", [
    ("print", LOG, "log"), ("log", PRINT, "print"), ("call", RETURN, "return"), ("error", CALL, "call"),
    ("function table", ERROR, "error"), ("result", PRINT, "print"), ("print", 0, "0"), ("print", 99, "99"),
    ("call", FUNCTION_TABLE, "function_table"),
])
def test_wrong_kind(buf, pop, kind, found):
    buf.put((kind, str_("x")))
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^output buffer: expected a {WHAT[pop]} record, found kind {found}$"):
        POPS[pop](buf.stack)
    assert buf.top == 8 + 8 + 8 + 8  # a wrong kind pops nothing


@pytest.mark.parametrize("payload, needs, at, has", [
    (b"", 1, 0, 0),                                        # no tag
    (bytes([I32]) + b"\x01\x02", 4, 1, 3),
    (bytes([I64]) + bytes(7), 8, 1, 8),
    (bytes([U64]), 8, 1, 1),
    (bytes([F32]) + bytes(3), 4, 1, 4),
    (bytes([F64]) + bytes(4), 8, 1, 5),
    (bytes([BOOL]), 1, 1, 1),
    (bytes([STR]) + b"\x05\0\0\0abc", 6, 5, 8),             # length 5 + NUL, 3 bytes present
    (bytes([STR]) + b"\x03\0\0\0abc", 4, 5, 8),             # NUL missing past the end
    (bytes([STR]) + b"\x01\0", 4, 1, 3),                    # length itself truncated
    (bytes([BYTES]) + b"\xff\xff\xff\xff" + b"ab", 4294967295, 5, 7),
])
def test_truncated_value(buf, payload, needs, at, has):
    buf.put((RETURN, payload))
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^result record: truncated record \(needs {needs} bytes at payload offset {at}, "
                             rf"payload has {has}\)$"):
        buf.stack.pop_result(I32)


@pytest.mark.parametrize("pop, payload", [
    ("error", b"\x04\0\0"),
    ("error", struct.pack("<I", 4) + b"\x09\0\0\0short\0"),
    ("call", b"\x05\0Ab"),
    ("call", name_("F") + b"\x02" + val(I32, 1)),            # argc says 2, one value present
    ("log", b"\x02" + struct.pack("<I", 1) + str_("f")),    # message missing
    ("log", b"\x02\x01"),
    ("print", b"\x10\0\0\0short\0"),
    ("function table", struct.pack("<H", 2) + name_("A") + bytes([I32, 0])),
    ("function table", struct.pack("<H", 1) + name_("A") + bytes([I32, 3, I32])),
    ("function table", b"\x01"),
])
def test_truncated_payloads(buf, pop, payload):
    buf.put(({"error": ERROR, "call": CALL, "log": LOG, "print": PRINT, "function table": FUNCTION_TABLE}[pop],
             payload))
    with pytest.raises(hl.GuestProtocolError, match=rf"^{WHAT[pop]} record: truncated record \(needs \d+ bytes"):
        POPS[pop](buf.stack)


@pytest.mark.parametrize("tag", [10, 11, 0x7F, 0xFF])
def test_unknown_value_tag(buf, tag):
    buf.put((RETURN, bytes([tag, 0, 0, 0, 0])))
    with pytest.raises(hl.GuestProtocolError, match=rf"^result record: unknown value type tag {tag}$"):
        buf.stack.pop_result(I32)
    buf.put((CALL, name_("F") + b"\x01" + bytes([tag])))
    with pytest.raises(hl.GuestProtocolError, match=rf"^host call record: unknown value type tag {tag}$"):
        buf.stack.pop_call()


@pytest.mark.parametrize("b", [2, 3, 0x80, 0xFF])
def test_bool_not_0_or_1(buf, b):
    buf.put((RETURN, bytes([BOOL, b])))
    with pytest.raises(hl.GuestProtocolError, match=rf"^result record: bool value {b} is neither 0 nor 1$"):
        buf.stack.pop_result(BOOL)


@pytest.mark.parametrize("pop, payload, field", [
    ("result", bytes([STR]) + b"\x02\0\0\0hiX", "string value"),
    ("error", struct.pack("<I", 1) + b"\x02\0\0\0hiX", "message"),
    ("call", b"\x02\0hiX" + b"\x00", "name"),
    ("call", name_("F") + b"\x01" + bytes([STR]) + b"\x01\0\0\0a!", "string value"),
    ("log", b"\x02" + struct.pack("<I", 1) + b"\x01\0\0\0fX" + str_("m"), "source file"),
    ("log", b"\x02" + struct.pack("<I", 1) + str_("f") + b"\x01\0\0\0mX", "message"),
    ("print", b"\x02\0\0\0hi\n", "text"),
    ("function table", struct.pack("<H", 1) + b"\x01\0AX" + bytes([I32, 0]), "name"),
])
def test_string_not_nul_terminated(buf, pop, payload, field):
    buf.put(({"result": RETURN, "error": ERROR, "call": CALL, "log": LOG, "print": PRINT,
              "function table": FUNCTION_TABLE}[pop], payload))
    with pytest.raises(hl.GuestProtocolError, match=rf"^{WHAT[pop]} record: {field} is not NUL-terminated$"):
        POPS[pop](buf.stack)


@pytest.mark.parametrize("bad, reason", [
    (b"\xff", "invalid start byte"),
    (b"a\xc3", "unexpected end of data"),
    (b"\xed\xa0\x80", "invalid continuation byte"),  # an encoded surrogate
    (b"\xc0\xaf", "invalid start byte"),               # overlong
])
def test_invalid_utf8(buf, bad, reason):
    buf.put((PRINT, str_(bad)))
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^print record: text is not valid UTF-8 \({reason} at byte \d+\)$"):
        buf.stack.pop_print()
    buf.put((RETURN, val(STR, bad)))
    with pytest.raises(hl.GuestProtocolError, match=r"^result record: string value is not valid UTF-8"):
        buf.stack.pop_result(STR)
    buf.put((CALL, struct.pack("<H", len(bad)) + bad + b"\0\0"))
    with pytest.raises(hl.GuestProtocolError, match=r"^host call record: name is not valid UTF-8"):
        buf.stack.pop_call()


@pytest.mark.parametrize("pop, payload, extra", [
    ("result", val(I32, 1) + b"\x00", 1),
    ("result", val(VOID) + bytes(3), 3),
    ("error", struct.pack("<I", 1) + str_("m") + b"zz", 2),
    ("call", name_("F") + b"\x00" + b"\x01", 1),
    ("log", b"\x02" + struct.pack("<I", 1) + str_("f") + str_("m") + bytes(5), 5),
    ("print", str_("t") + b"x", 1),
    ("function table", struct.pack("<H", 0) + b"abc", 3),
])
def test_trailing_bytes(buf, pop, payload, extra):
    buf.put(({"result": RETURN, "error": ERROR, "call": CALL, "log": LOG, "print": PRINT,
              "function table": FUNCTION_TABLE}[pop], payload))
    with pytest.raises(hl.GuestProtocolError,
                       match=rf"^{WHAT[pop]} record: {extra} unexpected trailing bytes in record$"):
        POPS[pop](buf.stack)


def test_padding_is_not_payload(buf):
    # A 1-byte payload padded to 8 (with junk in the padding) decodes fine: padding is not checked.
    buf.raw(8, struct.pack("<IB3x", 1, RETURN) + b"\x00" + b"\xaa" * 7 + struct.pack("<Q", 8))
    buf.set_top(32)
    assert buf.stack.pop_result(VOID) is None


@pytest.mark.parametrize("payload, match", [
    (struct.pack("<H", 1) + name_("F") + bytes([10, 0]), r"^function table: F uses unknown type tag 10$"),
    (struct.pack("<H", 1) + name_("G") + bytes([I32, 1, 200]), r"^function table: G uses unknown type tag 200$"),
    (struct.pack("<H", 1) + name_("H") + bytes([I32, 2, I32, VOID]), r"^function table: H has a void parameter$"),
])
def test_function_table_bad_types(buf, payload, match):
    buf.put((FUNCTION_TABLE, payload))
    with pytest.raises(hl.GuestProtocolError, match=match):
        buf.stack.pop_function_table()


def test_corrupt_error_record_in_pop_result(buf):
    buf.put((ERROR, struct.pack("<I", 2) + b"\x05\0\0\0abc"))
    with pytest.raises(hl.GuestProtocolError, match=r"^error record: truncated record"):
        buf.stack.pop_result(I32)


def test_pop_result_error_with_bad_back_pointer_is_protocol_error(buf):
    buf.put((ERROR, struct.pack("<I", 2) + str_("m")))
    buf.raw(buf.top - 8, struct.pack("<Q", 16))
    with pytest.raises(hl.GuestProtocolError) as ei:
        buf.stack.pop_result(I32)
    assert type(ei.value) is hl.GuestProtocolError


def test_protocol_error_hierarchy():
    assert issubclass(hl.GuestProtocolError, hl.GuestError)
    assert issubclass(hl.GuestError, hl.HyperlightError)


# -- fuzzing: arbitrary buffer contents only ever raise GuestError ------------------------------

class FencedBuffer:
    """`size` bytes ending exactly at an inaccessible page, so any read past the buffer faults."""

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, 3 * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        assert libc.mprotect(base + 2 * PAGE, PAGE, 0) == 0  # PROT_NONE after the buffer
        self.start = 2 * PAGE - size
        self.address = base + self.start
        self.size = size

    def load(self, data: bytes) -> None:
        self.map[self.start:self.start + self.size] = data


_FENCES = {}


def fenced(size: int) -> FencedBuffer:
    if size not in _FENCES:
        _FENCES[size] = FencedBuffer(size)
    return _FENCES[size]


@st.composite
def buffers(draw):
    size = draw(st.sampled_from([64, 128, 256]))
    data = bytearray(draw(st.binary(min_size=size, max_size=size)))
    mode = draw(st.sampled_from(["raw", "valid_top", "valid_top_and_back"]))
    if mode != "raw":
        top = draw(st.integers(3, size // 8)) * 8
        data[0:8] = struct.pack("<Q", top)
        if mode == "valid_top_and_back":
            p = draw(st.integers(1, (top - 16) // 8)) * 8
            data[top - 8:top] = struct.pack("<Q", p)
            if draw(st.booleans()):  # make the length agree too
                data[p:p + 4] = struct.pack("<I", max(0, top - p - 16 - draw(st.integers(0, 7))))
                data[p + 4] = draw(st.sampled_from([CALL, RETURN, ERROR, LOG, PRINT, FUNCTION_TABLE]))
    return size, bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(buffers(), st.integers(0, 9))
def test_arbitrary_bytes_only_raise_guest_errors(sized, tag):
    size, data = sized
    fb = fenced(size)
    stack = RecordStack(fb, fb.address, size, "output")
    for pop in (lambda: stack.pop_result(tag), stack.pop_error, stack.pop_call, stack.pop_log, stack.pop_print,
                stack.pop_function_table):
        fb.load(data)
        try:
            pop()
        except hl.GuestError:
            pass


@settings(deadline=None)
@given(st.sampled_from([RETURN, ERROR, CALL, LOG, PRINT, FUNCTION_TABLE]), st.binary(max_size=200),
       st.integers(0, 9))
def test_arbitrary_payloads_only_raise_guest_errors(kind, payload, tag):
    size = 256
    fb = fenced(size)
    stack = RecordStack(fb, fb.address, size, "output")
    rec = record(kind, payload, 8)
    if 8 + len(rec) > size:
        return
    data = struct.pack("<Q", 8 + len(rec)) + rec
    data += bytes(size - len(data))
    for pop in (lambda: stack.pop_result(tag), stack.pop_error, stack.pop_call, stack.pop_log, stack.pop_print,
                stack.pop_function_table):
        fb.load(data)
        try:
            pop()
        except hl.GuestError:
            pass


np = pytest.importorskip("numpy")


@pytest.mark.kvm
def test_numpy_scalars_are_accepted_where_ints_and_floats_are(shared_sandbox):
    sb = shared_sandbox
    assert sb.call("Add", np.int32(40), np.int64(2)) == 42
    assert sb.call("EchoF64", np.float64(3.25)) == 3.25
    assert sb.call("EchoF64", np.float32(1.5)) == 1.5
    assert sb.call("EchoF32", np.float32(2.5)) == 2.5
    assert sb.call("EchoF64", np.int16(7)) == 7.0
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch):
        sb.call("Add", np.bool_(True), 1)
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch):
        sb.call("Add", np.float64(1.0), 1)


@pytest.mark.kvm
@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_f32_out_of_range_is_refused_not_inf(shared_sandbox, value):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match="out of range for f32"):
        shared_sandbox.call("EchoF32", value)


@pytest.mark.kvm
def test_f32_keeps_inf_nan_and_the_largest_finite(shared_sandbox):
    import math
    assert shared_sandbox.call("EchoF32", math.inf) == math.inf
    assert math.isnan(shared_sandbox.call("EchoF32", math.nan))
    big = float(np.finfo(np.float32).max)
    assert shared_sandbox.call("EchoF32", big) == big


@pytest.mark.kvm
def test_an_argument_too_big_for_the_input_buffer_is_a_hyperlight_error(shared_sandbox):
    with pytest.raises(hl.ArgumentTooLarge, match="input_data_size") as ei:
        shared_sandbox.call("Echo", "x" * 100_000)
    assert isinstance(ei.value, hl.HyperlightError) and isinstance(ei.value, ValueError)
    assert shared_sandbox.call("Echo", "fine") == "fine"
