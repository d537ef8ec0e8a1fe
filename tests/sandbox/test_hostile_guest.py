"""A guest that breaks the ABI on purpose (csrc/guests/amd64/hostileguest.c).

Every hostile call must raise a precise exception, poison the sandbox when the
call did not end cleanly (a result the host rejected, an abort, a fault), and
leave the host healthy: the fixture's teardown builds a brand-new sandbox and
calls it after every test."""
from __future__ import annotations

import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.layout import SandboxMemoryLayout
from hlsandbox.mem.shared_memory import SharedMemory
from hlsandbox.mem.system_tables import DOUBLE_FAULT
from hlsandbox.sandbox.faults import FRAME, fault_from_frame

HOSTILE = hl.GuestBinary.from_path(hl.guests.path("hostileguest"))
OUTPUT_SIZE = 64 << 10
U64 = 2**64


pytestmark = pytest.mark.kvm  # all but the last few tests, which read synthetic fault frames


def make_hostile(host_add=None, writer=None, **config) -> hl.MultiUseSandbox:
    cfg = hl.SandboxConfiguration(output_data_size=OUTPUT_SIZE, input_data_size=OUTPUT_SIZE, **config)
    u = hl.UninitializedSandbox(HOSTILE, cfg, writer=writer)
    u.register("HostAdd", host_add or (lambda a, b: a + b), params=(hl.i32, hl.i32), returns=hl.i32)
    return u.evolve()


@pytest.fixture
def hostile():
    sb = make_hostile()
    yield sb
    sb.close()
    # Whatever the guest did, the host process is fine: a new sandbox works.
    with make_hostile() as fresh:
        assert fresh.call("Echo", "still alive") == "still alive"
        assert fresh.call("HostAddLoop", 3) == 6


def assert_poisoned(sb: hl.MultiUseSandbox) -> None:
    """The call did not end cleanly: the sandbox refuses calls until it is restored, and
    restoring it undoes whatever the guest broke (buffers, stack pointer, registers)."""
    assert sb.poisoned
    with pytest.raises(hl.PoisonedSandbox):
        sb.call("Echo", "x")
    sb.restore()
    assert not sb.poisoned
    assert sb.call("Echo", "restored") == "restored"
    assert sb.call("HostAddLoop", 4) == 10


def assert_healthy(sb: hl.MultiUseSandbox) -> None:
    assert not sb.poisoned
    assert sb.call("Echo", "fine") == "fine"


def protocol_error(sb: hl.MultiUseSandbox, name: str, *args, match: str) -> hl.GuestProtocolError:
    with pytest.raises(hl.GuestProtocolError, match=match) as ei:
        sb.call(name, *args)
    assert isinstance(ei.value, hl.GuestError)
    assert_poisoned(sb)
    return ei.value



# -- the output buffer's stack pointer, back-pointer, record length and kind -------------------

@pytest.mark.parametrize("top,match", [
    (0, r"output buffer: stack pointer 0x0 is outside \[8, 0x10000\]"),
    (4, r"stack pointer 0x4 is outside"),
    (9, r"stack pointer 0x9 is outside .* or not 8-aligned"),
    (OUTPUT_SIZE + 8, r"stack pointer 0x10008 is outside"),
    (U64 - 8, r"stack pointer 0xfffffffffffffff8 is outside"),
    (8, r"output buffer: empty, expected a result record"),
    (16, r"output buffer: empty, expected a result record"),
])
def test_corrupt_stack_pointer(hostile, top, match):
    protocol_error(hostile, "CorruptTop", top, match=match)


@pytest.mark.parametrize("back,match", [
    (0, r"record back-pointer 0x0 is out of range \(stack pointer 0x20\)"),
    (3, r"record back-pointer 0x3 is out of range"),
    (24, r"record back-pointer 0x18 is out of range"),
    (2**63, r"record back-pointer 0x8000000000000000 is out of range"),
    (U64 - 1, r"record back-pointer 0xffffffffffffffff is out of range"),
    (16, r"record length \d+ at 0x10 does not match the stack pointer 0x20"),
])
def test_corrupt_back_pointer(hostile, back, match):
    protocol_error(hostile, "CorruptBackPointer", back, match=match)


@pytest.mark.parametrize("length", [0, 9, 13, 1000, 2**31, 2**32 - 1])
def test_corrupt_record_length(hostile, length):
    protocol_error(hostile, "CorruptLength", length,
                   match=rf"record length {length} at 0x8 does not match the stack pointer 0x20")


