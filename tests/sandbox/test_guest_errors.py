"""Error paths with real KVM: bad calls, host-function errors, aborts, faults, poisoning."""
from __future__ import annotations

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


def test_unknown_function(shared_sandbox):
    with pytest.raises(hl.GuestFunctionNotFound, match="Nope"):
        shared_sandbox.call("Nope")
    assert not shared_sandbox.poisoned


@pytest.mark.parametrize("name,args,match", [
    ("Add", (1,), "takes 2 arguments, got 1"),
    ("Add", (1, 2, 3), "takes 2 arguments, got 3"),
    ("Add", (1, "2"), "argument 2: expected i32, got str"),
    ("Add", (2**31, 0), "out of range for i32"),
    ("EchoU32", (-1,), "out of range for u32"),
    ("EchoU64", (2**64,), "out of range for u64"),
    ("EchoI32", (True,), "expected i32, got bool"),
    ("EchoBool", (1,), "expected bool, got int"),
    ("Echo", (b"x",), "expected str, got bytes"),
    ("EchoBytes", ("x",), "expected bytes, got str"),
    ("EchoF64", ("1.0",), "expected f64, got str"),
])
def test_parameter_type_mismatch(shared_sandbox, name, args, match):
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch, match=match):
        shared_sandbox.call(name, *args)
    assert not shared_sandbox.poisoned
    assert shared_sandbox.call("Add", 1, 1) == 2  # nothing reached the guest


def test_int_accepted_for_float(shared_sandbox):
    assert shared_sandbox.call("EchoF64", 3) == 3.0


def test_arguments_larger_than_input_buffer(shared_sandbox):
    with pytest.raises(ValueError, match="input_data_size"):
        shared_sandbox.call("EchoBytes", b"x" * (shared_sandbox.layout.input_size + 1))
    assert shared_sandbox.call("Add", 1, 1) == 2


def test_result_larger_than_output_buffer():
    cfg = hl.SandboxConfiguration(input_data_size="64Ki", output_data_size="4Ki")
    with make_sandbox(cfg) as sb:
        with pytest.raises(hl.GuestError, match="too large for output buffer"):
            sb.call("EchoBytes", b"y" * 8000)
        assert not sb.poisoned
        assert sb.call("Echo", "still fine") == "still fine"


def test_host_function_exception_reaches_caller():
    def boom(a: hl.i32, b: hl.i32) -> hl.i32:
        raise RuntimeError("host says no")

    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", boom)
    with u.evolve() as sb:
        with pytest.raises(hl.HostFunctionError, match="host says no") as ei:
            sb.call("CallHostAdd", 1, 2)
        assert isinstance(ei.value.__cause__, RuntimeError)
        assert not sb.poisoned
        assert sb.call("Add", 2, 2) == 4


def test_host_function_missing():
    with hl.UninitializedSandbox(hl.guests.path("simpleguest")).evolve() as sb:
        with pytest.raises(hl.HostFunctionNotFound, match="HostAdd.*not registered"):
            sb.call("CallHostAdd", 1, 2)
        assert not sb.poisoned


def test_host_function_with_wrong_signature():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i64, hl.i64), returns=hl.i64)
    with u.evolve() as sb:
        with pytest.raises(hl.HostFunctionNotFound, match=r"HostAdd\(i64, i64\) -> i64 called with \(i32, i32\)"):
            sb.call("CallHostAdd", 1, 2)


def test_host_function_returning_wrong_type():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: "three", params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        with pytest.raises(hl.HostFunctionError, match="expected i32, got str"):
            sb.call("CallHostAdd", 1, 2)


def test_host_function_result_out_of_range():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        with pytest.raises(hl.HostFunctionError, match="out of range for i32"):
            sb.call("CallHostAdd", 2**31 - 1, 1)


def test_abort_raises_and_poisons(sandbox):
    with pytest.raises(hl.GuestAborted, match="code 77: it broke") as ei:
        sandbox.call("Abort", 77, "it broke")
    assert ei.value.code == 77 and ei.value.message == "it broke"
    assert sandbox.poisoned
    with pytest.raises(hl.PoisonedSandbox):
        sandbox.call("Echo", "x")


