"""The guest memory layout of both profiles (docs/abi.md, "Memory layout")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..abi import HOT_MAILBOX_SIZE  # amd64: the hot-mode mailbox, the top bytes of the stack region
from ..errors import InvalidConfiguration
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
STACK_COPY = 16 << 10
HOST_PAGE = PAGE  # the top page of scratch: host-written (the GuestCounter)
GUEST_COUNTER_OFFSET = 0x1000  # the GuestCounter's distance below the top of scratch

PROFILES = ("amd64", "i686")
APIC_PAGE = 0xFEE00000
# The highest guest physical address each profile's scratch region may reach. amd64:
# 36 bits is the physical address width of a vCPU without a CPUID table, which is how
# hlsandbox creates them on kvm-pvm (hypervisor/device.pyx, cpuid_needed()).
ADDRESS_LIMIT = {"amd64": 1 << 36, "i686": 1 << 32}
# i686: fixed places below the image (which starts at or above 0x10000).
I686_SYSTEM_GPA = 0x1000
I686_GDT_OFFSET, I686_IDT_OFFSET, I686_STUBS_OFFSET, I686_TSS_OFFSET = 0x000, 0x100, 0x200, 0x400
I686_PEB_GPA = 0x2000


# Smallest and largest value of each size a layout is made with (bytes; whole pages once a
# SandboxConfiguration rounded them). Keyed by the configuration's names.
SIZE_LIMITS = {
    "heap_size": (PAGE, 64 << 30),
    "stack_size": (2 * PAGE, 1 << 30),
    "input_data_size": (PAGE, 1 << 30),
    "output_data_size": (PAGE, 1 << 30),
}


class ImageShape(Protocol):
    """What placing a guest image needs: an ElfImage, or the same fields read back from
    a snapshot's layout."""

    @property
    def size(self) -> int: ...
    @property
    def align(self) -> int: ...
    @property
    def profile(self) -> str: ...
    @property
    def link_base(self) -> int | None: ...


@dataclass(frozen=True)
class _PlacedImage:
    size: int
    align: int
    profile: str
    link_base: int | None


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
    return page_table_pages_for([(0, total)])


def _index_count(ranges: list[tuple[int, int]], shift: int) -> int:
    """How many distinct values addr >> shift takes over the ranges."""
    spans = sorted((a >> shift, (b - 1) >> shift) for a, b in ranges if b > a)
    count, last = 0, -1
    for lo, hi in spans:
        lo = max(lo, last + 1)
        if hi >= lo:
            count += hi - lo + 1
            last = hi
    return count


def page_table_pages_for(ranges: list[tuple[int, int]]) -> int:
    """Pages needed for 4-level tables mapping the [start, end) ranges with 4 KiB pages."""
    return 1 + _index_count(ranges, 39) + _index_count(ranges, 30) + _index_count(ranges, 21)