def test_record_length_shorter_than_its_payload(hostile):
    # 1 pads to the same 8 bytes as the real 5, so the framing holds and the value is cut.
    protocol_error(hostile, "CorruptLength", 1,
                   match=r"result record: truncated record \(needs 4 bytes at payload offset 1, payload has 1\)")


@pytest.mark.parametrize("kind,match", [
    (0, r"expected a result record, found kind 0"),
    (1, r"expected a result record, found kind call"),
    (4, r"expected a result record, found kind log"),
    (99, r"expected a result record, found kind 99"),
    (3, r"error record: truncated record"),  # an ERROR record whose payload is an i32 value
])
def test_corrupt_record_kind(hostile, kind, match):
    protocol_error(hostile, "CorruptKind", kind, match=match)


def test_hand_written_records_are_well_formed(hostile):
    """The control for the tests above: with the right values the hand-written record is
    accepted, which shows each failure is caused by the one field corrupted."""
    assert hostile.call("CorruptLength", 5) == 7
    assert not hostile.poisoned
    # The guest halted inside its hostile function; the next call resumes it there and it
    # reports that it cannot serve another call.
    with pytest.raises(hl.GuestAborted, match="resumed") as ei:
        hostile.call("Echo", "x")
    assert ei.value.code == 99
    assert_poisoned(hostile)


# -- lengths past the end, invalid UTF-8, wrong types -------------------------------------------

@pytest.mark.parametrize("claimed", [4, 100, OUTPUT_SIZE, 2**32 - 1])
def test_string_length_past_the_record(hostile, claimed):
    protocol_error(hostile, "ReturnStrLength", claimed,
                   match=rf"result record: truncated record \(needs {claimed + 1} bytes at payload offset 5, "
                         r"payload has 9\)")


@pytest.mark.parametrize("claimed", [4, 100, OUTPUT_SIZE, 2**32 - 1])
def test_bytes_length_past_the_record(hostile, claimed):
    protocol_error(hostile, "ReturnBytesLength", claimed,
                   match=rf"result record: truncated record \(needs {claimed} bytes at payload offset 5, "
                         r"payload has 8\)")


def test_string_length_past_the_buffer_end(hostile):
    protocol_error(hostile, "ReturnStrToBufferEnd",
                   match=r"result record: truncated record \(needs 4294967281 bytes .* payload has 65512\)")


@pytest.mark.parametrize("name,expected", [("ReturnStrLength", "abc"), ("ReturnBytesLength", b"xyz")])
def test_exact_lengths_are_accepted(name, expected):
    with make_hostile() as sb:
        assert sb.call(name, 3) == expected


def test_invalid_utf8_result(hostile):
    protocol_error(hostile, "ReturnInvalidUtf8",
                   match=r"result record: string value is not valid UTF-8 \(invalid continuation byte at byte 3\)")


def test_invalid_utf8_error_message(hostile):
    protocol_error(hostile, "ErrorInvalidUtf8", match=r"error record: message is not valid UTF-8")


@pytest.mark.parametrize("variant,match", [
    (0, r"log record: message is not valid UTF-8"),
    (1, r"log record: source file is not valid UTF-8"),
    (2, r"log record with level 9, expected 0\.\.5"),
    (3, r"output buffer: expected a log record, found kind print"),
    (4, r"log record: message is not NUL-terminated"),
])
def test_malformed_log_record(caplog, variant, match):
    with make_hostile(guest_log_level="trace") as sb, caplog.at_level(1, logger="hlsandbox.guest"):
        protocol_error(sb, "BadLog", variant, match=match)
    assert not [r for r in caplog.records if r.name == "hlsandbox.guest"]


def test_invalid_utf8_print():
    printed = []
    with make_hostile(writer=printed.append) as sb:
        protocol_error(sb, "PrintInvalidUtf8", match=r"print record: text is not valid UTF-8")
    assert printed == []