def test_divide_by_zero(sandbox):
    assert sandbox.call("DivideByZero", 5) == 20
    with pytest.raises(hl.GuestFault, match="#DE divide error") as ei:
        sandbox.call("DivideByZero", 0)
    assert ei.value.vector == 0 and ei.value.rip >= sandbox.layout.code_gpa
    assert sandbox.poisoned


def test_stack_overflow(sandbox):
    with pytest.raises(hl.StackOverflow, match="stack overflow") as ei:
        sandbox.call("StackOverflow", 1_000_000)
    g = sandbox.layout.guard_gpa
    assert g <= ei.value.address < g + 4096
    assert sandbox.poisoned


def test_read_null(sandbox):
    with pytest.raises(hl.MemoryAccessViolation, match="read of 0x0 .not mapped") as ei:
        sandbox.call("ReadAddress", 0)
    assert ei.value.address == 0 and ei.value.access == "read"


@pytest.mark.parametrize("where", ["page_tables", "system", "guard", "beyond"])
def test_read_protected_memory(sandbox, where):
    L = sandbox.layout
    addr = {"page_tables": L.pt_gpa, "system": L.system_gpa + 8, "guard": L.guard_gpa,
            "beyond": L.total_size + 0x1000}[where]
    with pytest.raises(hl.MemoryAccessViolation) as ei:
        sandbox.call("ReadAddress", addr)
    assert not isinstance(ei.value, hl.StackOverflow)  # a stray pointer, not an overflow
    assert ei.value.address == addr and ei.value.access == "read"


def test_write_to_code(sandbox):
    with pytest.raises(hl.MemoryAccessViolation, match="write of .* .protection violation.") as ei:
        sandbox.call("WriteToCode")
    assert ei.value.access == "write"
    assert sandbox.layout.code_gpa <= ei.value.address < sandbox.layout.snapshot_size


def test_execute_data_is_refused(sandbox):
    heap = sandbox.layout.heap_gpa
    with pytest.raises(hl.MemoryAccessViolation, match="execute of") as ei:
        sandbox.call("ExecuteAddress", heap)
    assert ei.value.address == heap and ei.value.access == "execute"


def test_non_canonical_address_is_a_general_protection_fault(sandbox):
    with pytest.raises(hl.GuestFault, match="#GP general protection") as ei:
        sandbox.call("ReadAddress", 0x8000_0000_0000_0000)
    assert ei.value.vector == 13


def test_poisoned_sandbox_refuses_every_call(sandbox):
    with pytest.raises(hl.GuestFault):
        sandbox.call("DivideByZero", 0)
    for _ in range(3):
        with pytest.raises(hl.PoisonedSandbox):
            sandbox.call("Add", 1, 2)


def test_closed_sandbox_refuses_calls():
    sb = make_sandbox()
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(hl.HyperlightError, match="closed"):
        sb.call("Add", 1, 2)


def test_error_hierarchy():
    for cls in (hl.GuestAborted, hl.GuestError, hl.GuestFunctionNotFound, hl.GuestFunctionParameterTypeMismatch,
                hl.HostFunctionNotFound, hl.HostFunctionError, hl.MemoryAccessViolation, hl.StackOverflow,
                hl.ExecutionCanceled, hl.ExecutionTimeout, hl.PoisonedSandbox, hl.InvalidGuestBinary,
                hl.SnapshotMismatch, hl.KvmUnavailable, hl.GuestFault, hl.GuestProtocolError):
        assert issubclass(cls, hl.HyperlightError)
    assert issubclass(hl.ExecutionTimeout, hl.ExecutionCanceled)


def test_multi_use_sandbox_not_constructible_directly():
    with pytest.raises(TypeError, match="evolve"):
        hl.MultiUseSandbox()


def test_evolve_only_once():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    with u.evolve():
        with pytest.raises(RuntimeError, match="already evolved"):
            u.evolve()
        with pytest.raises(RuntimeError, match="after evolve"):
            u.register("X", lambda: None, params=(), returns=None)
