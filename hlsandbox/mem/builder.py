"""Builds a sandbox's guest memory: ELF image, PEB, system tables and page tables."""
from __future__ import annotations

import struct

import numpy as np

from ..errors import InvalidGuestBinary
from .elf import EXCEPTION_STUBS_SYMBOL, ElfImage
from .layout import SandboxMemoryLayout
from .paging import RegionMap, build_page_tables
from .shared_memory import SharedMemory
from .system_tables import IDT_VECTORS, STUB_STRIDE, write_system_tables
from .trampoline import trampoline_code

PEB_MAGIC = 0x0142455050424C48  # b"HLBPPEB\x01" little-endian
ABI_VERSION = 1


def write_peb(mem: memoryview, layout: SandboxMemoryLayout) -> None:
    L = layout
    struct.pack_into("<13Q", mem, L.peb_gpa, PEB_MAGIC, ABI_VERSION, L.input_gpa, L.input_size,
                     L.output_gpa, L.output_size, L.heap_gpa, L.heap_size, L.stack_top, L.stack_size,
                     L.code_gpa, L.image_size, L.total_size)


def exception_stubs_gpa(image: ElfImage, layout: SandboxMemoryLayout, name: str) -> int:
    off = image.symbols.get(EXCEPTION_STUBS_SYMBOL)
    if off is None:
        raise InvalidGuestBinary(f"{name}: no {EXCEPTION_STUBS_SYMBOL} symbol; link the guest with the "
                                 "hlsandbox guest SDK (csrc/guest)")
    if off + IDT_VECTORS * STUB_STRIDE > image.size:
        raise InvalidGuestBinary(f"{name}: {EXCEPTION_STUBS_SYMBOL} lies outside the image")
    return layout.code_gpa + off


def build_guest_memory(image: ElfImage, layout: SandboxMemoryLayout, name: str,
                       clear_avx: bool = False) -> SharedMemory:
    """Allocates guest memory and writes everything the guest needs before its first
    instruction. `clear_avx`: see mem/trampoline.py (True on kvm-pvm)."""
    stubs = exception_stubs_gpa(image, layout, name)
    shm = SharedMemory(layout.total_size)
    try:
        with memoryview(shm) as mem:
            image.load_into(mem, layout.code_gpa, layout.code_gpa)
            write_peb(mem, layout)
            write_system_tables(mem, layout, stubs)
            code = trampoline_code(clear_avx)
            mem[layout.trampoline_gpa:layout.trampoline_gpa + len(code)] = code
            regions = RegionMap((r.gpa, r.end, r.flags) for r in layout.regions(image))
            build_page_tables(np.frombuffer(mem, dtype=np.uint64), layout.pt_gpa, layout.total_size, regions)
        # Pages every call touches: fault them in now (a guest first touch costs ~5 µs a page).
        shm.prefault(layout.system_gpa, layout.heap_gpa - layout.system_gpa)
        shm.prefault(layout.stack_top - min(layout.stack_size, 64 << 10), min(layout.stack_size, 64 << 10))
    except BaseException:
        shm.close()
        raise
    return shm
