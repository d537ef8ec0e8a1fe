"""GDT, IDT and TSS of the amd64 profile, written into the system region."""
from __future__ import annotations

import struct

from ..abi import Port
from .layout import GDT_OFFSET, IDT_OFFSET, TSS_OFFSET, TSS_SIZE, SandboxMemoryLayout

# Ports the guest may use from CPL3 (docs/abi.md); everything else raises #GP.
# Plain ints for the exit dispatch; their home is csrc/sdk/common/hl_abi.h (hlsandbox.abi).
PORT_LOG = int(Port.LOG)
PORT_CALL_FUNCTION = int(Port.CALL_FUNCTION)
PORT_ABORT = int(Port.ABORT)
PORT_PRINT = int(Port.PRINT)
PORT_HALT = int(Port.HALT)
PORT_FAULT = int(Port.FAULT)  # CPL0 stubs only: not in the I/O bitmap
GUEST_PORTS = (PORT_LOG, PORT_CALL_FUNCTION, PORT_ABORT, PORT_PRINT, PORT_HALT)

GDT = (
    0,
    0x00AF9A000000FFFF,  # 0x08 kernel code, 64-bit
    0x00CF92000000FFFF,  # 0x10 kernel data
    0x00CFF2000000FFFF,  # 0x18 user data (SS 0x1b)
    0x00AFFA000000FFFF,  # 0x20 user code, 64-bit (CS 0x23)
)
GDT_LIMIT = (len(GDT) + 2) * 8 - 1  # plus the 16-byte TSS descriptor at 0x28
IDT_VECTORS = 32
IDT_LIMIT = IDT_VECTORS * 16 - 1
STUB_STRIDE = 16
DOUBLE_FAULT = 8


def tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    low = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x8B << 40) | (((limit >> 16) & 0xF) << 48) \
        | (((base >> 24) & 0xFF) << 56)
    return low, base >> 32


def idt_gate(handler: int, ist: int = 0) -> bytes:
    """A 64-bit interrupt gate, DPL 0 (so `int n` from CPL3 raises #GP), selector 0x08."""
    return struct.pack("<HHBBHII", handler & 0xFFFF, 0x08, ist, 0x8E, (handler >> 16) & 0xFFFF,
                       handler >> 32, 0)


def io_bitmap(allowed: tuple[int, ...]) -> bytearray:
    """One bit per port, 1 = denied, plus the trailing 0xff byte the CPU requires."""
    bm = bytearray(b"\xff" * (8192 + 1))
    for port in allowed:
        bm[port // 8] &= ~(1 << (port % 8)) & 0xFF
    return bm


def write_system_tables(mem: memoryview, layout: SandboxMemoryLayout, stubs_gpa: int) -> None:
    """Fills the system region: GDT, IDT (vectors 0-31 to the guest's stubs) and TSS."""
    base = layout.system_gpa
    gdt = list(GDT) + list(tss_descriptor(layout.tss_gpa, TSS_SIZE - 1))
    struct.pack_into(f"<{len(gdt)}Q", mem, base + GDT_OFFSET, *gdt)
    idt = b"".join(idt_gate(stubs_gpa + v * STUB_STRIDE, 1 if v == DOUBLE_FAULT else 0)
                   for v in range(IDT_VECTORS))
    mem[base + IDT_OFFSET:base + IDT_OFFSET + len(idt)] = idt
    tss = base + TSS_OFFSET
    mem[tss:tss + 0x68] = bytes(0x68)
    struct.pack_into("<Q", mem, tss + 4, layout.rsp0)
    struct.pack_into("<Q", mem, tss + 0x24, layout.ist1)
    struct.pack_into("<H", mem, tss + 0x66, 0x68)
    mem[tss + 0x68:tss + TSS_SIZE] = io_bitmap(GUEST_PORTS)


# -- i686 (32-bit protected mode, no paging) --------------------------------------------------

GDT_I686 = (
    0,
    0x00CF9A000000FFFF,  # 0x08 code, 32-bit, flat 4 GiB
    0x00CF92000000FFFF,  # 0x10 data, flat 4 GiB
    0x00008B000000FFFF,  # 0x18 TSS placeholder (base patched below): KVM wants a usable TR
)
GDT_I686_LIMIT = len(GDT_I686) * 8 - 1
IDT_I686_LIMIT = IDT_VECTORS * 8 - 1
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def i686_stub(vector: int) -> bytes:
    """push 0 (if the CPU pushes no error code); push vector; mov al, vector; out 110, al;
    hlt; jmp back to hlt. 16 bytes at most; emulator-safe instructions only."""
    code = b"" if vector in ERROR_CODE_VECTORS else b"\x6a\x00"
    code += bytes([0x6A, vector, 0xB0, vector, 0xE6, PORT_FAULT, 0xF4, 0xEB, 0xFD])
    assert len(code) <= STUB_STRIDE
    return code.ljust(STUB_STRIDE, b"\xf4")


def write_i686_system_page(mem: memoryview, layout: SandboxMemoryLayout, stubs_offset: int,
                           tss_offset: int) -> None:
    """GDT, IDT (32-bit interrupt gates to the host's stubs) and a TSS in the i686 system page."""
    tss = layout.system_gpa + tss_offset
    gdt = list(GDT_I686)
    gdt[3] |= (tss & 0xFFFFFF) << 16 | ((tss >> 24) & 0xFF) << 56
    struct.pack_into(f"<{len(gdt)}Q", mem, layout.gdt_gpa, *gdt)
    for v in range(IDT_VECTORS):
        handler = layout.system_gpa + stubs_offset + v * STUB_STRIDE
        struct.pack_into("<HHBBH", mem, layout.idt_gpa + v * 8, handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16)
        at = layout.system_gpa + stubs_offset + v * STUB_STRIDE
        mem[at:at + STUB_STRIDE] = i686_stub(v)
