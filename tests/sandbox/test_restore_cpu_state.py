"""A restore puts back all the CPU state a guest can reach, not only what a call usually
changes: IA32_SYSENTER_* MSRs and debug registers (a CPL0 i686 guest can write them), and
on kvm-pvm the AVX-512 registers beyond the FXSAVE image (a CPL3 amd64 guest runs with
the host's XCR0 there)."""
from __future__ import annotations

import io
import struct

import pytest

import hlsandbox as hl
from hlsandbox.hypervisor import device, kvm
from hlsandbox.mem.trampoline import trampoline_code

from helpers import host_add, make_sandbox

pytestmark = pytest.mark.kvm
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}

# hl_vcpu_state (hypervisor/kvm_shim.h): regs, sregs, xsave, nmsrs + pad, 9 MSR entries, debugregs
MSRS_AT = 144 + 312 + 4096
ENTRIES_AT = MSRS_AT + 8
DEBUG_AT = ENTRIES_AT + 9 * 16
SYSENTER = (0x174, 0x175, 0x176)


def msrs(state: bytes) -> dict[int, int]:
    n, = struct.unpack_from("<I", state, MSRS_AT)
    out = {}
    for i in range(n):
        index, _, data = struct.unpack_from("<IIQ", state, ENTRIES_AT + 16 * i)
        out[index] = data
    return out


def debugregs(state: bytes) -> tuple[int, ...]:
    return struct.unpack_from("<6Q", state, DEBUG_AT)  # DR0-3, DR6, DR7


def as_if_the_guest_wrote(state: bytes) -> bytes:
    """`state` with other IA32_SYSENTER_CS/ESP/EIP and an enabled DR0 breakpoint."""
    out = bytearray(state)
    n, = struct.unpack_from("<I", out, MSRS_AT)
    for i in range(n):
        index, = struct.unpack_from("<I", out, ENTRIES_AT + 16 * i)
        if index in SYSENTER:
            struct.pack_into("<Q", out, ENTRIES_AT + 16 * i + 8, 0x8 if index == 0x174 else 0x12340 + index)
    struct.pack_into("<6Q", out, DEBUG_AT, 0x101000, 0x102000, 0, 0, 0xFFFF0FF0, 0x405)
    return bytes(out)


GUEST_DR0 = 0xFFFFF000  # nanvixlike's breakpoint address (outside its memory: never hit)


def i686_sandbox(counter: int = 0) -> hl.MultiUseSandbox:
    """nanvixlike; with the counter at 0x5E75 its init sets IA32_SYSENTER_* and DR0/DR7."""
    u = hl.UninitializedSandbox(hl.guests.path("nanvixlike"), writer=io.StringIO())
    c = u.guest_counter()
    for _ in range(counter):
        c.increment()
    u.register_raw(1, lambda req: b"pong")
    u.register_raw(2, lambda req: b"")
    return u.evolve()


@pytest.mark.parametrize("which", ["restore()", "restore(snapshot)", "restore(other sandbox's)"])
def test_i686_restore_resets_sysenter_msrs_and_debug_registers(which):
    with i686_sandbox() as sb, i686_sandbox() as other:
        snap = other.snapshot() if which == "restore(other sandbox's)" else sb.snapshot()
        want = (snap if which != "restore()" else sb._init_snapshot).vcpu_state
        assert all(i in msrs(want) for i in SYSENTER)
        dirty = as_if_the_guest_wrote(sb._vm.save_state())
        sb._vm.load_state(dirty, kvm.LOAD_MSRS | kvm.LOAD_DEBUG)  # what a CPL0 guest can do
        held = sb._vm.save_state()
        assert [msrs(held)[i] for i in SYSENTER] == [0x8, 0x12340 + 0x175, 0x12340 + 0x176]
        assert debugregs(held)[0] == 0x101000 and debugregs(held)[5] & 1
        if which == "restore()":
            sb.restore()
        else:
            sb.restore(snap)
        got = sb._vm.save_state()
        assert {i: msrs(got)[i] for i in SYSENTER} == {i: msrs(want)[i] for i in SYSENTER}
        assert debugregs(got) == debugregs(want)


