"""VM creation (vm_setup.h): slots registered by the helper thread while the vCPU is
created, or in line; errors, concurrency, fork, and the vCPU state loaded into a new VM."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import hlsandbox as hl
from hlsandbox.hypervisor import device, kvm
from hlsandbox.mem.shared_memory import SharedMemory

from helpers import host_add

pytestmark = pytest.mark.kvm
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}
MiB = 1 << 20


@pytest.fixture(params=["helper", "in line"])
def setup_mode(request):
    old = kvm._set_serial_setup(request.param == "in line")
    yield request.param
    kvm._set_serial_setup(old)


@pytest.fixture(scope="module")
def snap():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        sb.call("SetStatic", 77)
        s = sb.snapshot()
    yield s
    s.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sandboxes_run_whichever_thread_registered_the_slots(setup_mode, snap):
    for _ in range(3):
        with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:
            assert sb.call("GetStatic") == 77
            assert sb.call("CallHostAdd", 2, 3) == 5
            addr = sb.layout.heap_gpa + (64 << 10)
            before = sb.read_memory(addr, 10 * 4096)
            assert sb.call("WritePages", addr, 10) == 10
            assert sb.read_memory(addr, 10 * 4096) != before
            sb.restore()  # the logged slot found the pages written
            assert sb.read_memory(addr, 10 * 4096) == before
            assert sb.call("GetStatic") == 77


@pytest.mark.parametrize("slots, bad", [
    ([(0, MiB, False, 0), (MiB // 2, MiB // 2, False, 0)], 1),  # overlapping guest physical ranges
    # beyond KVM's reach
    ([(0, MiB // 2, False, 0), (MiB, MiB // 2, True, MiB // 2), (1 << 60, MiB // 2, False, 0)], 2),
])
def test_a_refused_slot_is_named_and_nothing_leaks(setup_mode, slots, bad):
    mem = SharedMemory(MiB)
    before = open_fds()
    for _ in range(3):
        with pytest.raises(OSError, match=rf"^\[Errno \d+\] KVM_SET_USER_MEMORY_REGION \(slot {bad}, "
                                          rf"{slots[bad][1]} bytes at {slots[bad][0]:#x}\): "):
            kvm.VirtualMachine(mem, mem.address, slots)
    assert open_fds() == before
    vm = kvm.VirtualMachine(mem, mem.address, [(0, MiB, False, 0)])  # the helper is free again
    vm.close()
    assert open_fds() == before
    mem.close()


@pytest.mark.parametrize("slots, match", [
    ([(0, 4096, False, 0)] * 9, "at most 8 memory slots"),
    ([(0, 4097, False, 0)], "slot 0 is not page aligned or empty"),
    ([(0, 4096, False, 0), (8192, 0, False, 0)], "slot 1 is not page aligned or empty"),
])
def test_bad_slot_lists_are_refused_before_kvm(slots, match):
    mem = SharedMemory(MiB)
    before = open_fds()
    with pytest.raises(ValueError, match=match):
        kvm.VirtualMachine(mem, mem.address, slots)
    assert open_fds() == before
    mem.close()


def test_concurrent_creation(snap):
    # Threads creating sandboxes at once: one gets the helper, the others set up in line.
    errors, results = [], []

    def worker():
        try:
            for _ in range(8):
                with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:
                    results.append(sb.call("CallHostAdd", 20, 22))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [42] * 32


def test_a_forked_child_creates_sandboxes(snap):
    with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:  # the parent's helper exists
        assert sb.call("GetStatic") == 77
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own helper thread (the parent's is not copied)
        code = 1
        try:
            os.close(r)
            got = []
            for _ in range(3):
                with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:
                    got.append(sb.call("CallHostAdd", 1, 2))
            os.write(w, repr(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and out == "[3, 3, 3]"


# -- the vCPU state a new VM loads ------------------------------------------------------------------

REGS_SREGS = 18 * 8 + 312  # struct kvm_regs + struct kvm_sregs
XSAVE = 4096


def msr_part(state: bytes) -> bytes:
    return state[REGS_SREGS + XSAVE:]


def test_new_vm_gets_the_snapshots_fpu_state_and_msrs(setup_mode, snap):
    L = snap.layout
    mem = snap.map_private()
    vm = kvm.VirtualMachine(mem, mem.address, L.slots())
    try:
        fresh = vm.save_state()
        assert msr_part(fresh) == msr_part(snap.vcpu_state)  # a CPL3 guest cannot change MSRs
        assert fresh[REGS_SREGS:REGS_SREGS + XSAVE] != snap.vcpu_state[REGS_SREGS:REGS_SREGS + XSAVE]
        vm.load_state(snap.vcpu_state, kvm.LOAD_ALL)
        got = vm.save_state()
        assert got[REGS_SREGS:] == snap.vcpu_state[REGS_SREGS:]  # XSAVE loaded; MSRs equal
    finally:
        vm.close()
        mem.close()


def test_a_vm_created_in_a_state_has_it(setup_mode, snap):
    L = snap.layout
    mem = snap.map_private()
    vm = kvm.VirtualMachine(mem, mem.address, L.slots(), snap.vcpu_state)
    try:
        # FPU state and MSRs are in the vCPU; general and segment registers are staged in
        # kvm_run for the first run (sandboxes from snapshots run from them: test_snapshots.py)
        assert vm.save_state()[REGS_SREGS:] == snap.vcpu_state[REGS_SREGS:]
        before = open_fds()
        with pytest.raises(ValueError, match=f"vCPU state is 3 bytes, expected {kvm.STATE_SIZE}"):
            kvm.VirtualMachine(mem, mem.address, L.slots(), b"abc")
        assert open_fds() == before
    finally:
        vm.close()
        mem.close()


def test_first_vm_of_a_process_from_a_snapshot_file(tmp_path, snap):
    # The first VM of a process reads a new vCPU's state before loading the snapshot's.
    path = tmp_path / "s.hlsnap"
    snap.save(path)
    code = f"""
        import hlsandbox as hl
        host = {{"HostAdd": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32)}}
        sb = hl.MultiUseSandbox.from_snapshot({str(path)!r}, host_functions=host)
        print(sb.call("GetStatic"), sb.call("CallHostAdd", 5, 6), sb.call("GetMxcsr"))
        s2 = hl.MultiUseSandbox.from_snapshot(sb.snapshot(), host_functions=host)
        print(s2.call("GetStatic"))
    """
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(root)), cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["77", "11", str(0x1F80), "77"]


def other_msrs(snap) -> bytes:
    """The snapshot's state with IA32_SYSENTER_CS changed (a new vCPU has 0)."""
    state = bytearray(snap.vcpu_state)
    nmsrs, = struct.unpack_from("<I", state, REGS_SREGS + XSAVE)
    entries = REGS_SREGS + XSAVE + 8
    index, = struct.unpack_from("<I", state, entries)
    assert nmsrs >= 1 and index == 0x174  # IA32_SYSENTER_CS
    struct.pack_into("<Q", state, entries + 8, 0x10)
    return bytes(state)


