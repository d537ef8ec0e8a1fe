"""Turns the ways a guest can stop unexpectedly into precise exceptions."""
from __future__ import annotations

import struct

from ..errors import GuestEmulationFailure, GuestFault, HyperlightError, MemoryAccessViolation, StackOverflow
from ..hypervisor import device, kvm
from ..mem.layout import SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory
from ..mem.system_tables import DOUBLE_FAULT

VECTOR_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available", 8: "#DF double fault",
    10: "#TS invalid TSS", 11: "#NP segment not present", 12: "#SS stack fault",
    13: "#GP general protection", 14: "#PF page fault", 16: "#MF x87 error", 17: "#AC alignment check",
    18: "#MC machine check", 19: "#XM SIMD floating point", 20: "#VE virtualization",
    21: "#CP control protection",
}
FRAME = struct.Struct("<9Q")  # cr2, rax, vector, error, rip, cs, rflags, rsp, ss (ascending addresses)


def _access(error_code: int) -> str:
    if error_code & 0x10:
        return "execute"
    return "write" if error_code & 0x2 else "read"


def fault_from_frame(mem: SharedMemory, layout: SandboxMemoryLayout, vector_out: int,
                     vm: kvm.VirtualMachine | None = None) -> HyperlightError:
    """Reads the frame the fault stub left on the stack (docs/abi.md, Faults)."""
    if layout.profile == "i686":
        return _i686_fault(mem, layout, vector_out, vm)
    top = layout.ist1 if vector_out == DOUBLE_FAULT else layout.rsp0
    cr2, _rax, vector, error, rip, cs, _rflags, rsp, _ss = FRAME.unpack(mem.read(top - FRAME.size, FRAME.size))
    if vector != vector_out or vector > 31:
        return GuestFault(f"guest fault report is inconsistent (port said vector {vector_out}, stack says "
                          f"{vector})", vector_out)
    name = VECTOR_NAMES.get(vector, f"vector {vector}")
    where = f"at rip={rip:#x}" + ("" if cs & 3 == 3 else " (in CPL0 code)")
    syscall_at = _syscall_site(mem, layout, vector, rip, vm)
    if syscall_at is not None:
        return GuestFault(f"guest fault: a raw `syscall` instruction (syscall number {_rax}) at rip="
                          f"{syscall_at:#x}; a guest has no operating system: use the SDK's C library "
                          "functions", vector, error, syscall_at)
    if vector == 14:
        access = _access(error)
        # A touch of the guard page with the stack pointer at the bottom of the stack (or
        # below it) is an overflow; a stray pointer into the guard page is not.
        if layout.guard_gpa <= cr2 < layout.guard_gpa + 4096 and rsp < layout.stack_gpa + 4096:
            return StackOverflow(f"guest stack overflow: {access} of guard page address {cr2:#x} {where} "
                                 f"(rsp={rsp:#x})", cr2, vector, error, rip)
        kind = "not mapped" if not error & 1 else "protection violation"
        return MemoryAccessViolation(f"guest memory access violation: {access} of {cr2:#x} ({kind}) {where}",
                                     cr2, access, vector, error, rip)
    return GuestFault(f"guest fault {name} (error code {error:#x}) {where}", vector, error, rip)


def _syscall_site(mem: SharedMemory, layout: SandboxMemoryLayout, vector: int, rip: int,
                  vm: kvm.VirtualMachine | None) -> int | None:
    """The address of the `syscall` (0f 05) that faulted, if one did: EFER.SCE is clear,
    so hardware raises #UD at it; kvm-pvm instead jumps to LSTAR (0), leaving the return
    address in rcx."""
    def is_syscall(at: int) -> bool:
        try:
            return mem.read(layout.host(at), 2) == b"\x0f\x05"
        except (ValueError, IndexError, OSError):
            return False

    if vector == 6 and is_syscall(rip):
        return rip
    if vector == 14 and rip == 0 and vm is not None:
        rcx = vm.get_regs()["rcx"]
        if rcx >= 2 and is_syscall(rcx - 2):
            return rcx - 2
    return None