def test_i686_guest_written_msrs_and_debug_registers_are_restored():
    with i686_sandbox() as clean, i686_sandbox(0x5E75) as wrote:
        written = wrote._vm.save_state()
        assert [msrs(written)[i] for i in SYSENTER] == [0x8, 0x12345, 0x6789A]  # the guest's wrmsr
        assert debugregs(written)[0] == GUEST_DR0 and debugregs(written)[5] == 0x401  # its mov to DR0, DR7
        want = clean.snapshot().vcpu_state
        wrote.restore(clean.snapshot())
        got = wrote._vm.save_state()
        assert {i: msrs(got)[i] for i in SYSENTER} == {i: msrs(want)[i] for i in SYSENTER} \
            == dict.fromkeys(SYSENTER, 0)
        assert debugregs(got) == debugregs(want) == (0, 0, 0, 0, 0xFFFF0FF0, 0x400)
        wrote.restore()  # its own state after init: what its guest wrote
        again = wrote._vm.save_state()
        assert [msrs(again)[i] for i in SYSENTER] == [0x8, 0x12345, 0x6789A]
        assert debugregs(again) == debugregs(written)


def test_i686_debug_registers_travel_in_snapshot_files(tmp_path):
    with i686_sandbox() as sb:
        sb._vm.load_state(as_if_the_guest_wrote(sb._vm.save_state()), kvm.LOAD_MSRS | kvm.LOAD_DEBUG)
        sb._pending = None  # the vCPU holds the state now (not a staged restore)
        snap = sb.snapshot()
        assert debugregs(snap.vcpu_state)[0] == 0x101000
        snap.save(tmp_path / "s.hlsnap")
    u = hl.UninitializedSandbox(tmp_path / "s.hlsnap", writer=io.StringIO())
    u.register_raw(1, lambda req: b"")
    u.register_raw(2, lambda req: b"")
    with u.evolve() as sb2:
        got = sb2._vm.save_state()
        assert debugregs(got) == debugregs(snap.vcpu_state)
        assert {i: msrs(got)[i] for i in SYSENTER} == {i: msrs(snap.vcpu_state)[i] for i in SYSENTER}


# -- amd64 on kvm-pvm: AVX-512 --------------------------------------------------------------------

avx512 = pytest.mark.skipif(not (device.is_kvm_pvm() and device.host_has_avx512()),
                            reason="only kvm-pvm with an AVX-512 host lets a CPL3 guest use AVX-512")
VALUE = 0x1234567890ABCDEF


@avx512
def test_fast_restore_resets_avx512_registers(sandbox):
    sandbox.call("SetAvx512", VALUE)
    assert sandbox.call("GetAvx512") == VALUE  # the guest reaches them, and they persist
    sandbox.restore()
    assert sandbox.call("GetAvx512") == 0
    snap = sandbox.snapshot()
    sandbox.call("SetAvx512", VALUE)
    sandbox.restore(snap)  # the baseline: the trampoline
    assert sandbox.call("GetAvx512") == 0
    sandbox.call("SetAvx512", VALUE)
    sandbox.call("Echo", "x", restore=True)  # call and restore in one Cython call
    assert sandbox.call("GetAvx512") == 0
    with make_sandbox() as other:
        other.call("SetAvx512", VALUE)
        other.restore(snap)  # another sandbox's snapshot: KVM_SET_XSAVE
        assert other.call("GetAvx512") == 0


@avx512
def test_avx512_reset_does_not_depend_on_the_snapshots_trampoline(sandbox):
    # A snapshot's image carries a trampoline page (from an older hlsandbox, another host,
    # or crafted): the sandbox writes its own.
    L = sandbox.layout
    sandbox._memory.write(L.host(L.trampoline_gpa), trampoline_code(True, False))
    snap = sandbox.snapshot()
    with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:
        sb.call("SetAvx512", VALUE)
        sb.restore()
        assert sb.call("GetAvx512") == 0
    with make_sandbox() as other:
        other.restore(snap)  # copied whole: the trampoline page too
        other.call("SetAvx512", VALUE)
        other.restore()
        other.restore(snap)
        assert other.call("GetAvx512") == 0
