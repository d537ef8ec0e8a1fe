"""The guest memory layout of the amd64 profile (docs/abi.md, "Memory layout")."""
from __future__ import annotations

import types
from dataclasses import dataclass

from .elf import PF_W, PF_X, ElfImage

PAGE = 4096
# Page-table entry bits.
P, RW, US, NX = 1, 2, 4, 1 << 63
USER_RX = P | US
USER_RO = P | US | NX
USER_RW = P | RW | US | NX
SUPERVISOR_RW = P | RW | NX
NOT_PRESENT = 0

# The system region: fixed offsets from its start.
GDT_OFFSET = 0x0000
IDT_OFFSET = 0x1000
TSS_OFFSET = 0x2000
TSS_SIZE = 0x68 + 8192 + 1  # TSS, I/O bitmap for every port, the trailing 0xff byte
CPL0_STACK_OFFSET = 0x5000  # two pages: 0x5000..0x7000, RSP0 = top
DF_STACK_OFFSET = 0x7000  # one page: 0x7000..0x8000, IST1 = top
SYSTEM_SIZE = 0x8000

PEB_SIZE = PAGE
# The restore trampoline page (user RX, host-written): code at 0, the jump target at
# TRAMPOLINE_TARGET, the FXSAVE image to load at TRAMPOLINE_FXSAVE (see mem/trampoline.py).
TRAMPOLINE_TARGET = 0x100
TRAMPOLINE_FXSAVE = 0x200
LOGGED_SLOT = 1  # the KVM memory slot that logs dirty pages (see SandboxMemoryLayout.slots)
STACK_COPY = 16 << 10


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Region:
    """A page-aligned range of guest memory and the page-table flags of its pages."""

    name: str
    gpa: int
    size: int
    flags: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


