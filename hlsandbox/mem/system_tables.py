"""GDT, IDT and TSS of the amd64 profile, written into the system region."""
from __future__ import annotations

import struct

from .layout import GDT_OFFSET, IDT_OFFSET, TSS_OFFSET, TSS_SIZE, SandboxMemoryLayout

# Ports the guest may use from CPL3 (docs/abi.md); everything else raises #GP.
PORT_LOG = 99
PORT_CALL_FUNCTION = 101
PORT_ABORT = 102
PORT_PRINT = 103
PORT_HALT = 108
PORT_FAULT = 110  # CPL0 stubs only: not in the I/O bitmap
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