FRAME_I686 = struct.Struct("<5I")  # vector, error, eip, cs, eflags (ascending addresses from esp)


def _i686_fault(mem: SharedMemory, layout: SandboxMemoryLayout, vector_out: int,
                vm: kvm.VirtualMachine | None) -> HyperlightError:
    """The i686 stub pushed error code and vector on the guest's own stack (same CPL)."""
    if vm is None:
        return GuestFault(f"guest fault, vector {vector_out}", vector_out)
    esp = vm.get_regs()["rsp"] & 0xFFFFFFFF
    try:
        vector, error, eip, cs, _eflags = FRAME_I686.unpack(mem.read(layout.host(esp), FRAME_I686.size))
    except (ValueError, IndexError):
        return GuestFault(f"guest fault, vector {vector_out}, with the stack pointer {esp:#x} outside guest "
                          "memory", vector_out)
    if vector != vector_out:
        return GuestFault(f"guest fault report is inconsistent (port said vector {vector_out}, stack says "
                          f"{vector})", vector_out)
    name = VECTOR_NAMES.get(vector, f"vector {vector}")
    return GuestFault(f"guest fault {name} (error code {error:#x}) at eip={eip:#x}", vector, error, eip)


def fault_from_exit(code: int, vm: kvm.VirtualMachine) -> HyperlightError:
    """An exit that is not one of the ABI's ports."""
    pvm = " (kvm-pvm emulates guest CPL0 and 32-bit code)" if device.is_kvm_pvm() else ""
    if code == kvm.EXIT_MMIO:
        d = vm.mmio_detail()
        return MemoryAccessViolation(f"guest {'write' if d['write'] else 'read'} of unbacked guest physical "
                                     f"address {d['address']:#x}", d["address"], "write" if d["write"] else "read",
                                     vector=-1)
    rip = _rip(vm)
    if code == kvm.EXIT_INTERNAL_ERROR:
        e = vm.internal_error()
        data = " ".join(f"{x:#x}" for x in e["data"])
        insn = ""
        if e["suberror"] == 1 and len(e["data"]) >= 3:
            raw = b"".join(x.to_bytes(8, "little") for x in e["data"][1:3])
            insn = f"; instruction bytes {raw.hex(' ')}"
        if e["suberror"] == 1:
            return GuestEmulationFailure(f"KVM could not emulate a guest instruction at rip={rip:#x}{pvm}{insn} "
                                         f"(internal error data: {data})", -1, 0, rip)
        return GuestFault(f"KVM internal error, suberror {e['suberror']}, at rip={rip:#x}{pvm} (data: {data})", -1,
                          0, rip)
    if code == kvm.EXIT_SHUTDOWN:
        return GuestFault(f"guest triple fault (shutdown) near rip={rip:#x}", -1, 0, rip)
    if code == kvm.EXIT_HLT:
        return GuestFault(f"guest executed hlt in CPL0 code at rip={rip:#x}", -1, 0, rip)
    if code == kvm.EXIT_BAD_IO:
        d = vm.io_detail()
        return GuestFault(f"guest port I/O the ABI does not use: {'out' if d['out'] else 'in'} port {d['port']:#x}, "
                          f"size {d['size']}, count {d['count']}", -1, 0, rip)
    if code == kvm.EXIT_FAIL_ENTRY:
        return GuestFault(f"KVM failed to enter the guest (hardware reason {vm.fail_entry_reason():#x})", -1, 0, rip)
    if code >= 0:
        return GuestFault(f"guest wrote to port {code}, which the ABI does not define", -1, 0, rip)
    return GuestFault(f"unexpected KVM exit reason {vm.exit_reason}{pvm} at rip={rip:#x}", -1, 0, rip)


def _rip(vm: kvm.VirtualMachine) -> int:
    try:
        return vm.get_regs()["rip"]
    except OSError:
        return 0
