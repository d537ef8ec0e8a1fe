"""Fuzzing the record decoders and buffer pops/pushes of hlsandbox/func/wire.pyx with Hypothesis.

A RecordStack sits over guest memory (a SharedMemory) that the guest may have left in any
state: stack pointer, back-pointers, record lengths, kinds, value tags, string lengths and
payload bytes are all drawn here, from raw bytes up to well-framed stacks with one field
mutated. The properties:

- no exception escapes but GuestError subclasses (GuestProtocolError for a broken
  record; GuestError, GuestFunctionNotFound... for a well-formed ERROR record), plus the
  documented host-side misuse errors of the push functions: ValueError (a CALL record
  that does not fit the buffer) and GuestFunctionParameterTypeMismatch (also a
  TypeError) for a Python value of the wrong type;
- nothing is read or written outside the buffer: the buffer ends at an inaccessible
  page (a read past it would crash the test process) and the bytes before it are a
  sentinel that must survive;
- a pop changes nothing but the buffer's stack pointer, which stays 8-aligned inside the
  buffer; a successful pop returns values of the decoded types;
- what the host pushes, the host's decoder reads back unchanged.

By default each property runs a quick 200 examples. The long run (at least 10,000
examples each, a few minutes) runs only with HLSANDBOX_LONG_FUZZ=1:

    HLSANDBOX_LONG_FUZZ=1 python3 -m pytest -q tests/func/test_wire_fuzz.py
"""
from __future__ import annotations

import ctypes
import math
import os
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hlsandbox as hl
from hlsandbox.func.wire import RecordStack
from hlsandbox.mem.shared_memory import SharedMemory

PAGE = 4096
CALL, RETURN, ERROR, LOG, PRINT, FUNCTION_TABLE, RAW_CALL, RAW_RESULT = 1, 2, 3, 4, 5, 6, 7, 8
KINDS = [CALL, RETURN, ERROR, LOG, PRINT, FUNCTION_TABLE, RAW_CALL]
VOID, I32, U32, I64, U64, F32, F64, BOOL, STR, BYTES = range(10)
SIZES = [64, 72, 128, 256, 1024]
MAX_SIZE = max(SIZES)
SENTINEL = bytes([0xA5, 0x5A]) * 32  # 64 bytes right before the buffer

LONG = os.environ.get("HLSANDBOX_LONG_FUZZ") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long fuzzing run: set HLSANDBOX_LONG_FUZZ=1")
QUICK = settings(max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG_RUN = settings(max_examples=10_000, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- guest memory with a fence ------------------------------------------------------------------

class FencedMemory:
    """A SharedMemory whose third page is PROT_NONE: a buffer of `size` bytes is placed to end
    exactly at it, with SENTINEL bytes just before the buffer."""

    def __init__(self) -> None:
        self.shm = SharedMemory(3 * PAGE)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(self.shm.address + 2 * PAGE, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        self.stacks: dict[tuple[int, str], RecordStack] = {}

    def load(self, size: int, data: bytes, name: str = "output") -> RecordStack:
        assert len(data) == size and size % 8 == 0
        start = 2 * PAGE - size
        self.shm.write(start - len(SENTINEL), SENTINEL + data)
        key = (size, name)
        if key not in self.stacks:
            self.stacks[key] = RecordStack(self.shm, self.shm.address + start, size, name)
        return self.stacks[key]

    def buffer(self, size: int) -> bytes:
        return self.shm.read(2 * PAGE - size, size)

    def sentinel_intact(self, size: int) -> bool:
        return self.shm.read(2 * PAGE - size - len(SENTINEL), len(SENTINEL)) == SENTINEL


_MEM: FencedMemory | None = None


def mem() -> FencedMemory:
    global _MEM
    if _MEM is None:
        _MEM = FencedMemory()
    return _MEM


# -- strategies ---------------------------------------------------------------------------------

def align8(n: int) -> int:
    return (n + 7) & ~7


u8 = st.integers(0, 255)
u16 = st.integers(0, 2**16 - 1)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7, 8, 255, 2**31, 2**32 - 1]))
u64 = st.one_of(st.integers(0, 2**64 - 1),
                st.sampled_from([0, 1, 7, 8, 9, 16, 24, 2**31, 2**32, 2**63, 2**64 - 8, 2**64 - 1]))