@pytest.mark.parametrize("variant,match", [
    (0, r"host call record: name is not valid UTF-8"),
    (1, r"host call record: truncated record"),
    (2, r"host call record: unknown value type tag 42"),
    (3, r"host call record: 4 unexpected trailing bytes"),
    (4, r"host call record: bool value 2 is neither 0 nor 1"),
    (5, r"host call record: name is not NUL-terminated"),
    (6, r"input buffer: stack pointer 0x7777 is outside"),
    (7, r"input buffer: no room for an error record"),
])
def test_malformed_host_call(variant, match):
    calls = []

    def host_add(a, b):
        calls.append((a, b))
        return a + b

    with make_hostile(host_add) as sb:
        with pytest.raises(hl.GuestProtocolError, match=match):
            sb.call("BadHostCall", variant)
        # Variants 6 and 7 are well-formed calls whose reply cannot be written: the host
        # function ran. The malformed ones never reach it.
        assert calls == ([(1, 1)] if variant >= 6 else [])
        assert_poisoned(sb)


def test_result_of_another_type(hostile):
    protocol_error(hostile, "ReturnWrongType", match=r"guest returned str, its signature says i32")


@pytest.mark.parametrize("tag,match", [
    (10, r"result record: unknown value type tag 10"),
    (255, r"result record: unknown value type tag 255"),
    (0, r"result record: 4 unexpected trailing bytes"),  # void, then the 4 bytes of data
    (8, r"result record: truncated record"),  # str whose length is the bytes 1 2 3 4
])
def test_result_with_unknown_tag(hostile, tag, match):
    protocol_error(hostile, "ReturnUnknownTag", tag, match=match)


# -- host calls that fail come back to the guest as errors --------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("CallUnknownHost", "5: host function 'NoSuchHostFunction' is not registered"),
    ("CallHostWrongTypes", "5: host function HostAdd(i32, i32) -> i32 called with (str, i64)"),
    ("CallHostWrongArity", "5: host function HostAdd(i32, i32) -> i32 called with (i32)"),
    ("CallHostWrongReturn", "5: host function HostAdd returned i32, expected str"),
])
def test_bad_host_calls_reach_the_guest_as_errors(hostile, name, expected):
    assert hostile.call(name) == expected
    assert_healthy(hostile)
    assert hostile.call("HostAddLoop", 10) == 55


# -- aborts in odd states -----------------------------------------------------------------------

def test_abort_with_a_host_call_pending_and_no_abort_record():
    calls = []
    with make_hostile(lambda a, b: calls.append(1) or a + b) as sb:
        with pytest.raises(hl.GuestProtocolError,
                           match=r"the guest aborted, but its abort record is unreadable: output buffer: "
                                 r"expected a error record, found kind call"):
            sb.call("AbortMidHostCall", 0)
        assert calls == []  # the half-issued host call never ran
        assert_poisoned(sb)


def test_abort_with_a_host_call_pending():
    calls = []
    with make_hostile(lambda a, b: calls.append(1) or a + b) as sb:
        with pytest.raises(hl.GuestAborted) as ei:
            sb.call("AbortMidHostCall", 1)
        assert (ei.value.code, ei.value.message) == (42, "aborted with a host call pending")
        assert calls == []
        assert_poisoned(sb)


@pytest.mark.parametrize("variant,match", [
    (2, r"abort record is unreadable: output buffer: stack pointer 0x12345 is outside"),
    (3, r"abort record is unreadable: output buffer: empty, expected a error record"),
])
def test_abort_with_a_corrupt_buffer(hostile, variant, match):
    protocol_error(hostile, "AbortMidHostCall", variant, match=match)


# -- port I/O outside the ABI -------------------------------------------------------------------

@pytest.mark.parametrize("variant,what", [
    (0, "out 0x80"), (1, "in 0x80"), (5, "out 110 (FAULT, CPL0 only)"), (6, "out 0xffff"),
    (8, "outw 108 (port 109 denied)"),
])
def test_port_outside_the_io_bitmap_is_a_general_protection_fault(hostile, variant, what):
    with pytest.raises(hl.GuestFault, match=r"#GP general protection") as ei:
        hostile.call("PortIo", variant)
    assert ei.value.vector == 13, what
    assert hostile.layout.code_gpa <= ei.value.rip < hostile.layout.snapshot_size
    assert_poisoned(hostile)


@pytest.mark.parametrize("variant,match", [
    (2, r"guest port I/O the ABI does not use: in port 0x63, size 1, count 1"),
    (3, r"guest port I/O the ABI does not use: out port 0x65, size 2, count 1"),
])
def test_allowed_port_used_the_wrong_way(hostile, variant, match):
    with pytest.raises(hl.GuestFault, match=match) as ei:
        hostile.call("PortIo", variant)
    assert ei.value.vector == -1
    assert hostile.layout.code_gpa <= ei.value.rip < hostile.layout.snapshot_size
    assert_poisoned(hostile)


