"""Hyperlight's C guest API (api="hyperlight", hyperlight_guest.h): a guest written
against it (guests/hyperlightguest.c) and the behaviours Hyperlight's host tests check."""
from __future__ import annotations

import io
import logging
import math

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm


class HostRaised(Exception):
    pass


def _raise() -> int:
    raise HostRaised("the host function failed on purpose")


HOST_FUNCTIONS = {
    "HostAddInt": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32),
    "HostUInt": (lambda a: a + 1, (hl.u32,), hl.u32),
    "HostLong": (lambda a: a * 2, (hl.i64,), hl.i64),
    "HostULong": (lambda a: a // 2, (hl.u64,), hl.u64),
    "HostAddFloat": (lambda a, b: a + b, (hl.f32, hl.f32), hl.f32),
    "HostAddDouble": (lambda a, b: a + b, (hl.f64, hl.f64), hl.f64),
    "HostBool": (lambda a, b: a + b > 10, (hl.i32, hl.i32), bool),
    "HostAddStrings": (lambda s: s + ", and the host adds this", (str,), str),
    "HostVoid": (lambda s: None, (str,), None),
    "HostReverse": (lambda b: bytes(b)[::-1], (bytes,), bytes),
    "HostRaises": (_raise, (), hl.i32),
}


def _sandbox(path: str, out: io.StringIO):
    u = hl.UninitializedSandbox(path, writer=out)
    for name, (fn, params, returns) in HOST_FUNCTIONS.items():
        u.register(name, fn, params=params, returns=returns)
    return u.evolve()


@pytest.fixture(scope="module")
def guest_path(built_guest):
    return built_guest("hyperlightguest", api="hyperlight", extra_cflags=["-Werror"])


@pytest.fixture
def sb(guest_path):
    out = io.StringIO()
    with _sandbox(guest_path, out) as s:
        s.out = out
        yield s


@pytest.mark.parametrize("name, value", [
    ("EchoInt", -123), ("EchoInt", 2**31 - 1), ("EchoUInt", 2**32 - 1), ("EchoLong", -2**63),
    ("EchoULong", 2**64 - 1), ("EchoBool", True), ("EchoBool", False), ("Echo", "hello ünïcode"), ("Echo", ""),
    ("EchoDouble", 1.5), ("EchoDouble", math.inf), ("EchoDouble", -math.inf), ("EchoDouble", -0.0),
    ("EchoFloat", 0.25), ("EchoFloat", math.inf), ("EchoFloat", -math.inf),
])
def test_echo_of_every_type(sb, name, value):
    got = sb.call(name, value)
    assert got == value and type(got) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize("name", ["EchoDouble", "EchoFloat"])
def test_echo_nan(sb, name):
    assert math.isnan(sb.call(name, math.nan))


def test_functions_have_their_declared_signatures(sb):
    assert str(sb.functions["PrintElevenArgs"]) == \
        "PrintElevenArgs(str, i32, i64, str, str, bool, bool, u32, u64, i32, f32) -> i32"
    assert str(sb.functions["SetByteArrayToZero"]) == "SetByteArrayToZero(bytes) -> bytes"
    assert str(sb.functions["DoNothing"]) == "DoNothing() -> void"
    assert sb.call("DoNothing") is None


def test_byte_arrays(sb):
    assert sb.call("SetByteArrayToZero", b"\x01\x02\x03") == b"\x00\x00\x00"
    assert sb.call("SetByteArrayToZero", b"") == b""


def test_24k_in_8k_out(guest_path):
    cfg = hl.SandboxConfiguration(input_data_size="64Ki", output_data_size="64Ki")
    with hl.UninitializedSandbox(guest_path, cfg).evolve() as sb:
        data = bytes(range(256)) * 96
        assert sb.call("24K_in_8K_out", data) == data[:8 * 1024]


ARGS = ["Test", 1, 2**40, "Tested", "OK", True, False, 7, 2**50, 9, 3.25]
EXPECTED = ["Message: arg1:Test arg2:1.", "Message: arg1:Test arg2:1 arg3:1099511627776.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true arg7:false.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true arg7:false arg8:7.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true arg7:false arg8:7 "
            "arg9:1125899906842624.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true arg7:false arg8:7 "
            "arg9:1125899906842624 arg10:9.",
            "Message: arg1:Test arg2:1 arg3:1099511627776 arg4:Tested arg5:OK arg6:true arg7:false arg8:7 "
            "arg9:1125899906842624 arg10:9 arg11:3.250."]
NAMES = ["PrintTwoArgs", "PrintThreeArgs", "PrintFourArgs", "PrintFiveArgs", "PrintSixArgs", "PrintSevenArgs",
         "PrintEightArgs", "PrintNineArgs", "PrintTenArgs", "PrintElevenArgs"]


@pytest.mark.parametrize("n", range(2, 12))
def test_printing_with_2_to_11_arguments(sb, n):
    sb.out.seek(0)
    sb.out.truncate()
    assert sb.call(NAMES[n - 2], *ARGS[:n]) == len(EXPECTED[n - 2])
    assert sb.out.getvalue() == EXPECTED[n - 2]


def test_print_output(sb):
    assert sb.call("PrintOutput", "hello\n") == 6
    assert sb.out.getvalue().endswith("hello\n")