text_bytes = st.one_of(*[st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass"))] * 3,
                       st.binary(max_size=20))  # often invalid UTF-8


@st.composite
def strings(draw, len_bytes: int = 4) -> bytes:
    """A name (len_bytes 2) or str: length, bytes, NUL; sometimes with a lying length or no NUL."""
    b = draw(text_bytes)
    n = len(b)
    if draw(st.integers(0, 9)) == 0:
        n = draw(u16 if len_bytes == 2 else u32)
    nul = b"\0" if draw(st.integers(0, 9)) else draw(st.binary(min_size=0, max_size=1))
    return n.to_bytes(len_bytes, "little") + b + nul


@st.composite
def values(draw) -> bytes:
    """A tagged value: usually well formed, sometimes with an unknown tag or short data."""
    tag = draw(st.one_of(*[st.integers(0, 9)] * 4, st.integers(0, 255)))
    if tag in (I32, U32, F32):
        data = draw(st.binary(min_size=4, max_size=4))
    elif tag in (I64, U64, F64):
        data = draw(st.binary(min_size=8, max_size=8))
    elif tag == BOOL:
        data = bytes([draw(st.sampled_from([0, 1, 2, 255]))])
    elif tag == STR:
        data = draw(strings())
    elif tag == BYTES:
        b = draw(st.binary(max_size=20))
        n = len(b) if draw(st.integers(0, 3)) else draw(u32)
        data = struct.pack("<I", n) + b
    else:
        data = b""
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return bytes([tag]) + data


@st.composite
def payloads(draw, kind: int) -> bytes:
    """A payload that mostly follows the grammar of `kind` (docs/abi.md, "Record kinds")."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.binary(max_size=64))
    if kind == CALL:
        vals = draw(st.lists(values(), max_size=4))
        argc = len(vals) if draw(st.integers(0, 3)) else draw(u8)
        p = draw(strings(2)) + bytes([argc]) + b"".join(vals)
    elif kind == RETURN:
        p = draw(values())
    elif kind == ERROR:
        p = struct.pack("<I", draw(st.one_of(st.integers(0, 7), u32))) + draw(strings())
    elif kind == LOG:
        p = bytes([draw(st.one_of(st.integers(0, 6), u8))]) + struct.pack("<I", draw(u32))
        p += draw(strings()) + draw(strings())
    elif kind == PRINT:
        p = draw(strings())
    elif kind == RAW_CALL:
        p = struct.pack("<I", draw(st.one_of(st.integers(0, 3), u32))) + draw(st.binary(max_size=40))
    elif kind == FUNCTION_TABLE:
        fns = draw(st.lists(st.tuples(strings(2), st.one_of(st.integers(0, 9), u8),
                                      st.lists(st.one_of(st.integers(1, 9), u8), max_size=4)), max_size=3))
        count = len(fns) if draw(st.integers(0, 3)) else draw(u16)
        p = struct.pack("<H", count)
        for name, ret, params in fns:
            p += name + bytes([ret, len(params)]) + bytes(params)
    else:
        p = draw(st.binary(max_size=64))
    if draw(st.integers(0, 9)) == 0:
        p += draw(st.binary(min_size=1, max_size=8))  # trailing bytes
    return p


@st.composite
def raw_buffers(draw) -> tuple[int, bytes]:
    size = draw(st.sampled_from(SIZES))
    data = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if draw(st.booleans()):
        data[0:8] = struct.pack("<Q", draw(u64))
    return size, bytes(data)


@st.composite
def framed_buffers(draw) -> tuple[int, bytes]:
    """A stack of well-framed records with grammar-following payloads, then zero or more
    mutations of the stack pointer, a back-pointer, a length, a kind or a byte."""
    size = draw(st.sampled_from(SIZES))
    data = bytearray(size)
    top = 8
    starts = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(KINDS))
        payload = draw(payloads(kind))
        end = top + 8 + align8(len(payload)) + 8
        if end > size:
            break
        data[top:top + 8] = struct.pack("<IB3x", len(payload), kind)
        data[top + 8:top + 8 + len(payload)] = payload
        data[end - 8:end] = struct.pack("<Q", top)
        starts.append(top)
        top = end
    data[0:8] = struct.pack("<Q", top)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        what = draw(st.sampled_from(["top", "back", "length", "kind", "byte"]))
        if what == "top":
            data[0:8] = struct.pack("<Q", draw(st.one_of(u64, st.integers(0, size // 8).map(lambda n: n * 8))))
        elif what == "back" and top >= 16:
            data[top - 8:top] = struct.pack("<Q", draw(st.one_of(u64, st.integers(0, size // 8).map(
                lambda n: n * 8))))
        elif what == "length" and starts:
            at = draw(st.sampled_from(starts))
            data[at:at + 4] = struct.pack("<I", draw(u32))
        elif what == "kind" and starts:
            data[draw(st.sampled_from(starts)) + 4] = draw(u8)
        else:
            data[draw(st.integers(0, size - 1))] = draw(u8)
    return size, bytes(data)


any_buffer = st.one_of(raw_buffers(), framed_buffers())


# -- properties ---------------------------------------------------------------------------------

I_RANGES = {I32: (-2**31, 2**31), U32: (0, 2**32), I64: (-2**63, 2**63), U64: (0, 2**64)}


def check_value(tag: int, v) -> None:
    if tag == VOID:
        assert v is None
    elif tag in I_RANGES:
        lo, hi = I_RANGES[tag]
        assert type(v) is int and lo <= v < hi
    elif tag in (F32, F64):
        assert type(v) is float
    elif tag == BOOL:
        assert type(v) is bool
    elif tag == STR:
        assert type(v) is str
    elif tag == BYTES:
        assert type(v) is bytes
    else:
        raise AssertionError(f"decoded a value of unknown tag {tag}")


def check_pop_result(stack: RecordStack, tag: int) -> None:
    check_value(tag, stack.pop_result(tag))


def check_pop_error(stack: RecordStack) -> None:
    code, message = stack.pop_error()
    assert 0 <= code < 2**32 and type(message) is str


def check_pop_call(stack: RecordStack) -> None:
    name, args, tags = stack.pop_call()
    assert type(name) is str and len(args) == len(tags) <= 255
    for t, v in zip(tags, args, strict=True):
        check_value(t, v)


def check_pop_log(stack: RecordStack) -> None:
    level, line, source, message = stack.pop_log()
    assert 0 <= level <= 255 and 0 <= line < 2**32 and type(source) is str and type(message) is str


def check_pop_print(stack: RecordStack) -> None:
    assert type(stack.pop_print()) is str


def check_pop_function_table(stack: RecordStack) -> None:
    for name, params, ret in stack.pop_function_table():
        assert type(name) is str and 0 <= ret <= 9
        assert all(1 <= p <= 9 for p in params) and len(params) <= 255


def check_pop_raw_call(stack: RecordStack) -> None:
    fn_id, offset, length = stack.pop_raw_call()
    assert 0 <= fn_id < 2**32
    # The request lies inside the popped record, inside the buffer.
    assert 8 + 8 + 4 <= offset and offset + length <= stack.size - 8


def check_top_kind(stack: RecordStack) -> None:
    assert 0 <= stack.top_kind() <= 255


POPS = [("result", None), ("error", check_pop_error), ("call", check_pop_call), ("log", check_pop_log),
        ("print", check_pop_print), ("function_table", check_pop_function_table),
        ("raw_call", check_pop_raw_call), ("top_kind", check_top_kind)]


def _tag_on_top(data: bytes) -> int:
    """The first payload byte of the top record, if the framing lets us find it (so that
    pop_result is also tried with the tag the record actually carries)."""
    top = struct.unpack_from("<Q", data)[0]
    if 24 <= top <= len(data) and top % 8 == 0:
        p = struct.unpack_from("<Q", data, top - 8)[0]
        if 8 <= p <= top - 16 and p + 8 < len(data):
            return data[p + 8] % 10
    return 0


def fuzz_pops(buf: tuple[int, bytes], tag: int) -> None:
    size, data = buf
    m = mem()
    for what, check in POPS + [("result_tag_on_top", None)]:
        stack = m.load(size, data)
        try:
            if check is None:
                check_pop_result(stack, tag if what == "result" else _tag_on_top(data))
            else:
                check(stack)
            event(f"pop_{what}: decoded")  # see --hypothesis-show-statistics
        except hl.GuestError as e:  # GuestProtocolError, or what a well-formed ERROR record maps to
            event(f"pop_{what}: {type(e).__name__}")
        after = m.buffer(size)
        assert after[8:] == data[8:], f"pop_{what} wrote into the buffer"
        assert m.sentinel_intact(size), f"pop_{what} wrote before the buffer"
        new_top = struct.unpack_from("<Q", after)[0]
        if what == "top_kind":
            assert after == data, "top_kind changed the buffer"
        if new_top != struct.unpack_from("<Q", data)[0]:
            assert 8 <= new_top <= size and new_top % 8 == 0, f"pop_{what} left stack pointer {new_top:#x}"


python_values = {
    VOID: st.none(), I32: st.integers(-2**31, 2**31 - 1), U32: st.integers(0, 2**32 - 1),
    I64: st.integers(-2**63, 2**63 - 1), U64: st.integers(0, 2**64 - 1),
    F32: st.floats(width=32), F64: st.floats(), BOOL: st.booleans(),
    STR: st.text(max_size=40), BYTES: st.binary(max_size=60),
}
typed_values = st.sampled_from(sorted(python_values)).flatmap(lambda t: st.tuples(st.just(t), python_values[t]))
# Also values of the wrong Python type: the host's encoder must reject them as a mismatch.
loose_values = st.tuples(st.integers(0, 9), st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(),
                                                       st.booleans(), st.text(max_size=10), st.binary(max_size=10)))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def fuzz_pushes(buf: tuple[int, bytes], value: tuple[int, object], code: int, message: str) -> None:
    """push_return / push_error / push_call over a buffer in any state."""
    size, data = buf
    m = mem()
    tag, v = value
    for op in ("return", "error", "call", "raw_result"):
        stack = m.load(size, data, "input")
        try:
            if op == "return":
                stack.push_return(tag, v, "fuzz")
            elif op == "error":
                stack.push_error(code, message)
            elif op == "raw_result":
                stack.push_raw_result(code, message.encode("utf-8", "surrogatepass"))
            else:
                stack.push_call(b"Fn", (tag,), (v,))
        except hl.GuestError:  # a corrupt stack pointer, no room, or a value of the wrong type
            pass
        except ValueError as e:  # documented: a CALL record larger than the input buffer
            assert op == "call" and "input_data_size" in str(e)
        assert m.sentinel_intact(size), f"push_{op} wrote before the buffer"
        top = struct.unpack_from("<Q", m.buffer(size))[0]
        assert 8 <= top <= size or m.buffer(size)[:8] == data[:8], f"push_{op} left stack pointer {top:#x}"


def fuzz_round_trip(size: int, value: tuple[int, object], code: int, message: str) -> None:
    """What the host pushes, its decoder reads back unchanged."""
    m = mem()
    tag, v = value
    stack = m.load(size, struct.pack("<Q", 8) + bytes(size - 8), "input")
    fits = stack.push_return(tag, v, "fuzz")
    if fits:
        got = stack.pop_result(tag)
        if tag == F32:
            v = struct.unpack("<f", struct.pack("<f", v))[0]
        assert same(got, v)
        assert struct.unpack_from("<Q", m.buffer(size))[0] == 8
    stack = m.load(size, struct.pack("<Q", 8) + bytes(size - 8), "input")
    stack.push_error(code, message)
    try:
        stack.pop_result(tag)
    except hl.GuestError as e:
        assert e.code == code
        sent = message.encode("utf-8", "replace")
        assert sent.startswith(e.message.encode("utf-8"))  # truncated to fit, never altered
    else:
        raise AssertionError("pop_result returned a value for an ERROR record")


# -- the quick run (every `python3 -m pytest -q`) -----------------------------------------------

@QUICK
@given(any_buffer, st.integers(0, 9))
def test_pops_of_arbitrary_buffers(buf, tag):
    fuzz_pops(buf, tag)


@QUICK
@given(any_buffer, st.one_of(typed_values, loose_values), u32, st.text(max_size=300))
def test_pushes_onto_arbitrary_buffers(buf, value, code, message):
    fuzz_pushes(buf, value, code, message)


@QUICK
@given(st.sampled_from(SIZES), typed_values, st.integers(1, 2**32 - 1), st.text(max_size=300))
def test_round_trip(size, value, code, message):
    fuzz_round_trip(size, value, code, message)


# -- the long run (HLSANDBOX_LONG_FUZZ=1) -------------------------------------------------------

@pytest.mark.slow
@long_only
@LONG_RUN
@given(any_buffer, st.integers(0, 9))
def test_long_pops_of_arbitrary_buffers(buf, tag):
    fuzz_pops(buf, tag)


@pytest.mark.slow
@long_only
@LONG_RUN
@given(any_buffer, st.one_of(typed_values, loose_values), u32, st.text(max_size=300))
def test_long_pushes_onto_arbitrary_buffers(buf, value, code, message):
    fuzz_pushes(buf, value, code, message)


@pytest.mark.slow
@long_only
@LONG_RUN
@given(st.sampled_from(SIZES), typed_values, st.integers(1, 2**32 - 1), st.text(max_size=300))
def test_long_round_trip(size, value, code, message):
    fuzz_round_trip(size, value, code, message)


def test_fence_catches_reads_past_the_buffer():
    """The fence is real: the page after every buffer is inaccessible (checked in a child
    process, which the read kills)."""
    import subprocess
    import sys
    prog = (
        "import ctypes\n"
        "from hlsandbox.mem.shared_memory import SharedMemory\n"
        "shm = SharedMemory(3 * 4096)\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)\n"
        "assert libc.mprotect(shm.address + 2 * 4096, 4096, 0) == 0\n"
        "ctypes.string_at(shm.address + 2 * 4096 - 8, 16)\n"
    )
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=60)
    assert r.returncode == -11, r.stderr  # SIGSEGV: the read past the fence