def test_restore_after_an_unfinished_in(hostile):
    """KVM keeps an `in` unfinished until the next KVM_RUN and then completes it from the
    state it saved. The host finishes it when the call stops; otherwise the completion
    runs over the restore (on kvm-pvm the guest resumes after the `in` with the restored
    stack and faults in the next call)."""
    for _ in range(5):
        with pytest.raises(hl.GuestFault, match="in port 0x63"):
            hostile.call("PortIo", 2)
        hostile.restore()
        assert hostile.call("Echo", "x") == "x"
        assert hostile.call("HostAddLoop", 5) == 15


def test_rep_outsb_to_an_abi_port(hostile):
    # kvm-pvm splits string I/O into one-byte exits, so the host sees a LOG exit with no
    # record; hardware KVM reports one exit with count 2. Both end the call.
    with pytest.raises((hl.GuestFault, hl.GuestProtocolError),
                       match=r"count 2|output buffer: empty, expected a log record"):
        hostile.call("PortIo", 7)
    assert_poisoned(hostile)


# -- privileged and trapping instructions -------------------------------------------------------

@pytest.mark.parametrize("variant,vectors", [
    (0, {13}),  # hlt
    (1, {13}),  # cli (IOPL 0)
    (2, {13}),  # mov cr3
    (3, {13}),  # wrmsr
    (4, {13}),  # lgdt
    (7, {6}),  # ud2
    (8, {1}),  # TF set: single-step #DB
    # The IDT gates are DPL 0, so hardware raises #GP for int3 / int n from CPL3; kvm-pvm
    # does not emulate int n from CPL3 faithfully (#BP, #UD). Either way a GuestFault.
    (5, {3, 13}),  # int3
    (6, {6, 13}),  # int 0x80
    (11, {6, 13}),  # int 0x40, past the IDT limit
])
def test_privileged_and_trapping_instructions(hostile, variant, vectors):
    with pytest.raises(hl.GuestFault) as ei:
        hostile.call("Privileged", variant)
    assert not isinstance(ei.value, hl.MemoryAccessViolation)
    assert ei.value.vector in vectors
    assert hostile.layout.code_gpa <= ei.value.rip < hostile.layout.snapshot_size
    assert_poisoned(hostile)


@pytest.mark.parametrize("variant", [9, 10])
def test_syscall_reaches_cpl0_only_to_fault(hostile, variant):
    """`syscall` with LSTAR = 0 enters CPL0 at the unmapped null page. On kvm-pvm the #PF
    is reported cleanly; on hardware KVM the #PF is delivered on the guest's own stack
    (variant 9: the host sees an inconsistent report) or, with rsp = 0 (variant 10),
    cannot be delivered at all and becomes a #DF on IST1: the only fault-inside-fault
    delivery a CPL3 guest can provoke. Every outcome is a GuestFault, never a hang."""
    with pytest.raises(hl.GuestFault) as ei:
        hostile.call("Privileged", variant)
    e = ei.value
    if isinstance(e, hl.MemoryAccessViolation):
        assert (e.address, e.access, e.rip) == (0, "execute", 0)
    else:
        assert e.vector in (DOUBLE_FAULT, 14)
    assert_poisoned(hostile)


# -- the stack ----------------------------------------------------------------------------------

def test_recursion_overflows_the_stack(hostile):
    with pytest.raises(hl.StackOverflow, match="guest stack overflow") as ei:
        hostile.call("StackOverflow", 1_000_000)
    g = hostile.layout.guard_gpa
    assert g <= ei.value.address < g + 4096 and ei.value.vector == 14
    assert_poisoned(hostile)


def test_big_frame_hits_the_guard_page_not_the_heap(hostile):
    assert hostile.call("BigFrame", 64) == 1
    with pytest.raises(hl.StackOverflow) as ei:
        hostile.call("BigFrame", 1024)  # 1 MiB frame, 256 KiB stack
    g = hostile.layout.guard_gpa
    assert g <= ei.value.address < g + 4096
    assert_poisoned(hostile)


def test_stack_pointer_at_the_bottom_of_the_stack(hostile):
    with pytest.raises(hl.StackOverflow) as ei:
        hostile.call("SetRspAndPush", hostile.layout.stack_gpa)
    assert ei.value.address == hostile.layout.stack_gpa - 8
    assert_poisoned(hostile)


