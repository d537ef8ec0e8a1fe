"""Every simpleguest function, called for real on KVM."""
from __future__ import annotations

import io
import math
import struct

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


def guest_sum(n: int) -> int:
    s = 0
    for i in range(n):
        s = (s * 6364136223846793005 + i) & (2**64 - 1)
    return s


@pytest.mark.parametrize("text", ["hi", "", "héllo wörld ✓", "x" * 10000, "a\x00b"])
def test_echo_strings(shared_sandbox, text):
    assert shared_sandbox.call("Echo", text) == text


@pytest.mark.parametrize("data", [b"", b"\x00\xff\x10", bytes(range(256)) * 40])
def test_echo_bytes(shared_sandbox, data):
    assert shared_sandbox.call("EchoBytes", data) == data


@pytest.mark.parametrize("name,values", [
    ("EchoI32", [0, 1, -1, 2**31 - 1, -2**31]),
    ("EchoU32", [0, 1, 2**32 - 1]),
    ("EchoI64", [0, -1, 2**63 - 1, -2**63]),
    ("EchoU64", [0, 2**64 - 1, 2**63]),
    ("EchoBool", [True, False]),
    ("EchoF64", [0.0, -1.5, 1e308, math.inf, -math.inf, 5e-324]),
])
def test_echo_scalars(shared_sandbox, name, values):
    for v in values:
        out = shared_sandbox.call(name, v)
        assert out == v and type(out) is type(v)


def test_echo_f32_rounds_to_single_precision(shared_sandbox):
    for v in (0.0, 1.5, -2.25, 3.4028234663852886e38, 0.1):
        expected = struct.unpack("<f", struct.pack("<f", v))[0]
        assert shared_sandbox.call("EchoF32", v) == expected


def test_echo_f64_nan(shared_sandbox):
    assert math.isnan(shared_sandbox.call("EchoF64", math.nan))


def test_add(shared_sandbox):
    assert shared_sandbox.call("Add", 40, 2) == 42
    assert shared_sandbox.call("Add", -5, 3) == -2
    assert shared_sandbox.call("Add", 2**31 - 1, 1) == -2**31  # wraps like int32


def test_call_host_add(shared_sandbox):
    assert shared_sandbox.call("CallHostAdd", 20, 22) == 42
    assert shared_sandbox.call("CallHostAdd", -7, 7) == 0


def test_static_state_persists_between_calls(shared_sandbox):
    assert shared_sandbox.call("SetStatic", 123) == 123
    assert shared_sandbox.call("GetStatic") == 123
    assert shared_sandbox.call("SetStatic", -9) == -9
    assert shared_sandbox.call("GetStatic") == -9


def test_print_output_goes_to_writer():
    buf = io.StringIO()
    with make_sandbox(writer=buf) as sb:
        assert sb.call("PrintOutput", "hello\n") == 6
        assert sb.call("PrintOutput", "wörld") == len("wörld".encode())
    assert buf.getvalue() == "hello\nwörld"


def test_print_output_to_callable_and_default_stdout(capsys):
    got = []
    with make_sandbox(writer=got.append) as sb:
        sb.call("PrintOutput", "to a callable")
    assert got == ["to a callable"]
    with make_sandbox() as sb:
        sb.call("PrintOutput", "to stdout\n")
    assert capsys.readouterr().out == "to stdout\n"


def test_sum_matches_python(shared_sandbox):
    for n in (0, 1, 2, 1000, 123457):
        assert shared_sandbox.call("Sum", n) == guest_sum(n)


def test_stack_overflow_small_depth_returns(shared_sandbox):
    assert shared_sandbox.call("StackOverflow", 10) == 10


def test_read_address_reads_guest_memory(shared_sandbox):
    peb = shared_sandbox.layout.peb_gpa
    assert shared_sandbox.call("ReadAddress", peb) == 0x0142455050424C48  # the PEB magic


def test_malloc_and_free(shared_sandbox):
    L = shared_sandbox.layout
    p = shared_sandbox.call("Malloc", 100_000)
    assert L.heap_gpa <= p < L.heap_gpa + L.heap_size
    q = shared_sandbox.call("Malloc", 10)
    assert q != p
    shared_sandbox.call("Free", p)
    shared_sandbox.call("Free", q)
    assert shared_sandbox.call("Malloc", 10 * L.heap_size) == 0  # too big: NULL, not a crash


def test_functions_lists_signatures(shared_sandbox):
    f = shared_sandbox.functions
    assert f["Echo"] == hl.Signature("Echo", (hl.ValueType.STR,), hl.ValueType.STR)
    assert f["Add"].params == (hl.i32, hl.i32) and f["Add"].returns == hl.i32
    assert f["Spin"].params == () and f["Spin"].returns == hl.ValueType.VOID
    assert str(f["CallHostAdd"]) == "CallHostAdd(i32, i32) -> i32"
    expected = {"Echo", "EchoBytes", "EchoI32", "EchoU32", "EchoI64", "EchoU64", "EchoF32", "EchoF64",
                "EchoBool", "Add", "PrintOutput", "CallHostAdd", "SetStatic", "GetStatic", "LogMessage",
                "Abort", "Spin", "StackOverflow", "ReadAddress", "WriteToCode", "DivideByZero", "Sum"}
    assert expected <= set(f)
    with pytest.raises(TypeError):
        f["Echo"] = None  # read-only


def test_many_calls_stay_consistent(shared_sandbox):
    for i in range(2000):
        assert shared_sandbox.call("Add", i, 1) == i + 1


def test_sandboxes_are_isolated():
    with make_sandbox() as a, make_sandbox() as b:
        a.call("SetStatic", 1)
        b.call("SetStatic", 2)
        assert a.call("GetStatic") == 1 and b.call("GetStatic") == 2


def test_larger_configuration():
    cfg = hl.SandboxConfiguration(heap_size="8Mi", stack_size="1Mi", input_data_size="256Ki",
                                  output_data_size="256Ki")
    with make_sandbox(cfg) as sb:
        big = b"\xab" * 200_000
        assert sb.call("EchoBytes", big) == big
        assert sb.call("StackOverflow", 500) == 500  # ~1 KiB a level fits in 1 MiB


def test_architecture_example():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(heap_size="8Mi",
                                                                                      input_data_size=0x4000))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        assert sb.call("Echo", "hi") == "hi"
        assert sb.call("CallHostAdd", 1, 2) == 3


def test_guest_from_bytes_and_guest_binary():
    data = open(hl.guests.path("simpleguest"), "rb").read()
    for guest in (data, hl.GuestBinary.from_bytes(data), hl.GuestBinary.from_path(hl.guests.path("simpleguest"))):
        with hl.UninitializedSandbox(guest).evolve() as sb:
            assert sb.call("Add", 1, 2) == 3


def test_sandboxes_follow_the_call_mode(sandbox, call_mode):
    """The conftest runs this module cold and hot: check that it does."""
    assert sandbox.is_hot == (call_mode == "hot")
