"""Builds a sandbox's guest memory: ELF image, PEB, system tables and page tables."""
from __future__ import annotations

import struct

from ..abi import ABI_VERSION, PEB_FIELDS, PEB_MAGIC, Profile
from ..errors import InvalidGuestBinary
from .elf import EXCEPTION_STUBS_SYMBOL, THREAD_BLOCK_SYMBOL, ElfImage
from .layout import I686_STUBS_OFFSET, I686_TSS_OFFSET, SandboxMemoryLayout
from .paging import RegionMap, build_page_tables
from .shared_memory import SharedMemory
from .system_tables import IDT_VECTORS, STUB_STRIDE, write_i686_system_page, write_system_tables
from .trampoline import trampoline_code

PROFILE_IDS = {"amd64": int(Profile.AMD64), "i686": int(Profile.I686)}


def write_peb(mem: memoryview, layout: SandboxMemoryLayout) -> None:
    L = layout
    struct.pack_into(f"<{PEB_FIELDS}Q", mem, L.peb_gpa, PEB_MAGIC, ABI_VERSION, L.input_gpa, L.input_size,
                     L.output_gpa, L.output_size, L.heap_gpa, L.heap_size, L.stack_top, L.stack_size,
                     L.code_gpa, L.image_size, L.total_size, L.scratch_gpa, L.scratch_size, L.counter_gpa,
                     PROFILE_IDS[L.profile])


def exception_stubs_gpa(image: ElfImage, layout: SandboxMemoryLayout, name: str) -> int:
    off = image.symbols.get(EXCEPTION_STUBS_SYMBOL)
    if off is None and image.stripped:
        raise InvalidGuestBinary(f"{name}: the ELF is stripped (it has no symbol table), so the host cannot find "
                                 f"{EXCEPTION_STUBS_SYMBOL}; load the unstripped file (do not strip guests or "
                                 "link them with -s)")
    if off is None:
        raise InvalidGuestBinary(f"{name}: no {EXCEPTION_STUBS_SYMBOL} symbol; link the guest with the "
                                 "hlsandbox guest SDK (csrc/sdk/amd64)")
    if off + IDT_VECTORS * STUB_STRIDE > image.size:
        raise InvalidGuestBinary(f"{name}: {EXCEPTION_STUBS_SYMBOL} lies outside the image")
    return layout.code_gpa + off


def thread_pointer(image: ElfImage, layout: SandboxMemoryLayout) -> int:
    """The FS base an amd64 guest starts with: its thread block (the C library's errno,
    locale and stack-protector canary live there), or 0 if it has none."""
    off = image.symbols.get(THREAD_BLOCK_SYMBOL)
    if off is None or layout.profile != "amd64" or off >= image.size:
        return 0
    return layout.code_gpa + off


def build_guest_memory(image: ElfImage, layout: SandboxMemoryLayout, name: str,
                       clear_avx: bool = False) -> SharedMemory:
    """Allocates guest memory and writes everything the guest needs before its first
    instruction. `clear_avx`: see mem/trampoline.py (True on kvm-pvm)."""
    L = layout
    stubs = exception_stubs_gpa(image, L, name) if L.profile == "amd64" else 0
    shm = SharedMemory(L.total_size)
    try:
        with memoryview(shm) as mem:
            image.load_into(mem, L.code_gpa, L.code_gpa)  # the snapshot region: host offset = GPA
            write_peb(mem, L)
            if L.profile == "i686":
                write_i686_system_page(mem, L, I686_STUBS_OFFSET, I686_TSS_OFFSET)
            else:
                write_system_tables(mem, L, stubs)
                code = trampoline_code(clear_avx)
                mem[L.trampoline_gpa:L.trampoline_gpa + len(code)] = code
                regions = RegionMap((r.gpa, r.end, r.flags) for r in L.regions(image))
                with mem.cast("Q") as words:
                    build_page_tables(words, L.pt_gpa, L.pt_size, regions, L.mapped_ranges())
        # Pages every call touches: fault them in now (a guest first touch costs ~5 µs a page).
        shm.prefault(L.system_gpa, L.snapshot_size - L.system_gpa)
        shm.prefault(L.host(L.input_gpa), L.input_size + L.output_size)
        top = min(L.stack_size, 64 << 10)
        shm.prefault(L.host(L.stack_top - top), top + PAGE_SIZE)
    except BaseException:
        shm.close()
        raise
    return shm


PAGE_SIZE = 4096
