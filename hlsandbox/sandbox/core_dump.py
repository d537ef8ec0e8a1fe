"""Guest crash dumps: an ELF64 core file (ET_CORE, EM_X86_64) of a guest that faulted or aborted.

Enabled with `SandboxConfiguration(guest_core_dump=True)`; the file goes to
`core_dump_dir` and its path to the exception's `core_dump` attribute (None when
dumps are off or writing failed). Open it with the guest's ELF:

    gdb -batch -ex 'info registers' -ex bt path/to/guest.elf /tmp/hlsandbox-core-....core

The file holds:

- a PT_NOTE segment with NT_PRSTATUS (the guest's general registers in
  `user_regs_struct` order), NT_PRPSINFO, and NT_AUXV (AT_ENTRY, AT_PHDR...,
  so gdb relocates the static-PIE guest's symbols to its load address);
- one PT_LOAD segment per guest memory region the guest can see (PEB,
  trampoline, code, input and output buffers, heap, stack, host page), with
  vaddr = the guest physical address, since the guest is identity mapped. The
  null page, the page tables, the system region (GDT, IDT, TSS, CPL0 stacks)
  and the stack guard page are left out. All-zero blocks are not written, so
  the file is sparse.

Only the amd64 profile is dumped (an i686 guest's exception leaves `core_dump`
None).

Registers: for a CPU exception the vCPU sits in the SDK's CPL0 fault stub, so
rip, cs, rflags, rsp and ss come from the frame the CPU pushed on the CPL0
stack, and rax from the stub's saved copy (the stub clobbers rax); the other
general registers are untouched by the stub and come from KVM_GET_REGS. For an
abort or an exit that is not a fault report (MMIO, bad port I/O...), the vCPU
stopped in guest code and every register comes from KVM_GET_REGS. fs_base and
gs_base are reported as 0 (a libc guest's real fs_base is its thread block,
hl_tcb: docs/abi.md) and ds/es/fs/gs as the stack selector, as set up by the
host.

Everything read from guest memory is untrusted and only copied into the
file; writing a dump never replaces the guest's exception: a failure is
logged and leaves `core_dump` None.
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
from typing import Any, Protocol

from ..errors import GuestAborted, GuestFault
from ..mem.layout import SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory
from ..mem.system_tables import DOUBLE_FAULT, PORT_FAULT
from .faults import FRAME


class StoppedVcpu(Protocol):
    """The vCPU state a dump reads (hypervisor.kvm.VirtualMachine has it)."""

    def get_regs(self) -> dict[str, int]: ...
    def get_sregs(self) -> dict[str, Any]: ...
    def io_byte(self) -> int: ...

LOG = logging.getLogger("hlsandbox.core_dump")

ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_ENTRY = 0, 3, 4, 5, 6, 7, 9

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # 56 bytes
PRSTATUS_SIZE = 336  # struct elf_prstatus on x86-64
PRSTATUS_REGS_OFFSET = 112  # pr_reg
PRPSINFO = struct.Struct("<ccccxxxxQIIiiii16s80s")  # struct elf_prpsinfo, 136 bytes
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
             "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es",
             "fs", "gs")
PAGE = 4096
BLOCK = 64 << 10  # granularity of the all-zero check that keeps the file sparse
_ZERO_BLOCK = bytes(BLOCK)

# CPU exception vector -> the signal Linux would report for it.
SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGILL = 5, 6, 7, 8, 11, 4
_SIGNALS = {0: SIGFPE, 1: SIGTRAP, 3: SIGTRAP, 4: SIGSEGV, 5: SIGSEGV, 6: SIGILL, 7: SIGSEGV, 8: SIGSEGV,
            12: SIGBUS, 13: SIGSEGV, 14: SIGSEGV, 16: SIGFPE, 17: SIGBUS, 19: SIGFPE}


def attach_core_dump(exc: BaseException, rc: int, directory: str | os.PathLike[str] | None,
                     memory: SharedMemory, layout: SandboxMemoryLayout, vcpu: StoppedVcpu) -> BaseException:
    """Sets `exc.core_dump` for a guest fault or abort and returns exc: the path of a dump
    written into `directory` (None: dumps are off, and `core_dump` is None). `rc` is the
    exit that stopped the guest; `vcpu` is stopped there."""
    if not isinstance(exc, (GuestFault, GuestAborted)):
        return exc
    exc.core_dump = None
    if directory is None:
        return exc
    if layout.profile != "amd64":
        LOG.debug("no guest core dump: only the amd64 profile is supported")
        return exc
    try:
        regs = guest_registers(memory, layout, vcpu, rc)
        exc.core_dump = write_core_dump(memory, layout, regs, exc, directory)
    except Exception as e:  # a dump must never hide the guest's own error
        LOG.warning("could not write a guest core dump: %s: %s", type(e).__name__, e)
    return exc


def _read(memory: SharedMemory, layout: SandboxMemoryLayout, gpa: int, n: int) -> bytes:
    """n bytes of guest memory at guest physical address gpa."""
    return memory.read(layout.host(gpa), n)


def guest_registers(memory: SharedMemory, layout: SandboxMemoryLayout, vcpu: StoppedVcpu, rc: int) -> dict[str, int]:
    """The guest's registers at the fault or abort, named as in user_regs_struct."""
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    r = {name: regs.get(name, 0) for name in USER_REGS}
    r["eflags"] = regs["rflags"]
    r["cs"], r["ss"] = sregs["cs"], sregs["ss"]
    if rc == PORT_FAULT:
        L = layout
        top = L.ist1 if vcpu.io_byte() == DOUBLE_FAULT else L.rsp0
        _cr2, rax, _vector, _error, rip, cs, rflags, rsp, ss = FRAME.unpack(
            _read(memory, layout, top - FRAME.size, FRAME.size))
        r.update(rax=rax, rip=rip, cs=cs, eflags=rflags, rsp=rsp, ss=ss)
    r["orig_rax"] = 2**64 - 1  # not in a system call
    r["fs_base"] = r["gs_base"] = 0
    r["ds"] = r["es"] = r["fs"] = r["gs"] = r["ss"]
    return {k: v & (2**64 - 1) for k, v in r.items()}