@pytest.mark.parametrize("where", ["null", "system", "peb"])
def test_stack_pointer_elsewhere_is_a_memory_access_violation(hostile, where):
    L = hostile.layout
    rsp = {"null": 0, "system": L.system_gpa + 0x4000, "peb": L.peb_gpa + 4096}[where]
    with pytest.raises(hl.MemoryAccessViolation) as ei:
        hostile.call("SetRspAndPush", rsp)
    assert not isinstance(ei.value, hl.StackOverflow)
    assert ei.value.address == (rsp - 8) % U64 and ei.value.access == "write"
    assert_poisoned(hostile)


def test_non_canonical_stack_pointer_is_a_stack_fault(hostile):
    with pytest.raises(hl.GuestFault, match=r"#SS stack fault") as ei:
        hostile.call("SetRspAndPush", 2**63)
    assert ei.value.vector == 12
    assert_poisoned(hostile)


@pytest.mark.parametrize("rsp", [0, 2**63, 0x1000, "guard"])
def test_fault_delivery_does_not_depend_on_the_guest_stack(hostile, rsp):
    """The nearest portable case to a fault inside the fault handler: the CPU switches to
    the CPL0 stack from the TSS, so a #UD with rsp anywhere is delivered and reported
    with that rsp (a ud2 pushes nothing on the guest's stack)."""
    if rsp == "guard":
        rsp = hostile.layout.guard_gpa + 8
    with pytest.raises(hl.GuestFault, match=r"#UD invalid opcode") as ei:
        hostile.call("FaultWithStack", rsp)
    assert ei.value.vector == 6
    assert_poisoned(hostile)


def test_running_the_fault_stub_at_cpl3_faults_in_the_handler_code(hostile):
    """Jumping into the exception stubs from CPL3 runs the fault handler's own code until
    its first privileged instruction (`mov %cr2`): the #GP is reported at that rip, inside
    the stubs, as CPL3 code."""
    stubs = hostile.call("AddressOf", 0)
    for vector in (0, 14):
        with make_hostile() as sb:
            with pytest.raises(hl.GuestFault, match=r"#GP general protection") as ei:
                sb.call("ExecuteAddress", stubs + 16 * vector)
            assert ei.value.vector == 13
            assert stubs + 32 * 16 <= ei.value.rip < stubs + 32 * 16 + 16  # hl_fault_common
            assert "CPL0" not in str(ei.value)
            assert_poisoned(sb)


# -- memory -------------------------------------------------------------------------------------

def _address(sb: hl.MultiUseSandbox, where: str) -> int:
    L = sb.layout
    return {"null": 0, "page_tables": L.pt_gpa, "page_tables_end": L.system_gpa - 8,
            "system": L.system_gpa, "idt": L.idt_gpa, "cpl0_stack": L.rsp0 - 8, "guard": L.guard_gpa + 64,
            "beyond": L.total_size, "far": 2**47 - 8}[where]


@pytest.mark.parametrize("where", ["null", "page_tables", "page_tables_end", "system", "idt", "cpl0_stack",
                                   "guard", "beyond", "far"])
@pytest.mark.parametrize("access", ["read", "write"])
def test_inaccessible_memory(hostile, where, access):
    addr = _address(hostile, where)
    with pytest.raises(hl.MemoryAccessViolation) as ei:
        if access == "read":
            hostile.call("ReadAddress", addr)
        else:
            hostile.call("WriteAddress", addr, 0x4141414141414141)
    e = ei.value
    assert not isinstance(e, hl.StackOverflow)  # a stray pointer, even into the guard page
    assert (e.address, e.access, e.vector) == (addr, access, 14)
    present = where in ("system", "idt", "cpl0_stack")  # supervisor pages: a protection violation
    assert ("protection violation" if present else "not mapped") in str(e)
    assert_poisoned(hostile)


@pytest.mark.parametrize("where", ["peb", "code", "rodata"])
def test_read_only_memory_can_be_read_but_not_written(hostile, where):
    L = hostile.layout
    addr = {"peb": L.peb_gpa, "code": hostile.call("AddressOf", 3), "rodata": hostile.call("AddressOf", 4)}[where]
    value = hostile.call("ReadAddress", addr)
    if where == "peb":
        assert value == 0x0142455050424C48  # the PEB magic
    with pytest.raises(hl.MemoryAccessViolation, match="protection violation") as ei:
        hostile.call("WriteAddress", addr, value)
    assert (ei.value.address, ei.value.access) == (addr, "write")
    assert_poisoned(hostile)


