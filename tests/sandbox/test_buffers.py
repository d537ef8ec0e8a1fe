"""bytes arguments from any buffer (numpy arrays, memoryview, bytearray, array.array),
and bytes results decoded into a caller's buffer with call(out=...)."""
from __future__ import annotations

import array

import numpy as np
import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))
MiB = 1 << 20


@pytest.fixture(scope="module")
def sb():
    config = hl.SandboxConfiguration(input_data_size="4Mi", output_data_size="4Mi")
    with hl.UninitializedSandbox(SIMPLE, config).evolve() as s:
        yield s


@pytest.mark.parametrize("make", [
    lambda b: b, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8),
    lambda b: np.frombuffer(b, dtype=np.float64).reshape(-1, 4), lambda b: array.array("I", b),
    lambda b: memoryview(b).cast("Q"),
], ids=["bytes", "bytearray", "memoryview", "numpy-u8", "numpy-f64-2d", "array", "memoryview-Q"])
def test_any_buffer_is_a_bytes_argument(sb, make):
    data = bytes(range(256)) * 128
    assert sb.call("EchoBytes", make(data)) == data


def test_a_non_contiguous_array_is_passed_by_its_elements(sb):
    a = np.arange(1000, dtype=np.int32)
    assert sb.call("EchoBytes", a[::3]) == a[::3].tobytes()
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    assert sb.call("EchoBytes", fortran) == fortran.tobytes()  # C order, as tobytes() and memoryview


def test_non_buffers_are_refused(sb):
    for bad in ("text", 3, [1, 2], None):
        with pytest.raises(hl.GuestFunctionParameterTypeMismatch):
            sb.call("EchoBytes", bad)
    assert not sb.poisoned


def test_out_receives_a_bytes_result(sb):
    a = np.random.default_rng(1).random(MiB // 8)
    out = np.zeros_like(a)
    assert sb.call("EchoBytes", a, out=out) == MiB
    assert np.array_equal(out, a)
    buf = bytearray(16)
    assert sb.call("EchoBytes", b"hello", out=buf) == 5
    assert buf == b"hello" + bytes(11)
    view = memoryview(bytearray(8))
    assert sb.call("EchoBytes", b"", out=view) == 0


def test_out_that_cannot_hold_the_result(sb):
    with pytest.raises(ValueError, match="10 bytes"):
        sb.call("EchoBytes", b"x" * 10, out=bytearray(3))
    assert not sb.poisoned  # the guest finished its call; only the copy was refused
    assert sb.call("EchoBytes", b"ok") == b"ok"


@pytest.mark.parametrize("out", [b"read-only", np.zeros(8)[::2], "text", 5])
def test_out_must_be_a_writable_contiguous_buffer(sb, out):
    with pytest.raises(TypeError):
        sb.call("EchoBytes", b"x", out=out)


def test_out_needs_a_bytes_result(sb):
    with pytest.raises(TypeError, match="returns str"):
        sb.call("Echo", "x", out=bytearray(4))


def test_out_with_restore_and_a_time_limit(sb):
    sb.call("SetStatic", 5)
    out = bytearray(3)
    assert sb.call("EchoBytes", b"abc", out=out, restore=True, timeout=10) == 3 and out == b"abc"
    assert sb.call("GetStatic") == 0


def test_a_raw_host_function_may_return_any_buffer():
    results = {1: np.arange(4, dtype=np.uint16), 2: np.arange(8, dtype=np.uint8)[::2], 3: bytearray(b"ba")}
    u = hl.UninitializedSandbox(SIMPLE)
    for fn_id, value in results.items():
        u.register_raw(fn_id, lambda request, value=value: value)
    with u.evolve() as s:
        for fn_id, value in results.items():
            assert s.call("CallRawHost", fn_id, b"") == bytes(memoryview(value).tobytes())


def test_buffers_and_out_in_hot_mode():
    with hl.UninitializedSandbox(SIMPLE).evolve() as s, s.hot(spin=0.001):
        a = np.arange(64, dtype=np.int64)
        out = np.zeros_like(a)
        assert s.call("EchoBytes", a, out=out) == a.nbytes and np.array_equal(out, a)
        assert s.call("EchoBytes", a[::2], timeout=10) == a[::2].tobytes()
