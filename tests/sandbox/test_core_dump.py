"""Guest core dumps (SandboxConfiguration(guest_core_dump=True)): an ELF core file per guest
fault or abort, read back with pyelftools and with gdb."""
from __future__ import annotations

import io
import logging
import re
import shutil
import struct
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

import hlsandbox as hl
from hlsandbox.sandbox.core_dump import PRSTATUS_REGS_OFFSET, USER_REGS
from hlsandbox.sandbox.faults import FRAME

pytestmark = pytest.mark.kvm

HOSTILE_PATH = hl.guests.path("hostileguest")
HOSTILE = hl.GuestBinary.from_path(HOSTILE_PATH)
GDB = shutil.which("gdb")


def make(tmp_path, dump: bool = True, **kw) -> hl.MultiUseSandbox:
    cfg = hl.SandboxConfiguration(guest_core_dump=dump, core_dump_dir=str(tmp_path), **kw)
    u = hl.UninitializedSandbox(HOSTILE, cfg)
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    return u.evolve()


class Core:
    """A core file parsed with pyelftools."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.data = f.read()
        self.elf = ELFFile(io.BytesIO(self.data))
        self.loads = [s for s in self.elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        notes = [s for s in self.elf.iter_segments() if s["p_type"] == "PT_NOTE"]
        assert len(notes) == 1
        self.notes = {n["n_type"]: n for n in notes[0].iter_notes()}
        desc = self.notes["NT_PRSTATUS"]["n_descdata"]
        assert len(desc) == 336  # struct elf_prstatus on x86-64
        self.signal = struct.unpack_from("<h", desc, 12)[0]
        values = struct.unpack_from(f"<{len(USER_REGS)}Q", desc, PRSTATUS_REGS_OFFSET)
        self.regs = dict(zip(USER_REGS, values, strict=True))

    def read(self, addr: int, n: int) -> bytes:
        for s in self.loads:
            if s["p_vaddr"] <= addr and addr + n <= s["p_vaddr"] + s["p_memsz"]:
                off = s["p_offset"] + addr - s["p_vaddr"]
                return self.data[off:off + n].ljust(n, b"\0")  # sparse tail
        raise KeyError(f"{addr:#x} is in no PT_LOAD segment")


def guest_memory(sb: hl.MultiUseSandbox, gpa: int, n: int) -> bytes:
    L = sb.layout
    return sb._memory.read(L.host(gpa) if hasattr(L, "host") else gpa, n)


def saved_frame(sb: hl.MultiUseSandbox) -> dict:
    """The fault frame the SDK's stub left on the CPL0 stack (docs/abi.md, Faults)."""
    top = sb.layout.rsp0
    names = ("cr2", "rax", "vector", "error", "rip", "cs", "rflags", "rsp", "ss")
    return dict(zip(names, FRAME.unpack(guest_memory(sb, top - FRAME.size, FRAME.size)), strict=True))


def gdb(core: str, *commands: str) -> str:
    args = [GDB, "-nx", "-batch"]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run(args + [HOSTILE_PATH, core], capture_output=True, text=True, timeout=120)
    return r.stdout


def test_off_by_default(tmp_path):
    assert hl.SandboxConfiguration().guest_core_dump is False
    with make(tmp_path, dump=False) as sb:
        with pytest.raises(hl.MemoryAccessViolation) as ei:
            sb.call("ReadAddress", 0)
    assert ei.value.core_dump is None
    assert list(tmp_path.iterdir()) == []