class SandboxMemoryLayout:
    """Where every region lives. Attributes ending in _gpa are guest physical (= virtual)
    addresses; host(gpa) turns one into an offset in the host mapping, which holds the
    snapshot region (at GPA 0) followed by the scratch region (at scratch_gpa)."""

    def __init__(self, image: ImageShape, heap_size: int, stack_size: int, input_size: int,
                 output_size: int, scratch_base: int | None = None, profile: str | None = None) -> None:
        self.profile: str = profile or image.profile
        if self.profile not in PROFILES:
            raise InvalidConfiguration(f"profile={self.profile!r}: use one of {', '.join(PROFILES)}")
        image_profile = image.profile
        if image_profile != self.profile:
            raise InvalidConfiguration(f"profile={self.profile!r} but the guest binary is an {image_profile} ELF")
        self.heap_size, self.stack_size = heap_size, stack_size
        self.input_size, self.output_size = input_size, output_size
        self.image_size = align_up(image.size, PAGE)
        self.image_align = image.align
        self._place_scratch_parts()
        if self.profile == "i686":
            self._place_i686(image)
            self.pt_gpa = self.pt_size = 0
            self._place_scratch(scratch_base)
        else:
            self.pt_gpa = PAGE
            pt_pages = 1
            while True:  # the tables' size depends on where everything is, which depends on it
                self._place_amd64(image, pt_pages)
                self._place_scratch(scratch_base)
                need = page_table_pages_for([(self.system_gpa, self.snapshot_size),
                                             (self.scratch_gpa, self.scratch_gpa + self.scratch_size)])
                if need <= pt_pages:
                    break
                pt_pages = need
            self.pt_size = pt_pages * PAGE

    # -- placement -------------------------------------------------------------------------

    def _place_amd64(self, image: ImageShape, pt_pages: int) -> None:
        at = self.pt_gpa + pt_pages * PAGE
        self.system_gpa = at
        at += SYSTEM_SIZE
        self.peb_gpa = at
        at += PEB_SIZE
        self.trampoline_gpa = at
        at += PAGE
        self.code_gpa = align_up(at, image.align)
        self.snapshot_size = self.code_gpa + self.image_size

    def _place_i686(self, image: ImageShape) -> None:
        self.system_gpa = I686_SYSTEM_GPA
        self.peb_gpa = I686_PEB_GPA
        self.trampoline_gpa = 0
        self.code_gpa = image.link_base if image.link_base is not None else 0x100000
        self.snapshot_size = self.code_gpa + self.image_size

    def _place_scratch_parts(self) -> None:
        """Offsets inside the scratch region: heap, guard, stack, buffers, host page. What
        every call writes (the top of the stack, the buffers) is contiguous at the top, so
        one unlogged KVM slot holds it (see slots())."""
        self._offsets = {}
        at = 0
        for name, size in (("heap", self.heap_size), ("guard", PAGE), ("stack", self.stack_size),
                           ("input", self.input_size), ("output", self.output_size), ("host_page", HOST_PAGE)):
            self._offsets[name] = at
            at += size
        self.scratch_size = at

    def _place_scratch(self, base: int | None) -> None:
        limit = ADDRESS_LIMIT[self.profile]
        if base is None:
            top = APIC_PAGE if self.profile == "i686" else limit
            base = top - self.scratch_size
            if base < self.snapshot_size:
                raise InvalidConfiguration(f"the scratch region ({self.scratch_size:#x} bytes: buffers, heap, stack) "
                                           f"does not fit between the snapshot region and {top:#x}")
        check_scratch_base(base, self.scratch_size, self.snapshot_size, self.profile)
        self.scratch_gpa = base
        o = self._offsets
        self.input_gpa = base + o["input"]
        self.output_gpa = base + o["output"]
        self.heap_gpa = base + o["heap"]
        self.guard_gpa = base + o["guard"]
        self.stack_gpa = base + o["stack"]
        self.stack_top = self.stack_gpa + self.stack_size
        self.host_page_gpa = base + o["host_page"]
        self.counter_gpa = base + self.scratch_size - GUEST_COUNTER_OFFSET
        self.total_size = self.snapshot_size + self.scratch_size  # bytes of host memory

    def host(self, gpa: int) -> int:
        """The offset in host memory of guest physical address gpa."""
        if 0 <= gpa < self.snapshot_size:
            return gpa
        if self.scratch_gpa <= gpa < self.scratch_gpa + self.scratch_size:
            return self.snapshot_size + gpa - self.scratch_gpa
        raise ValueError(f"guest physical address {gpa:#x} is not guest memory")

    @property
    def memory_size(self) -> int:
        return self.total_size

    # -- system tables ------------------------------------------------------------------------

    @property
    def gdt_gpa(self) -> int:
        return self.system_gpa + (I686_GDT_OFFSET if self.profile == "i686" else GDT_OFFSET)

    @property
    def idt_gpa(self) -> int:
        return self.system_gpa + (I686_IDT_OFFSET if self.profile == "i686" else IDT_OFFSET)

    @property
    def tss_gpa(self) -> int:
        return self.system_gpa + (I686_TSS_OFFSET if self.profile == "i686" else TSS_OFFSET)

    @property
    def rsp0(self) -> int:
        return self.system_gpa + DF_STACK_OFFSET

    @property
    def ist1(self) -> int:
        return self.system_gpa + SYSTEM_SIZE

    # -- page tables (amd64) ------------------------------------------------------------------

    def regions(self, image: ElfImage) -> list[Region]:
        """Every region with its amd64 page-table flags, in address order."""
        if self.profile == "i686":
            return [Region("null", 0, PAGE, NOT_PRESENT), Region("system", self.system_gpa, PAGE, USER_RW),
                    Region("peb", self.peb_gpa, PAGE, USER_RW)] + self._code_regions(image) + self._scratch_regions()
        out = [
            Region("null", 0, PAGE, NOT_PRESENT),
            Region("page_tables", self.pt_gpa, self.pt_size, NOT_PRESENT),
            Region("system", self.system_gpa, SYSTEM_SIZE, SUPERVISOR_RW),
            Region("peb", self.peb_gpa, PEB_SIZE, USER_RO),
            Region("trampoline", self.trampoline_gpa, PAGE, USER_RX),
        ]
        return out + self._code_regions(image) + self._scratch_regions()

    def _scratch_regions(self) -> list[Region]:
        return [
            Region("heap", self.heap_gpa, self.heap_size, USER_RW),
            Region("guard", self.guard_gpa, PAGE, NOT_PRESENT),
            Region("stack", self.stack_gpa, self.stack_size, USER_RW),
            Region("input", self.input_gpa, self.input_size, USER_RW),
            Region("output", self.output_gpa, self.output_size, USER_RW),
            Region("host_page", self.host_page_gpa, HOST_PAGE, USER_RO),
        ]

    def mapped_ranges(self) -> list[tuple[int, int]]:
        """The GPA ranges page tables cover: the snapshot region and the scratch region."""
        return [(0, self.snapshot_size), (self.scratch_gpa, self.scratch_gpa + self.scratch_size)]
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
                run = out[-1]
                out[-1] = Region(run.name, run.gpa, run.size + PAGE, flags)
            else:
                out.append(Region("code", gpa, PAGE, flags))
        before = self.trampoline_gpa + PAGE if self.profile == "amd64" else self.peb_gpa + PAGE
        if self.code_gpa > before:  # alignment padding (amd64) or free low memory (i686) before the image
            out.insert(0, Region("padding", before, self.code_gpa - before, NOT_PRESENT))
        return out

    @property
    def hot_mailbox_gpa(self) -> int:
        """amd64: the hot-mode mailbox, above the guest's initial stack pointer in the
        stack top that restores copy whole; i686: 0 (no hot mode)."""
        return self.stack_top - HOT_MAILBOX_SIZE if self.profile == "amd64" else 0

    @property
    def initial_rsp(self) -> int:
        """The stack pointer the guest's entry point gets: below the mailbox."""
        return self.stack_top - HOT_MAILBOX_SIZE if self.profile == "amd64" else self.stack_top

    @property
    def stack_copy_size(self) -> int:
        """The top of the stack that restores copy whole: every call writes it."""
        return min(self.stack_size, STACK_COPY)

    def slots(self) -> list[tuple[int, int, bool, int]]:
        """KVM memory slots (gpa, size, log_dirty, host_offset): three, because each slot
        costs 11-55 us to create on kvm-pvm. The heap, the guard page and the deep stack
        log the pages the guest writes, so restoring them costs what was written. What every
        call writes (the top of the stack, the I/O buffers) is cheaper copied whole than
        logged (a logged write costs a write-protection fault), so it shares an unlogged
        slot with the host page; see copied_ranges(). The amd64 snapshot region is read-only
        to the guest but for its globals (copied); the i686 one is writable, so it logs."""
        split = self.stack_top - self.stack_copy_size
        return [(0, self.snapshot_size, self.profile == "i686", 0),
                (self.scratch_gpa, split - self.scratch_gpa, True, self.host(self.scratch_gpa)),
                (split, self.scratch_gpa + self.scratch_size - split, False, self.host(split))]

    def copied_ranges(self) -> list[tuple[int, int]]:
        """(host offset, size) of the unlogged memory a guest can write, other than its
        globals: restores copy it whole (the stack top, the I/O buffers and the host page)."""
        split = self.stack_top - self.stack_copy_size
        return [(self.host(split), self.scratch_gpa + self.scratch_size - split)]

    def writable_image_ranges(self, image: ElfImage) -> list[tuple[int, int]]:
        """(host offset, size) of the image's writable pages: the guest's globals (amd64;
        the i686 snapshot region logs dirty pages instead)."""
        out: list[tuple[int, int]] = []
        if self.profile == "i686":
            return out
        for seg in image.segments:
            if seg.flags & PF_W:
                start = self.code_gpa + seg.vaddr // PAGE * PAGE
                end = self.code_gpa + align_up(seg.vaddr + seg.memsz, PAGE)
                if out and out[-1][0] + out[-1][1] >= start:
                    prev = out.pop()
                    start, end = prev[0], max(end, prev[0] + prev[1])
                out.append((start, end - start))
        return out

    _KEYS = ("profile", "image_size", "image_align", "pt_gpa", "pt_size", "system_gpa", "peb_gpa", "trampoline_gpa",
             "code_gpa", "snapshot_size", "scratch_gpa", "scratch_size", "input_gpa", "input_size", "output_gpa",
             "output_size", "heap_gpa", "heap_size", "guard_gpa", "stack_gpa", "stack_size", "stack_top",
             "counter_gpa", "total_size")

    def describe(self) -> dict[str, int]:
        """The layout as plain numbers (for snapshots, debugging and tests)."""
        return {k: getattr(self, k) for k in self._KEYS}

    @classmethod
    def from_dict(cls, d: object) -> SandboxMemoryLayout:
        """Rebuilds a layout from describe(); raises ValueError if d is not one."""
        if not isinstance(d, dict) or set(d) != set(cls._KEYS):
            raise ValueError("layout fields missing or unknown")
        profile = d["profile"]
        if profile not in PROFILES:
            raise ValueError(f"layout profile {profile!r} is unknown")
        n: dict[str, int] = {}
        for k, v in d.items():
            if k != "profile":
                if type(v) is not int or not 0 <= v < 1 << 48:
                    raise ValueError("layout fields must be non-negative integers below 2**48")
                n[k] = v
        align = n["image_align"]
        if align < PAGE or align > 1 << 21 or align & (align - 1):
            raise ValueError(f"image alignment {align:#x} is invalid")
        # The sizes a configuration can produce: whole pages within its limits.
        for key, name in (("heap_size", "heap_size"), ("stack_size", "stack_size"),
                          ("input_size", "input_data_size"), ("output_size", "output_data_size")):
            lo, hi = SIZE_LIMITS[name]
            if not lo <= n[key] <= hi:
                raise ValueError(f"layout sizes are invalid: {key}={n[key]} is outside [{lo}, {hi}]")
        if any(n[k] % PAGE for k in ("heap_size", "stack_size", "input_size", "output_size", "image_size")):
            raise ValueError("layout sizes are not whole pages")
        image = _PlacedImage(size=n["image_size"], align=align, profile=str(profile),
                             link_base=n["code_gpa"] if profile == "i686" else None)
        try:
            layout = cls(image, n["heap_size"], n["stack_size"], n["input_size"], n["output_size"],
                         scratch_base=n["scratch_gpa"], profile=str(profile))
        except Exception as e:  # sizes that no configuration produces
            raise ValueError(f"layout sizes are invalid: {e}") from None
        if layout.describe() != d:
            bad = sorted(k for k in cls._KEYS if layout.describe()[k] != d[k])
            raise ValueError(f"layout is inconsistent: {', '.join(bad)}")
        return layout