@pytest.mark.parametrize("where", ["data", "stack", "heap", "peb", "input", "output", "rodata", "system"])
def test_executing_data_is_refused(hostile, where):
    L = hostile.layout
    addr = {"data": hostile.call("AddressOf", 1), "stack": hostile.call("AddressOf", 2), "heap": L.heap_gpa,
            "peb": L.peb_gpa, "input": L.input_gpa, "output": L.output_gpa,
            "rodata": hostile.call("AddressOf", 4), "system": L.system_gpa}[where]
    with pytest.raises(hl.MemoryAccessViolation, match=r"execute of .* \(protection violation\)") as ei:
        hostile.call("ExecuteAddress", addr)
    assert (ei.value.address, ei.value.access, ei.value.rip) == (addr, "execute", addr)
    assert_poisoned(hostile)


@pytest.mark.parametrize("where", ["null", "guard", "beyond"])
def test_executing_unmapped_memory(hostile, where):
    addr = _address(hostile, where)
    with pytest.raises(hl.MemoryAccessViolation, match=r"execute of .* \(not mapped\)") as ei:
        hostile.call("ExecuteAddress", addr)
    assert (ei.value.address, ei.value.access) == (addr, "execute")
    assert_poisoned(hostile)


def test_jump_to_a_non_canonical_address(hostile):
    with pytest.raises(hl.GuestFault, match=r"#GP") as ei:
        hostile.call("ExecuteAddress", 2**63)
    assert ei.value.vector == 13
    assert_poisoned(hostile)


# -- many hostile sandboxes in a row ------------------------------------------------------------

def test_a_hundred_hostile_calls_leave_the_host_healthy():
    cases = [("CorruptTop", 0), ("CorruptBackPointer", 0), ("ReturnInvalidUtf8",), ("PortIo", 0),
             ("ReadAddress", 0), ("StackOverflow", 1_000_000), ("AbortMidHostCall", 1), ("Privileged", 7),
             ("BadHostCall", 0), ("ReturnWrongType",)]
    for i in range(100):
        name, *args = cases[i % len(cases)]
        with make_hostile() as sb:
            with pytest.raises((hl.GuestError, hl.GuestFault, hl.GuestAborted)):
                sb.call(name, *args)
            assert_poisoned(sb)
    with make_hostile() as sb:
        assert sb.call("HostAddLoop", 100) == 5050


# -- the host's reading of fault reports (no KVM: a synthetic CPL0 stack) -----------------------

def _layout() -> SandboxMemoryLayout:
    return SandboxMemoryLayout(HOSTILE.image, 4096, 2 * 4096, 4096, 4096)


def _report(vector_out: int, frame: dict, top: str = "rsp0") -> hl.HyperlightError:
    L = _layout()
    mem = SharedMemory(L.total_size)
    try:
        values = dict(cr2=0, rax=0, vector=vector_out, error=0, rip=0x1234, cs=0x23, rflags=2, rsp=0x5000,
                      ss=0x1b)
        values.update(frame)
        t = L.ist1 if top == "ist1" else L.rsp0
        mem.write(t - FRAME.size, struct.pack("<9Q", *(values[k] for k in (
            "cr2", "rax", "vector", "error", "rip", "cs", "rflags", "rsp", "ss"))))
        return fault_from_frame(mem, L, vector_out)
    finally:
        mem.close()


def test_double_fault_report_is_read_from_the_ist1_stack():
    e = _report(DOUBLE_FAULT, dict(rip=0xabc, cs=0x08), top="ist1")
    assert type(e) is hl.GuestFault and e.vector == DOUBLE_FAULT and e.rip == 0xabc
    assert "#DF double fault" in str(e) and "in CPL0 code" in str(e)


@pytest.mark.parametrize("frame_vector", [0, 13, 32, U64 - 1])
def test_inconsistent_fault_report(frame_vector):
    e = _report(14, dict(vector=frame_vector))
    assert type(e) is hl.GuestFault and e.vector == 14
    assert "inconsistent" in str(e)


def test_page_fault_report_in_cpl0_code():
    e = _report(14, dict(cr2=0x10, error=0, rip=0x0, cs=0x08))
    assert isinstance(e, hl.MemoryAccessViolation) and "in CPL0 code" in str(e)