def test_abort_with_code(guest_path):
    with _sandbox(guest_path, io.StringIO()) as sb:
        with pytest.raises(hl.GuestAborted) as e:
            sb.call("GuestAbortWithCode", 0x1234)
        assert e.value.code == 0x34  # Hyperlight sends one byte


def test_abort_with_code_and_message(guest_path):
    with _sandbox(guest_path, io.StringIO()) as sb:
        with pytest.raises(hl.GuestAborted, match="goodbye") as e:
            sb.call("GuestAbortWithMessage", 75, "goodbye")
        assert e.value.code == 75


@pytest.mark.parametrize("code, exc", [(15, hl.GuestError), (4, hl.GuestFunctionNotFound),
                                       (14, hl.GuestFunctionParameterTypeMismatch), (17, hl.HostFunctionError)])
def test_set_error(sb, code, exc):
    with pytest.raises(exc, match="set by the guest"):
        sb.call("SetError", code, "set by the guest")
    assert sb.call("EchoInt", 5) == 5  # an error is not an abort


def test_stack_overflow(guest_path):
    with _sandbox(guest_path, io.StringIO()) as sb:
        with pytest.raises(hl.StackOverflow):
            sb.call("StackOverflow", 100)


@pytest.mark.parametrize("name", ["ExecuteOnStack", "ExecuteOnHeap"])
def test_execution_on_stack_and_heap_is_refused(guest_path, name):
    with _sandbox(guest_path, io.StringIO()) as sb:
        with pytest.raises(hl.MemoryAccessViolation) as e:
            sb.call(name)
        assert e.value.access == "execute"


def test_log(sb, caplog):
    with caplog.at_level(logging.DEBUG, logger="hlsandbox.guest"):
        sb.call("LogMessage", "a warning", 2)  # hl_Level_Warn
    rec = [r for r in caplog.records if r.getMessage().endswith("a warning")]
    assert rec and rec[0].levelno == logging.WARNING


def test_host_functions_of_every_type(sb):
    assert sb.call("HostAddInt", 40, 2) == 42
    assert sb.call("HostUInt", 2**32 - 2) == 2**32 - 1
    assert sb.call("HostLong", -2**40) == -2**41
    assert sb.call("HostULong", 2**64 - 2) == 2**63 - 1
    assert sb.call("GuestRetrievesFloatValue", 1.25, 2.5) == 3.75
    assert sb.call("GuestRetrievesDoubleValue", 1e300, 1e300) == 2e300
    assert sb.call("GuestRetrievesBoolValue", 5, 6) is True
    assert sb.call("GuestRetrievesBoolValue", 1, 2) is False
    assert sb.call("GuestRetrievesStringValue", "hi") == "Guest says hi, and the host adds this"
    assert sb.call("HostVoid", "x") == 0
    assert sb.call("GuestRetrievesBytes", b"\x01\x02\x03") == b"\x03\x02\x01"


def test_host_function_that_raises(guest_path):
    with _sandbox(guest_path, io.StringIO()) as sb:
        with pytest.raises(hl.GuestAborted, match="failed on purpose"):
            sb.call("CallRaisingHost")


def test_fallback_dispatcher(sb):
    assert "ThisIsNotARealFunctionButTheNameIsImportant" not in sb.functions
    assert sb.call("ThisIsNotARealFunctionButTheNameIsImportant") == 99
    assert sb.call("SumOfInts", 1, 2, 3, 2**30) == 6 + 2**30
    with pytest.raises(hl.GuestFunctionNotFound, match="NoSuchFunction"):
        sb.call("NoSuchFunction", 1)
    assert sb.call("EchoInt", 3) == 3


def _check_fallback(sb):
    assert "ThisIsNotARealFunctionButTheNameIsImportant" not in sb.functions
    assert sb.call("ThisIsNotARealFunctionButTheNameIsImportant") == 99
    assert sb.call("SumOfInts", 1, 2, 3) == 6
    assert sb.call("EchoInt", 3) == 3


def test_fallback_survives_a_snapshot_file(tmp_path, sb):
    """The fallback's empty-named table entry is saved, loaded and still lets calls through."""
    path = tmp_path / "fallback.hlsnap"
    snap = sb.snapshot()
    snap.save(path)
    loaded = hl.Snapshot.load(path)
    assert [(g.name, g.params, g.returns) for g in loaded.guest_functions] == \
        [(g.name, g.params, g.returns) for g in snap.guest_functions]
    assert "" in [g.name for g in loaded.guest_functions]
    with hl.MultiUseSandbox.from_snapshot(loaded, host_functions=HOST_FUNCTIONS) as sb2:
        _check_fallback(sb2)
        assert sb2.functions == sb.functions
        sb2.restore(loaded)  # the same guest functions: accepted
        _check_fallback(sb2)
    with _sandbox(str(path), io.StringIO()) as sb3:  # UninitializedSandbox of a snapshot file
        _check_fallback(sb3)
    sb.restore(loaded)  # the file's table matches the sandbox it came from
    _check_fallback(sb)


def test_without_a_fallback_unknown_names_are_refused_by_the_host(built_guest):
    with hl.UninitializedSandbox(built_guest("libcguest")).evolve() as sb:
        with pytest.raises(hl.GuestFunctionNotFound):
            sb.call("ThisIsNotARealFunctionButTheNameIsImportant")