def _signal_of(exc: BaseException) -> int:
    if isinstance(exc, GuestAborted):
        return SIGABRT
    return _SIGNALS.get(getattr(exc, "vector", -1), SIGSEGV)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name += b"\0"
    return struct.pack("<III", len(name), len(desc), ntype) + _pad4(name) + _pad4(desc)


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _prstatus(regs: dict[str, int], signal: int) -> bytes:
    b = bytearray(PRSTATUS_SIZE)
    struct.pack_into("<iii", b, 0, signal, 0, 0)  # pr_info
    struct.pack_into("<h", b, 12, signal)  # pr_cursig
    struct.pack_into("<iiii", b, 32, 1, 0, 1, 1)  # pr_pid, pr_ppid, pr_pgrp, pr_sid
    struct.pack_into(f"<{len(USER_REGS)}Q", b, PRSTATUS_REGS_OFFSET, *(regs[n] for n in USER_REGS))
    return bytes(b)


def _prpsinfo(name: str) -> bytes:
    fname = os.path.basename(name).encode("utf-8", "replace")[:15]
    return PRPSINFO.pack(b"\0", b"R", b"\0", b"\0", 0, 0, 0, 1, 0, 1, 1, fname,
                         name.encode("utf-8", "replace")[:79])


def _auxv(memory: SharedMemory, layout: SandboxMemoryLayout) -> bytes | None:
    """AT_ENTRY/AT_PHDR of the loaded guest, from the ELF header the host loaded at the code
    base (the first PT_LOAD of a static PIE covers it); None if it is not there."""
    L = layout
    head = _read(memory, layout, L.code_gpa, 64)
    if head[:4] != b"\x7fELF":
        return None
    entry, phoff = struct.unpack_from("<QQ", head, 24)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    pairs = [(AT_PHDR, L.code_gpa + phoff), (AT_PHENT, phentsize), (AT_PHNUM, phnum), (AT_PAGESZ, PAGE),
             (AT_BASE, 0), (AT_ENTRY, L.code_gpa + entry), (AT_NULL, 0)]
    return b"".join(struct.pack("<QQ", k, v & (2**64 - 1)) for k, v in pairs)


def _segments(L: SandboxMemoryLayout) -> list[tuple[int, int, int]]:
    """(gpa, size, flags) of the regions the guest can see. The code region's pages have
    per-segment permissions; the core marks it all RWX (gdb does not mind)."""
    segs = [
        (L.peb_gpa, L.code_gpa - L.peb_gpa, PF_R | PF_X),  # PEB (and the restore trampoline)
        (L.code_gpa, L.snapshot_size - L.code_gpa, PF_R | PF_W | PF_X),  # the image ends the snapshot region
        (L.heap_gpa, L.heap_size, PF_R | PF_W),
        (L.stack_gpa, L.stack_size, PF_R | PF_W),
        (L.input_gpa, L.input_size, PF_R | PF_W),
        (L.output_gpa, L.output_size, PF_R | PF_W),
        (L.host_page_gpa, PAGE, PF_R),
    ]
    return [s for s in segs if s[1] > 0]


def write_core_dump(memory: SharedMemory, layout: SandboxMemoryLayout, regs: dict[str, int],
                    exc: BaseException, directory: str | os.PathLike[str]) -> str:
    """Writes the core file of the guest in `memory`, stopped with registers `regs` by
    `exc`, into `directory`; returns its path."""
    name = "hlsandbox-guest"
    notes = _note(b"CORE", NT_PRSTATUS, _prstatus(regs, _signal_of(exc)))
    notes += _note(b"CORE", NT_PRPSINFO, _prpsinfo(name))
    auxv = _auxv(memory, layout)
    if auxv is not None:
        notes += _note(b"CORE", NT_AUXV, auxv)
    segs = _segments(layout)
    phnum = 1 + len(segs)
    note_off = EHDR.size + phnum * PHDR.size
    data_off = (note_off + len(notes) + PAGE - 1) // PAGE * PAGE
    phdrs = [PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(notes), 0, 4)]
    offsets = []
    off = data_off
    for gpa, size, flags in segs:
        phdrs.append(PHDR.pack(PT_LOAD, flags, off, gpa, gpa, size, size, PAGE))
        offsets.append(off)
        off += size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, little-endian, EV_CURRENT, SysV
    ehdr = EHDR.pack(ident, ET_CORE, EM_X86_64, 1, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 0, 0, 0)

    fd, path = tempfile.mkstemp(prefix="hlsandbox-core-", suffix=".core", dir=os.fspath(directory))
    try:
        os.write(fd, ehdr + b"".join(phdrs) + notes)
        with memoryview(memory) as mem:
            for (gpa, size, _), at in zip(segs, offsets, strict=True):
                host = layout.host(gpa)
                for start in range(0, size, BLOCK):
                    block = mem[host + start:host + min(size, start + BLOCK)]
                    zero = _ZERO_BLOCK if len(block) == BLOCK else bytes(len(block))
                    if block.tobytes() != zero:
                        os.pwrite(fd, block, at + start)
        os.ftruncate(fd, off)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path