@pytest.mark.parametrize("how", ["load_state", "initial_state"])
def test_msrs_that_differ_from_a_new_vcpus_are_loaded(setup_mode, snap, how):
    # Equal MSRs are skipped (no KVM_SET_MSRS); different ones must still reach the vCPU.
    state = other_msrs(snap)
    mem = snap.map_private()
    vm = kvm.VirtualMachine(mem, mem.address, snap.layout.slots(), state if how == "initial_state" else None)
    try:
        if how == "load_state":
            vm.load_state(state, kvm.LOAD_MSRS)
        assert msr_part(vm.save_state()) == msr_part(state) != msr_part(snap.vcpu_state)
        # Back to a new vCPU's values: the vCPU no longer holds them, so they are loaded.
        vm.load_state(snap.vcpu_state, kvm.LOAD_ALL)
        assert vm.save_state()[REGS_SREGS:] == snap.vcpu_state[REGS_SREGS:]
    finally:
        vm.close()
        mem.close()


# -- the CPUID table ------------------------------------------------------------------------------

def test_cpuid_table_is_needed_unless_cpl3_on_kvm_pvm(monkeypatch):
    monkeypatch.delenv("HLSANDBOX_SET_CPUID", raising=False)
    monkeypatch.setattr(device, "_cpl3_cpuid_is_the_hosts", True)  # kvm-pvm
    assert not device.cpuid_needed(cpl3_guest=True)
    assert device.cpuid_needed(cpl3_guest=False)  # i686 guests run at CPL0 and read the table
    monkeypatch.setenv("HLSANDBOX_SET_CPUID", "1")
    assert device.cpuid_needed(cpl3_guest=True)
    monkeypatch.setattr(device, "_cpl3_cpuid_is_the_hosts", False)  # hardware KVM
    monkeypatch.delenv("HLSANDBOX_SET_CPUID")
    assert device.cpuid_needed(cpl3_guest=True) and device.cpuid_needed(cpl3_guest=False)


@pytest.mark.parametrize("set_cpuid", ["0", "1"])
def test_guest_sees_the_cpu_with_or_without_a_table(monkeypatch, set_cpuid):
    # Without KVM_SET_CPUID2 (kvm-pvm on a host without CPUID faulting, amd64; elsewhere
    # cpuid_needed() sets the table whatever the variable says) a CPL3 guest's cpuid still reports the CPU:
    # SSE2 (leaf 1, edx bit 26), and the same values as with the table.
    def features(sb):
        regs = [sb.call("Cpuid", leaf, reg) for leaf in (0, 1) for reg in range(4)]
        regs[5] &= 0x00FFFFFF  # leaf 1 ebx bits 31-24: the APIC ID of the CPU it ran on
        return regs

    monkeypatch.setenv("HLSANDBOX_SET_CPUID", set_cpuid)
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        seen = features(sb)
        assert seen[0] >= 1 and seen[7] & (1 << 26)
        monkeypatch.setenv("HLSANDBOX_SET_CPUID", "1")
        with hl.MultiUseSandbox.from_snapshot(sb.snapshot(), host_functions=HOST) as other:
            assert features(other) == seen
        # the highest guest physical address of the layout works either way
        top = sb.layout.output_gpa + sb.layout.output_size - 8
        sb.call("WriteAddress", top, 0x1234)
        assert sb.call("ReadAddress", top) == 0x1234