def check_scratch_base(base: int, size: int, snapshot_size: int, profile: str) -> None:
    """Raises InvalidConfiguration (a ValueError) saying why a scratch region at `base`
    cannot be: not page aligned, beyond what the profile addresses, over the snapshot
    region, or over the APIC page."""
    if type(base) is not int or base < 0:
        raise InvalidConfiguration(f"scratch_base_gpa={base!r}: use a non-negative integer address")
    where = f"scratch_base_gpa={base:#x}"
    if base % PAGE:
        raise InvalidConfiguration(f"{where} is not page aligned (a multiple of {PAGE:#x})")
    end = base + size
    limit = ADDRESS_LIMIT[profile]
    if end > limit:
        raise InvalidConfiguration(f"{where}: the scratch region [{base:#x}, {end:#x}) ends beyond the "
                                   f"{profile} profile's reach ({limit:#x})")
    if base < snapshot_size:
        raise InvalidConfiguration(f"{where}: the scratch region [{base:#x}, {end:#x}) overlaps the snapshot "
                                   f"region [0x0, {snapshot_size:#x})")
    if base < APIC_PAGE + PAGE and end > APIC_PAGE:
        raise InvalidConfiguration(f"{where}: the scratch region [{base:#x}, {end:#x}) overlaps the APIC page at "
                                   f"{APIC_PAGE:#x}")