def test_memory_access_violation_core(tmp_path):
    with make(tmp_path) as sb:
        with pytest.raises(hl.MemoryAccessViolation) as ei:
            sb.call("ReadAddress", 0x18)
        e = ei.value
        frame = saved_frame(sb)
        L = sb.layout
        code_at_rip = guest_memory(sb, e.rip, 16)
        stack = guest_memory(sb, frame["rsp"], 64)

    assert e.core_dump is not None and e.core_dump.startswith(str(tmp_path))
    core = Core(e.core_dump)
    h = core.elf.header
    assert (h["e_type"], h["e_machine"], core.elf.elfclass, core.elf.little_endian) == (
        "ET_CORE", "EM_X86_64", 64, True)
    assert core.signal == 11  # SIGSEGV
    r = core.regs
    # rip, cs, rflags, rsp, ss from the CPU's frame; rax from the stub's saved copy (the
    # stub itself put the vector in rax).
    assert r["rip"] == e.rip == frame["rip"]
    assert (r["rsp"], r["eflags"], r["cs"], r["ss"]) == (frame["rsp"], frame["rflags"], 0x23, 0x1b)
    assert r["rax"] == frame["rax"]
    assert L.stack_gpa <= r["rsp"] < L.stack_top
    # Memory: the code at rip and the stack at rsp are in the core, byte for byte; the
    # loaded ELF header and the PEB too; the page tables and system region are not.
    assert core.read(r["rip"], 16) == code_at_rip
    assert core.read(r["rsp"], 64) == stack
    assert core.read(L.code_gpa, 4) == b"\x7fELF"
    assert core.read(L.peb_gpa, 8) == struct.pack("<Q", 0x0142455050424C48)
    for addr in (L.pt_gpa, L.system_gpa, L.guard_gpa, 0):
        with pytest.raises(KeyError):
            core.read(addr, 8)
    assert "NT_AUXV" in core.notes and "NT_PRPSINFO" in core.notes


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
def test_gdb_reads_the_core(tmp_path):
    with make(tmp_path) as sb:
        with pytest.raises(hl.MemoryAccessViolation) as ei:
            sb.call("ReadAddress", 0)
    e = ei.value
    out = gdb(e.core_dump, "info registers", "bt")
    m = re.search(r"^rip\s+(0x[0-9a-f]+)", out, re.M)
    assert m, out
    assert int(m.group(1), 16) == e.rip
    assert re.search(r"^cs\s+0x23\b", out, re.M), out
    # gdb relocated the static PIE to its load address (NT_AUXV's AT_ENTRY): symbols resolve.
    assert "read_address" in out and "run_call" in out, out


def test_stack_overflow_core(tmp_path):
    with make(tmp_path) as sb:
        with pytest.raises(hl.StackOverflow) as ei:
            sb.call("StackOverflow", 1_000_000)
        guard = sb.layout.guard_gpa
    core = Core(ei.value.core_dump)
    assert core.regs["rip"] == ei.value.rip
    assert guard <= core.regs["rsp"] < guard + 8192


def test_fault_reported_by_an_exit_core(tmp_path):
    # `in` from an allowed port is not a CPU exception: the registers all come from KVM.
    with make(tmp_path) as sb:
        with pytest.raises(hl.GuestFault, match="in port") as ei:
            sb.call("PortIo", 2)
        L = sb.layout
    core = Core(ei.value.core_dump)
    assert L.code_gpa <= core.regs["rip"] < L.snapshot_size
    assert core.regs["cs"] == 0x23


def test_abort_core(tmp_path):
    with make(tmp_path) as sb:
        with pytest.raises(hl.GuestAborted) as ei:
            sb.call("AbortMidHostCall", 1)
        L = sb.layout
    core = Core(ei.value.core_dump)
    assert core.signal == 6  # SIGABRT
    assert L.code_gpa <= core.regs["rip"] < L.snapshot_size
    assert L.stack_gpa <= core.regs["rsp"] < L.stack_top


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
def test_gdb_backtrace_of_an_abort(tmp_path):
    with make(tmp_path) as sb:
        with pytest.raises(hl.GuestAborted) as ei:
            sb.call("AbortMidHostCall", 1)
    out = gdb(ei.value.core_dump, "bt")
    assert "abort_mid_host_call" in out, out


@pytest.mark.parametrize("name,args,exc", [
    ("CorruptTop", (0,), hl.GuestProtocolError),
    ("Spin", (), hl.ExecutionTimeout),
])
def test_no_core_for_protocol_errors_or_cancellation(tmp_path, name, args, exc):
    with make(tmp_path) as sb:
        with pytest.raises(exc) as ei:
            sb.call(name, *args, timeout=0.2)
    assert getattr(ei.value, "core_dump", None) is None
    assert list(tmp_path.iterdir()) == []


def test_a_failing_dump_does_not_hide_the_fault(tmp_path, caplog):
    missing = tmp_path / "no" / "such" / "dir"
    cfg = hl.SandboxConfiguration(guest_core_dump=True, core_dump_dir=str(missing))
    with hl.UninitializedSandbox(HOSTILE, cfg).evolve() as sb, caplog.at_level(logging.WARNING):
        with pytest.raises(hl.MemoryAccessViolation) as ei:
            sb.call("ReadAddress", 0)
    assert ei.value.core_dump is None
    assert "could not write a guest core dump" in caplog.text


@pytest.mark.parametrize("field,value", [("guest_core_dump", "yes"), ("guest_core_dump", 1),
                                         ("core_dump_dir", 5)])
def test_configuration_is_checked(field, value):
    with pytest.raises(hl.InvalidConfiguration, match=field):
        hl.SandboxConfiguration(**{field: value})