def page_table_pages(total: int) -> int:
    """Pages needed for 4-level tables mapping [0, total) with 4 KiB pages."""
    pts = -(-total // (PAGE * 512))
    pds = -(-pts // 512)
    pdpts = -(-pds // 512)
    return 1 + pdpts + pds + pts


class SandboxMemoryLayout:
    """Where every region lives; all addresses are GPAs (= guest virtual addresses)."""

    def __init__(self, image: ElfImage, heap_size: int, stack_size: int, input_size: int,
                 output_size: int) -> None:
        self.heap_size, self.stack_size = heap_size, stack_size
        self.input_size, self.output_size = input_size, output_size
        self.image_size = align_up(image.size, PAGE)
        self.image_align = image.align
        self.pt_gpa = PAGE
        pt_pages = 1
        while True:  # the page tables' size depends on the total, which includes them
            self._place(image, pt_pages)
            need = page_table_pages(self.total_size)
            if need <= pt_pages:
                break
            pt_pages = need
        self.pt_size = pt_pages * PAGE

    def _place(self, image: ElfImage, pt_pages: int) -> None:
        at = self.pt_gpa + pt_pages * PAGE
        self.system_gpa = at
        at += SYSTEM_SIZE
        self.peb_gpa = at
        at += PEB_SIZE
        self.trampoline_gpa = at
        at += PAGE
        self.code_gpa = align_up(at, image.align)
        at = self.code_gpa + self.image_size
        self.input_gpa = at
        at += self.input_size
        self.output_gpa = at
        at += self.output_size
        self.heap_gpa = at
        at += self.heap_size
        self.guard_gpa = at
        at += PAGE
        self.stack_gpa = at
        at += self.stack_size
        self.stack_top = at
        self.total_size = at

    @property
    def gdt_gpa(self) -> int:
        return self.system_gpa + GDT_OFFSET

    @property
    def idt_gpa(self) -> int:
        return self.system_gpa + IDT_OFFSET

    @property
    def tss_gpa(self) -> int:
        return self.system_gpa + TSS_OFFSET

    @property
    def rsp0(self) -> int:
        return self.system_gpa + DF_STACK_OFFSET

    @property
    def ist1(self) -> int:
        return self.system_gpa + SYSTEM_SIZE

    def regions(self, image: ElfImage) -> list[Region]:
        """Every region with its page-table flags, in address order, gaps not present."""
        out = [
            Region("null", 0, PAGE, NOT_PRESENT),
            Region("page_tables", self.pt_gpa, self.pt_size, NOT_PRESENT),
            Region("system", self.system_gpa, SYSTEM_SIZE, SUPERVISOR_RW),
            Region("peb", self.peb_gpa, PEB_SIZE, USER_RO),
            Region("trampoline", self.trampoline_gpa, PAGE, USER_RX),
        ]
        out += self._code_regions(image)
        out += [
            Region("input", self.input_gpa, self.input_size, USER_RW),
            Region("output", self.output_gpa, self.output_size, USER_RW),
            Region("heap", self.heap_gpa, self.heap_size, USER_RW),
            Region("guard", self.guard_gpa, PAGE, NOT_PRESENT),
            Region("stack", self.stack_gpa, self.stack_size, USER_RW),
        ]
        return out

    def _code_regions(self, image: ElfImage) -> list[Region]:
        """One region per run of code pages with the same flags; a page shared by
        two segments gets the union of their permissions."""
        npages = self.image_size // PAGE
        page_flags = [0] * npages
        for seg in image.segments:
            first, last = seg.vaddr // PAGE, (seg.vaddr + seg.memsz - 1) // PAGE
            for p in range(first, last + 1):
                page_flags[p] |= seg.flags | 0x100  # 0x100: mapped
        out: list[Region] = []
        for p, f in enumerate(page_flags):
            flags = NOT_PRESENT
            if f & 0x100:
                flags = USER_RX if f & PF_X else USER_RO
                if f & PF_W:
                    flags = (flags | RW) if f & PF_X else USER_RW
            gpa = self.code_gpa + p * PAGE
            if out and out[-1].flags == flags and out[-1].end == gpa:
                last = out[-1]
                out[-1] = Region(last.name, last.gpa, last.size + PAGE, flags)
            else:
                out.append(Region("code", gpa, PAGE, flags))
        if self.code_gpa > self.trampoline_gpa + PAGE:  # alignment padding before the image
            pad = self.trampoline_gpa + PAGE
            out.insert(0, Region("padding", pad, self.code_gpa - pad, NOT_PRESENT))
        return out

    @property
    def stack_copy_size(self) -> int:
        """The top of the stack that restores copy whole: every call writes it."""
        return min(self.stack_size, STACK_COPY)

    def slots(self) -> list[tuple[int, int, bool]]:
        """KVM memory slots (gpa, size, log_dirty). The heap, the guard page and the deep
        stack log the pages the guest writes, so restoring them costs what was written.
        What every call writes (I/O buffers, the top of the stack) is cheaper copied
        whole than logged (a logged write costs a write-protection fault), so it lives
        in slots without logging; see copied_ranges()."""
        split = self.stack_top - self.stack_copy_size
        return [(0, self.heap_gpa, False), (self.heap_gpa, split - self.heap_gpa, True),
                (split, self.stack_copy_size, False)]

    def copied_ranges(self) -> list[tuple[int, int]]:
        """(gpa, size) of the unlogged memory a guest can write, other than its globals:
        restores copy these whole."""
        return [(self.input_gpa, self.output_gpa + self.output_size - self.input_gpa),
                (self.stack_top - self.stack_copy_size, self.stack_copy_size)]

    def writable_image_ranges(self, image: ElfImage) -> list[tuple[int, int]]:
        """(gpa, size) of the image's writable pages: the guest's globals."""
        out: list[tuple[int, int]] = []
        for seg in image.segments:
            if seg.flags & PF_W:
                start = self.code_gpa + seg.vaddr // PAGE * PAGE
                end = self.code_gpa + align_up(seg.vaddr + seg.memsz, PAGE)
                if out and out[-1][0] + out[-1][1] >= start:
                    prev = out.pop()
                    start, end = prev[0], max(end, prev[0] + prev[1])
                out.append((start, end - start))
        return out

    _KEYS = ("image_size", "image_align", "pt_gpa", "pt_size", "system_gpa", "peb_gpa", "trampoline_gpa", "code_gpa", "input_gpa",
             "input_size", "output_gpa", "output_size", "heap_gpa", "heap_size", "guard_gpa", "stack_gpa",
             "stack_size", "stack_top", "total_size")

    def describe(self) -> dict[str, int]:
        """The layout as plain numbers (for snapshots, debugging and tests)."""
        return {k: getattr(self, k) for k in self._KEYS}

    @classmethod
    def from_dict(cls, d: dict) -> "SandboxMemoryLayout":
        """Rebuilds a layout from describe(); raises ValueError if d is not one."""
        if not isinstance(d, dict) or set(d) != set(cls._KEYS):
            raise ValueError("layout fields missing or unknown")
        if not all(type(v) is int and 0 <= v < 1 << 48 for v in d.values()):
            raise ValueError("layout fields must be non-negative integers below 2**48")
        align = d["image_align"]
        if align < PAGE or align > 1 << 21 or align & (align - 1):
            raise ValueError(f"image alignment {align:#x} is invalid")
        try:
            layout = cls(types.SimpleNamespace(size=d["image_size"], align=align), d["heap_size"], d["stack_size"],
                         d["input_size"], d["output_size"])
        except Exception as e:  # sizes that no configuration produces
            raise ValueError(f"layout sizes are invalid: {e}") from None
        if layout.describe() != d:
            bad = sorted(k for k in cls._KEYS if layout.describe()[k] != d[k])
            raise ValueError(f"layout is inconsistent: {', '.join(bad)}")
        return layout
