"""SandboxMemoryLayout: the snapshot and scratch regions, their order, placement, flags,
host mapping, KVM slots, restore ranges, describe()/from_dict() and page-table sizing (no KVM)."""
from __future__ import annotations

import itertools
import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.elf import PF_R, PF_W, PF_X, ElfImage, Segment
from hlsandbox.mem.layout import (
    APIC_PAGE,
    NOT_PRESENT,
    NX,
    PAGE,
    RW,
    STACK_COPY,
    SUPERVISOR_RW,
    SYSTEM_SIZE,
    US,
    USER_RO,
    USER_RW,
    USER_RX,
    P,
    SandboxMemoryLayout,
    align_up,
    check_scratch_base,
    page_table_pages,
    page_table_pages_for,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
AMD64_TOP = 1 << 36  # the default amd64 scratch region ends here
I686_TOP = APIC_PAGE  # the default i686 scratch region ends here

# docs/abi.md "Memory layout", in address order within each part.
AMD64_SNAPSHOT_ORDER = ["null", "page_tables", "system", "peb", "trampoline", "code"]
I686_SNAPSHOT_ORDER = ["null", "system", "peb", "padding", "code"]
SCRATCH_ORDER = ["heap", "guard", "stack", "input", "output", "host_page"]
SCRATCH_NAMES = set(SCRATCH_ORDER)

DEFAULT = dict(heap=MiB, stack=256 * KiB, input=16 * KiB, output=16 * KiB)
DEFAULT_SCRATCH_SIZE = 16 * KiB + 16 * KiB + MiB + PAGE + 256 * KiB + PAGE


@pytest.fixture(scope="module")
def guest():
    return hl.GuestBinary.from_path(hl.guests.path("simpleguest"))


def make_layout(image, config=None, scratch_base=None, profile=None):
    c = config or hl.SandboxConfiguration()
    return SandboxMemoryLayout(image, c.heap_size, c.stack_size, c.input_data_size, c.output_data_size,
                               scratch_base=scratch_base, profile=profile)


def image_of(*segs, align=PAGE):
    """An amd64 ElfImage from (vaddr, memsz, flags) triples."""
    segments = [Segment(v, m, b"", f) for v, m, f in segs]
    return ElfImage(entry=segs[0][0], segments=segments, relocations=[], align=align,
                    size=max(v + m for v, m, _ in segs))


def image32_of(link_base, *segs):
    """An i686 ElfImage linked at link_base from (offset, memsz, flags) triples."""
    segments = [Segment(v, m, b"", f) for v, m, f in segs]
    return ElfImage(entry=segs[0][0], segments=segments, relocations=[], align=PAGE,
                    size=max(v + m for v, m, _ in segs), profile="i686", link_base=link_base)


def names_collapsed(regions):
    out = []
    for r in regions:
        if not out or out[-1] != r.name:
            out.append(r.name)
    return out


def split_regions(layout, image):
    """(snapshot regions, scratch regions), each checked: page aligned, non-empty,
    contiguous from its part's start to its part's end, parts disjoint and in range."""
    regions = layout.regions(image)
    for r in regions:
        assert r.gpa % PAGE == 0, r
        assert r.size % PAGE == 0 and r.size > 0, r
    snap = [r for r in regions if r.name not in SCRATCH_NAMES]
    scratch = [r for r in regions if r.name in SCRATCH_NAMES]
    assert regions == snap + scratch  # the snapshot region comes first, in address order
    for part, start, end in ((snap, 0, layout.snapshot_size),
                             (scratch, layout.scratch_gpa, layout.scratch_gpa + layout.scratch_size)):
        assert part[0].gpa == start
        for a, b in itertools.pairwise(part):
            assert a.end == b.gpa, (a, b)  # contiguous: no overlap and no hole
        assert part[-1].end == end
    assert layout.snapshot_size <= layout.scratch_gpa  # no overlap between the parts
    assert layout.total_size == layout.snapshot_size + layout.scratch_size
    limit = AMD64_TOP if layout.profile == "amd64" else 1 << 32
    assert layout.scratch_gpa + layout.scratch_size <= limit
    assert not (layout.scratch_gpa < APIC_PAGE + PAGE and layout.scratch_gpa + layout.scratch_size > APIC_PAGE)
    assert layout.mapped_ranges() == [(0, layout.snapshot_size),
                                      (layout.scratch_gpa, layout.scratch_gpa + layout.scratch_size)]
    return snap, scratch


def snapshot_ranges(layout):
    """What the page tables of an amd64 layout must cover: the system region up to the end
    of the snapshot region (null page and tables are not present) and the scratch region."""
    return [(layout.system_gpa, layout.snapshot_size),
            (layout.scratch_gpa, layout.scratch_gpa + layout.scratch_size)]


def check_tables_minimal(layout):
    """The reserved tables cover the layout, and one page fewer would not: with one table
    page less, everything after the tables moves down a page and needs more than that."""
    pages = layout.pt_size // PAGE
    need = page_table_pages_for(snapshot_ranges(layout))
    assert need == count_tables_slowly(snapshot_ranges(layout))
    assert need <= pages
    if layout.image_align == PAGE:
        smaller = [(layout.system_gpa - PAGE, layout.snapshot_size - PAGE),
                   (layout.scratch_gpa, layout.scratch_gpa + layout.scratch_size)]
        assert page_table_pages_for(smaller) > pages - 1
    return need


def count_tables_slowly(ranges):
    """An independent count of 4-level tables for 4 KiB pages over the ranges: walks the
    ranges 2 MiB (one page table) at a time and collects the distinct table indices."""
    pml4e, pdpte, pde = set(), set(), set()
    for a, b in ranges:
        if b <= a:
            continue
        for chunk in range(a >> 21, ((b - 1) >> 21) + 1):
            addr = chunk << 21
            pml4e.add(addr >> 39)
            pdpte.add(addr >> 30)
            pde.add(addr >> 21)
    return 1 + len(pml4e) + len(pdpte) + len(pde)


# -- page_table_pages / page_table_pages_for ---------------------------------------------------

@pytest.mark.parametrize("total, expected", [
    (PAGE, 1 + 1 + 1 + 1),
    (2 * MiB, 1 + 1 + 1 + 1),
    (2 * MiB + PAGE, 1 + 1 + 1 + 2),
    (1 * GiB, 1 + 1 + 1 + 512),
    (1 * GiB + PAGE, 1 + 1 + 2 + 513),
    (512 * GiB, 1 + 1 + 512 + 512 * 512),
    (512 * GiB + PAGE, 1 + 2 + 513 + 512 * 512 + 1),
])
def test_page_table_pages(total, expected):
    assert page_table_pages(total) == expected
    assert page_table_pages_for([(0, total)]) == expected


@pytest.mark.parametrize("ranges, expected", [
    ([], 1),  # just the PML4
    ([(PAGE, PAGE)], 1),  # empty ranges need nothing
    ([(0, PAGE), (AMD64_TOP - PAGE, AMD64_TOP)], 1 + 1 + 2 + 2),  # PD 0 and PD 63 of PDPT 0
    ([(AMD64_TOP - PAGE, AMD64_TOP), (0, PAGE)], 1 + 1 + 2 + 2),  # order does not matter
    ([(0, PAGE), (1 << 39, (1 << 39) + PAGE)], 1 + 2 + 2 + 2),  # two PML4 entries
    ([(0, 2 * MiB), (PAGE, 3 * MiB)], 1 + 1 + 1 + 2),  # overlapping ranges count once
    ([(0, PAGE), (2 * MiB - PAGE, 2 * MiB)], 1 + 1 + 1 + 1),  # same page table
    ([(2 * MiB - PAGE, 2 * MiB + PAGE)], 1 + 1 + 1 + 2),  # one range across two page tables
    ([(GiB - PAGE, GiB + PAGE)], 1 + 1 + 2 + 2),  # ... and across two page directories
    ([(0x7000, 0x19000), (AMD64_TOP - 0x14A000, AMD64_TOP)], 6),  # the default simpleguest layout
    ([(0x208000, 0x220000), (AMD64_TOP - GiB - 0x4A000, AMD64_TOP)], 1 + 1 + 3 + 1 + 513),  # a 1 GiB heap
    ([(0, PAGE), (0x10000000, 0x10000000 + PAGE), (1 << 32, (1 << 32) + PAGE), (1 << 35, (1 << 35) + PAGE)],
     1 + 1 + 3 + 4),
])
def test_page_table_pages_for_sparse_ranges(ranges, expected):
    assert page_table_pages_for(ranges) == expected
    assert count_tables_slowly(ranges) == expected


def test_page_table_pages_for_matches_slow_count():
    bases = [0, PAGE, 2 * MiB - PAGE, 2 * MiB, GiB - 3 * PAGE, 5 * GiB + 7 * PAGE, (1 << 39) - PAGE,
             AMD64_TOP - 3 * MiB]
    sizes = [PAGE, 3 * PAGE, 2 * MiB, 2 * MiB + PAGE, 5 * MiB]
    ranges = [(b, b + s) for b in bases for s in sizes]
    for pair in itertools.combinations(ranges, 2):
        assert page_table_pages_for(list(pair)) == count_tables_slowly(pair), pair
    assert page_table_pages_for(ranges) == count_tables_slowly(ranges)


def test_align_up():
    assert [align_up(n, PAGE) for n in (0, 1, 4095, 4096, 4097)] == [0, 4096, 4096, 4096, 8192]
    assert align_up(0x5001, 1 << 21) == 1 << 21


# -- the real guest (amd64) ----------------------------------------------------------------------

def test_simpleguest_regions_in_documented_order(guest):
    layout = make_layout(guest.image)
    snap, scratch = split_regions(layout, guest.image)
    assert names_collapsed(snap) == AMD64_SNAPSHOT_ORDER
    assert [r.name for r in scratch] == SCRATCH_ORDER


def test_simpleguest_layout_values(guest):
    layout = make_layout(guest.image)
    img = align_up(guest.image.size, PAGE)
    # PML4, PDPT, 2 PDs (GiB 0 and 63), 2 PTs (the snapshot region's 2 MiB and the scratch region's)
    pt_pages = 6
    code = 0x1000 + pt_pages * PAGE + SYSTEM_SIZE + PAGE + PAGE  # null, tables, system, PEB, trampoline
    size = DEFAULT_SCRATCH_SIZE
    s = AMD64_TOP - size
    assert size == 0x14A000
    assert layout.describe() == {
        "profile": "amd64", "image_size": img, "image_align": PAGE,
        "pt_gpa": 0x1000, "pt_size": pt_pages * PAGE, "system_gpa": 0x7000, "peb_gpa": 0xF000,
        "trampoline_gpa": 0x10000, "code_gpa": code, "snapshot_size": code + img,
        "scratch_gpa": s, "scratch_size": size,
        "heap_gpa": s, "heap_size": MiB,
        "guard_gpa": s + MiB,
        "stack_gpa": s + MiB + PAGE, "stack_size": 256 * KiB,
        "stack_top": s + MiB + PAGE + 256 * KiB,
        "input_gpa": s + MiB + PAGE + 256 * KiB, "input_size": 16 * KiB,
        "output_gpa": s + MiB + PAGE + 272 * KiB, "output_size": 16 * KiB,
        "counter_gpa": AMD64_TOP - 0x1000,
        "total_size": code + img + size,
    }
    assert code == 0x11000
    assert layout.memory_size == layout.total_size
    assert layout.host_page_gpa == layout.counter_gpa == layout.output_gpa + layout.output_size
    assert layout.stack_top == layout.input_gpa


def expected_page_flags(path):
    """Per image page: the PTE flags docs/abi.md asks for, from the raw program headers."""
    data = open(path, "rb").read()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    pages = {}
    for i in range(phnum):
        ptype, pflags, _, vaddr, _, _, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if ptype != 1 or not memsz:
            continue
        for page in range(vaddr // PAGE, (vaddr + memsz - 1) // PAGE + 1):
            pages[page] = pages.get(page, 0) | pflags
    out = {}
    for page, f in pages.items():
        if f & PF_X and f & PF_W:
            out[page] = P | US | RW
        elif f & PF_X:
            out[page] = P | US
        elif f & PF_W:
            out[page] = P | US | RW | NX
        else:
            out[page] = P | US | NX
    return out


def writable_pages(path):
    """Image page numbers of the PF_W segments, from the raw program headers."""
    data = open(path, "rb").read()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    pages = set()
    for i in range(phnum):
        ptype, pflags, _, vaddr, _, _, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if ptype == 1 and memsz and pflags & PF_W:
            pages.update(range(vaddr // PAGE, (vaddr + memsz - 1) // PAGE + 1))
    return pages


def test_simpleguest_code_flags_follow_segments(guest):
    layout = make_layout(guest.image)
    got = {}
    for r in layout.regions(guest.image):
        if r.name == "code":
            for gpa in range(r.gpa, r.end, PAGE):
                got[(gpa - layout.code_gpa) // PAGE] = r.flags
    expected = expected_page_flags(hl.guests.path("simpleguest"))
    assert len(got) == layout.image_size // PAGE
    assert got == {p: expected.get(p, NOT_PRESENT) for p in range(len(got))}
    assert USER_RX in got.values() and USER_RW in got.values() and USER_RO in got.values()


def test_fixed_region_flags(guest):
    layout = make_layout(guest.image)
    flags = {r.name: r.flags for r in layout.regions(guest.image) if r.name != "code"}
    assert flags == {"null": NOT_PRESENT, "page_tables": NOT_PRESENT, "system": P | RW | NX, "peb": P | US | NX,
                     "trampoline": P | US,
                     "input": P | RW | US | NX, "output": P | RW | US | NX, "heap": P | RW | US | NX,
                     "guard": NOT_PRESENT, "stack": P | RW | US | NX, "host_page": P | US | NX}
    assert flags["host_page"] == USER_RO and flags["trampoline"] == USER_RX and flags["system"] == SUPERVISOR_RW
    assert SUPERVISOR_RW & US == 0
    assert NX == 1 << 63


def test_stack_guard_and_host_page(guest):
    layout = make_layout(guest.image, hl.SandboxConfiguration(stack_size="64Ki"))
    end = layout.scratch_gpa + layout.scratch_size
    assert end == AMD64_TOP
    assert end - PAGE == layout.host_page_gpa == layout.counter_gpa
    assert layout.stack_top == layout.input_gpa == end - PAGE - 32 * KiB  # the buffers sit on the stack
    assert layout.stack_top - layout.stack_gpa == 64 * KiB
    assert layout.stack_top % 16 == 0
    assert layout.guard_gpa == layout.stack_gpa - PAGE
    assert layout.guard_gpa == layout.heap_gpa + layout.heap_size
    by_name = {r.name: r for r in layout.regions(guest.image)}
    Region = type(by_name["guard"])
    assert by_name["guard"] == Region("guard", layout.guard_gpa, PAGE, NOT_PRESENT)
    assert by_name["host_page"] == Region("host_page", end - PAGE, PAGE, USER_RO)
    assert by_name["stack"] == Region("stack", layout.stack_gpa, 64 * KiB, USER_RW)


def test_system_addresses(guest):
    layout = make_layout(guest.image)
    s = layout.system_gpa
    assert s == layout.pt_gpa + layout.pt_size
    assert (layout.gdt_gpa, layout.idt_gpa, layout.tss_gpa) == (s, s + 0x1000, s + 0x2000)
    assert layout.rsp0 == s + 0x7000  # top of the two-page CPL0 stack at 0x5000
    assert layout.ist1 == s + SYSTEM_SIZE  # top of the double-fault stack at 0x7000
    assert layout.peb_gpa == s + SYSTEM_SIZE
    assert layout.trampoline_gpa == layout.peb_gpa + PAGE


@pytest.mark.parametrize("cfg", [
    dict(heap_size="8Mi", stack_size="8Ki", input_data_size="4Ki", output_data_size="12Ki"),
    dict(heap_size=4096, stack_size=8192, input_data_size=4096, output_data_size=4096),
    dict(heap_size="3Mi", stack_size="1Mi", input_data_size="1Mi", output_data_size="128Ki"),
    dict(heap_size=5000, stack_size=9000, input_data_size=4097, output_data_size=70000),
])
def test_sizes_flow_from_configuration(guest, cfg):
    c = hl.SandboxConfiguration(**cfg)
    layout = make_layout(guest.image, c)
    assert (layout.heap_size, layout.stack_size, layout.input_size, layout.output_size) == \
        (c.heap_size, c.stack_size, c.input_data_size, c.output_data_size)
    sizes = {r.name: r.size for r in layout.regions(guest.image) if r.name in SCRATCH_NAMES}
    assert sizes == {"input": c.input_data_size, "output": c.output_data_size, "heap": c.heap_size,
                     "guard": PAGE, "stack": c.stack_size, "host_page": PAGE}
    assert layout.scratch_size == sum(sizes.values())
    assert layout.scratch_gpa == AMD64_TOP - layout.scratch_size
    assert layout.heap_gpa == layout.scratch_gpa
    assert layout.stack_gpa == layout.heap_gpa + c.heap_size + PAGE
    assert layout.input_gpa == layout.stack_top == layout.stack_gpa + c.stack_size
    assert layout.output_gpa == layout.input_gpa + c.input_data_size
    assert layout.host_page_gpa == layout.output_gpa + c.output_data_size
    split_regions(layout, guest.image)
    assert check_tables_minimal(layout) * PAGE == layout.pt_size
    assert layout.code_gpa == layout.pt_gpa + layout.pt_size + SYSTEM_SIZE + 2 * PAGE


def test_large_heap_page_tables(guest):
    layout = make_layout(guest.image, hl.SandboxConfiguration(heap_size="1Gi"))
    snap, scratch = split_regions(layout, guest.image)
    assert names_collapsed(snap) == AMD64_SNAPSHOT_ORDER
    assert [r.name for r in scratch] == SCRATCH_ORDER
    assert layout.scratch_size == 32 * KiB + GiB + PAGE + 256 * KiB + PAGE
    assert layout.scratch_gpa == AMD64_TOP - layout.scratch_size
    # The scratch region spans PDs 62 and 63 and 513 page tables; the 519 table pages push
    # the system region past 2 MiB, into one more page table (the tables themselves and the
    # null page are not mapped, so page table 0 is not needed).
    assert layout.pt_size // PAGE == 1 + 1 + (1 + 2) + (1 + 513) == 519
    assert layout.system_gpa == 0x1000 + 519 * PAGE == 0x208000
    assert layout.code_gpa == layout.system_gpa + SYSTEM_SIZE + 2 * PAGE  # + PEB, trampoline
    assert layout.snapshot_size == layout.code_gpa + layout.image_size
    assert check_tables_minimal(layout) * PAGE == layout.pt_size
    assert layout.total_size == layout.snapshot_size + layout.scratch_size


def test_page_table_growth_feeds_back():
    # Heaps whose tables push the snapshot region across the first 2 MiB boundary: the
    # tables must still cover everything (a fixpoint) and be counted exactly.
    img = image_of((0, PAGE, PF_R | PF_X))
    straddling = spare = 0
    for heap_pages in [k * 512 + d for k in range(494, 512) for d in (-1, 0, 1)]:
        layout = SandboxMemoryLayout(img, heap_pages * PAGE, 2 * PAGE, PAGE, PAGE)
        need = check_tables_minimal(layout)
        assert layout.system_gpa == layout.pt_gpa + layout.pt_size
        split_regions(layout, img)
        straddling += layout.system_gpa < 2 * MiB < layout.snapshot_size
        # n tables would put the system region across 2 MiB and need n + 1; n + 1 tables put
        # it at 2 MiB, needing only n: one page is reserved but unused
        spare += need < layout.pt_size // PAGE
    assert straddling >= 3  # some snapshot regions needed page tables 0 and 1
    assert spare >= 1


# -- scratch placement (amd64) ---------------------------------------------------------------

@pytest.mark.parametrize("base, pt_pages", [
    (0x10000000, 1 + 1 + 1 + 2),  # same PD as the snapshot region, another page table
    (1 << 32, 1 + 1 + 2 + 2),
    (1 << 35, 1 + 1 + 2 + 2),
    (AMD64_TOP - DEFAULT_SCRATCH_SIZE, 1 + 1 + 2 + 2),  # the default, given explicitly
    (1 << 30, 1 + 1 + 2 + 2),
    ((1 << 30) - DEFAULT_SCRATCH_SIZE // 2 // PAGE * PAGE, 1 + 1 + 2 + 3),  # across a 1 GiB boundary
])
def test_custom_scratch_base(guest, base, pt_pages):
    layout = make_layout(guest.image, scratch_base=base)
    snap, scratch = split_regions(layout, guest.image)
    assert names_collapsed(snap) == AMD64_SNAPSHOT_ORDER
    assert [r.name for r in scratch] == SCRATCH_ORDER
    assert layout.scratch_gpa == layout.heap_gpa == base
    assert layout.scratch_size == DEFAULT_SCRATCH_SIZE
    assert layout.counter_gpa == base + DEFAULT_SCRATCH_SIZE - 0x1000
    assert layout.stack_top == layout.counter_gpa - 32 * KiB
    assert layout.pt_size == pt_pages * PAGE
    assert check_tables_minimal(layout) == pt_pages
    assert layout.code_gpa == 0x1000 + pt_pages * PAGE + SYSTEM_SIZE + 2 * PAGE
    assert layout.total_size == layout.snapshot_size + DEFAULT_SCRATCH_SIZE


def lowest_scratch_base(image, config=None):
    base = PAGE
    while True:
        try:
            return make_layout(image, config, scratch_base=base)
        except hl.InvalidConfiguration as e:
            assert "overlaps the snapshot region" in str(e)
            base += PAGE


def test_scratch_right_after_the_snapshot_region(guest):
    layout = lowest_scratch_base(guest.image)
    # everything in the first 2 MiB: PML4, PDPT, PD, one PT
    assert layout.pt_size == 4 * PAGE
    assert layout.scratch_gpa == layout.snapshot_size == 0xF000 + layout.image_size
    split_regions(layout, guest.image)
    assert [layout.host(g) for g in (layout.scratch_gpa - 1, layout.scratch_gpa)] == \
        [layout.scratch_gpa - 1, layout.scratch_gpa]  # host memory is GPA order here
    with pytest.raises(hl.InvalidConfiguration, match="overlaps the snapshot region"):
        make_layout(guest.image, scratch_base=layout.scratch_gpa - PAGE)


@pytest.mark.parametrize("base, match", [
    (0, r"^scratch_base_gpa=0x0: the scratch region \[0x0, 0x14a000\) overlaps the snapshot region "
        r"\[0x0, 0x[0-9a-f]+\)$"),
    (0x10000, r"^scratch_base_gpa=0x10000: the scratch region \[0x10000, 0x15a000\) overlaps the snapshot "
              r"region \[0x0, 0x[0-9a-f]+\)$"),
    (0x1001, r"^scratch_base_gpa=0x1001 is not page aligned \(a multiple of 0x1000\)$"),
    (AMD64_TOP - DEFAULT_SCRATCH_SIZE + PAGE,
     r"the scratch region \[0xfffeb7000, 0x1000001000\) ends beyond the amd64 profile's reach \(0x1000000000\)$"),
    (AMD64_TOP, r"ends beyond the amd64 profile's reach"),
    (APIC_PAGE, r"^scratch_base_gpa=0xfee00000: the scratch region \[0xfee00000, 0xfef4a000\) overlaps the APIC "
                r"page at 0xfee00000$"),
    (APIC_PAGE - DEFAULT_SCRATCH_SIZE + PAGE, r"overlaps the APIC page at 0xfee00000$"),
    (-PAGE, r"^scratch_base_gpa=-4096: use a non-negative integer address$"),
])
def test_bad_scratch_base(guest, base, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        make_layout(guest.image, scratch_base=base)


@pytest.mark.parametrize("base", [APIC_PAGE - DEFAULT_SCRATCH_SIZE, APIC_PAGE + PAGE])
def test_scratch_next_to_the_apic_page(guest, base):
    layout = make_layout(guest.image, scratch_base=base)
    assert layout.scratch_gpa == base
    split_regions(layout, guest.image)


def test_check_scratch_base_is_a_value_error():
    with pytest.raises(ValueError):
        check_scratch_base(PAGE, PAGE, 2 * PAGE, "amd64")
    check_scratch_base(2 * PAGE, PAGE, 2 * PAGE, "amd64")  # adjacent: fine
    check_scratch_base(AMD64_TOP - PAGE, PAGE, 2 * PAGE, "amd64")
    check_scratch_base((1 << 32) - PAGE, PAGE, 2 * PAGE, "i686")


# -- host() -----------------------------------------------------------------------------------

@pytest.mark.parametrize("base", [None, 0x10000000])
def test_host_offsets(guest, base):
    L = make_layout(guest.image, scratch_base=base)
    for gpa in (0, 1, L.pt_gpa, L.system_gpa, L.peb_gpa + 5, L.code_gpa, L.snapshot_size - 1):
        assert L.host(gpa) == gpa  # the snapshot region: host offset == GPA
    for gpa in (L.scratch_gpa, L.input_gpa + 3, L.output_gpa, L.heap_gpa, L.guard_gpa, L.stack_gpa,
                L.stack_top - 8, L.counter_gpa, L.scratch_gpa + L.scratch_size - 1):
        assert L.host(gpa) == L.snapshot_size + gpa - L.scratch_gpa
    assert L.host(L.scratch_gpa + L.scratch_size - 1) == L.total_size - 1
    for r in L.regions(guest.image):
        assert L.host(r.end - 1) - L.host(r.gpa) == r.size - 1  # every region is contiguous in host memory


@pytest.mark.parametrize("where", ["negative", "snapshot end", "below scratch", "scratch end", "far"])
def test_host_outside_guest_memory(guest, where):
    L = make_layout(guest.image)
    gpa = {"negative": -1, "snapshot end": L.snapshot_size, "below scratch": L.scratch_gpa - 1,
           "scratch end": L.scratch_gpa + L.scratch_size, "far": 1 << 64}[where]
    with pytest.raises(ValueError, match=rf"^guest physical address {gpa:#x} is not guest memory$"):
        L.host(gpa)


# -- slots, copied ranges, writable image ranges ---------------------------------------------------

def check_slots(L):
    slots = L.slots()
    split = L.stack_top - min(L.stack_size, STACK_COPY)
    assert slots == [
        (0, L.snapshot_size, L.profile == "i686", 0),
        (L.heap_gpa, split - L.heap_gpa, True, L.snapshot_size),
        (split, L.scratch_gpa + L.scratch_size - split, False, L.host(split)),
    ]
    # slots tile both parts of guest memory, and host memory in order
    host = 0
    for gpa, size, _, off in slots:
        assert gpa % PAGE == 0 and size % PAGE == 0 and size > 0
        assert off == L.host(gpa) == host
        assert L.host(gpa + size - 1) == off + size - 1
        host += size
    assert host == L.total_size
    assert slots[1][0] == L.scratch_gpa
    assert slots[1][0] + slots[1][1] == slots[2][0]
    # the logged slot holds the heap, the guard page and the deep stack
    assert slots[1][0] == L.heap_gpa and slots[1][0] + slots[1][1] >= L.stack_gpa
    # the last slot: the stack top (at most 16 KiB), both buffers and the host page
    assert slots[2][1] == min(L.stack_size, 16 * KiB) + L.input_size + L.output_size + PAGE
    return slots


@pytest.mark.parametrize("cfg, base", [({}, None), ({}, 0x10000000), (dict(stack_size="8Ki"), None),
                                       (dict(stack_size="16Ki"), 1 << 32),
                                       (dict(heap_size="64Mi", input_data_size="1Mi"), None)])
def test_slots_amd64(guest, cfg, base):
    L = make_layout(guest.image, hl.SandboxConfiguration(**cfg), scratch_base=base)
    slots = check_slots(L)
    assert [s[2] for s in slots] == [False, True, False]  # only heap + guard + deep stack log


def test_slots_small_stack_is_copied_whole(guest):
    L = make_layout(guest.image, hl.SandboxConfiguration(stack_size="8Ki"))
    slots = check_slots(L)
    assert slots[1] == (L.heap_gpa, L.heap_size + PAGE, True, L.host(L.heap_gpa))  # heap + guard only
    assert slots[2] == (L.stack_gpa, 8 * KiB + 32 * KiB + PAGE, False, L.host(L.stack_gpa))


def test_copied_ranges(guest):
    L = make_layout(guest.image)
    assert L.stack_copy_size == 16 * KiB
    assert L.copied_ranges() == [(L.total_size - 48 * KiB - PAGE, 48 * KiB + PAGE)]
    # exactly the host range of the unlogged scratch slot
    unlogged = [(off, size) for gpa, size, log, off in L.slots() if not log and gpa >= L.scratch_gpa]
    assert L.copied_ranges() == unlogged
    small = make_layout(guest.image, hl.SandboxConfiguration(stack_size="8Ki", input_data_size="4Ki"))
    assert small.stack_copy_size == 8 * KiB
    assert small.copied_ranges() == [(small.host(small.stack_gpa), 8 * KiB + 4 * KiB + 16 * KiB + PAGE)]


def test_writable_image_ranges_simpleguest(guest):
    L = make_layout(guest.image)
    pages = writable_pages(hl.guests.path("simpleguest"))
    assert pages
    got = set()
    for off, size in L.writable_image_ranges(guest.image):
        assert off % PAGE == 0 and size % PAGE == 0 and size > 0
        assert L.code_gpa <= off and off + size <= L.snapshot_size  # host offset == GPA here
        got.update(range((off - L.code_gpa) // PAGE, (off + size - L.code_gpa) // PAGE))
    assert got == pages
    # the pages are the user-writable code pages
    rw = {(g - L.code_gpa) // PAGE for r in L.regions(guest.image) if r.name == "code" and r.flags & RW
          for g in range(r.gpa, r.end, PAGE)}
    assert rw == pages


def test_writable_image_ranges_merge_and_skip():
    # RW [0x1000, 0x1800) and RW [0x1800, 0x2800) share page 1: one range of pages 1-2;
    # page 3 read only; RW again at page 5.
    img = image_of((0, PAGE, PF_R | PF_X), (0x1000, 0x800, PF_R | PF_W), (0x1800, 0x1000, PF_R | PF_W),
                   (3 * PAGE, 0x10, PF_R), (5 * PAGE + 8, 0x10, PF_W))
    L = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    c = L.code_gpa
    assert L.writable_image_ranges(img) == [(c + PAGE, 2 * PAGE), (c + 5 * PAGE, PAGE)]
    assert SandboxMemoryLayout(image_of((0, PAGE, PF_R | PF_X)), PAGE, 2 * PAGE, PAGE, PAGE) \
        .writable_image_ranges(image_of((0, PAGE, PF_R | PF_X))) == []


# -- code region flags from ELF segment flags ------------------------------------------------

@pytest.mark.parametrize("pflags, expected", [
    (PF_R | PF_X, USER_RX),
    (PF_X, USER_RX),
    (PF_R | PF_W, USER_RW),
    (PF_W, USER_RW),
    (PF_R, USER_RO),
    (0, USER_RO),
    (PF_R | PF_W | PF_X, P | US | RW),  # W+X: user RWX
])
def test_code_flags_from_segment_flags(pflags, expected):
    img = image_of((0, 2 * PAGE, pflags))
    layout = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    code = [r for r in layout.regions(img) if r.name == "code"]
    assert [(r.gpa, r.size, r.flags) for r in code] == [(layout.code_gpa, 2 * PAGE, expected)]


def test_shared_page_gets_union_and_gaps_are_not_present():
    # RX [0, 0x1800), RW [0x1800, 0x2000) share page 1; page 2 unmapped; page 3 R.
    img = image_of((0, 0x1800, PF_R | PF_X), (0x1800, 0x800, PF_R | PF_W), (3 * PAGE, 0x10, PF_R))
    layout = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    assert layout.image_size == 4 * PAGE
    code = [(r.gpa - layout.code_gpa, r.size, r.flags) for r in layout.regions(img) if r.name == "code"]
    assert code == [(0, PAGE, USER_RX), (PAGE, PAGE, USER_RX | RW), (2 * PAGE, PAGE, NOT_PRESENT),
                    (3 * PAGE, PAGE, USER_RO)]
    split_regions(layout, img)


def test_large_alignment_adds_padding():
    img = image_of((0, PAGE, PF_R | PF_X), align=1 << 21)
    layout = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    assert layout.code_gpa == 1 << 21
    snap, scratch = split_regions(layout, img)
    assert names_collapsed(snap) == AMD64_SNAPSHOT_ORDER[:5] + ["padding", "code"]
    pad = [r for r in snap if r.name == "padding"][0]
    assert (pad.gpa, pad.end, pad.flags) == (layout.trampoline_gpa + PAGE, 1 << 21, NOT_PRESENT)
    assert layout.snapshot_size == (1 << 21) + PAGE
    assert [r.name for r in scratch] == SCRATCH_ORDER


def test_no_padding_when_aligned(guest):
    layout = make_layout(guest.image)
    assert all(r.name != "padding" for r in layout.regions(guest.image))
    assert layout.code_gpa == layout.trampoline_gpa + PAGE


# -- i686 ----------------------------------------------------------------------------------------

I686_IMAGE = image32_of(0x100000, (0, 0xD1C, PF_R | PF_X), (0x1000, 0x34E, PF_R), (0x2000, 0x1184, PF_R | PF_W))


@pytest.mark.parametrize("image", ["synthetic", "nanvixlike"])
def test_i686_layout_values(image):
    if image == "nanvixlike":
        try:
            img = hl.GuestBinary.from_path(hl.guests.path("nanvixlike")).image
        except FileNotFoundError:
            pytest.skip("nanvixlike.elf is not built")
    else:
        img = I686_IMAGE
    L = make_layout(img)
    assert L.profile == "i686"
    size = DEFAULT_SCRATCH_SIZE
    s = I686_TOP - size
    base = img.link_base
    assert L.describe() == {
        "profile": "i686", "image_size": align_up(img.size, PAGE), "image_align": PAGE,
        "pt_gpa": 0, "pt_size": 0, "system_gpa": 0x1000, "peb_gpa": 0x2000, "trampoline_gpa": 0,
        "code_gpa": base, "snapshot_size": base + align_up(img.size, PAGE),
        "scratch_gpa": s, "scratch_size": size,
        "heap_gpa": s, "heap_size": MiB, "guard_gpa": s + MiB,
        "stack_gpa": s + MiB + PAGE, "stack_size": 256 * KiB, "stack_top": s + MiB + PAGE + 256 * KiB,
        "input_gpa": s + MiB + PAGE + 256 * KiB, "input_size": 16 * KiB,
        "output_gpa": s + MiB + PAGE + 272 * KiB, "output_size": 16 * KiB,
        "counter_gpa": I686_TOP - 0x1000, "total_size": base + align_up(img.size, PAGE) + size,
    }
    snap, scratch = split_regions(L, img)
    assert names_collapsed(snap) == I686_SNAPSHOT_ORDER
    assert [r.name for r in scratch] == SCRATCH_ORDER
    by_name = {r.name: r for r in snap if r.name != "code"}
    assert [(r.name, r.gpa, r.size) for r in by_name.values()] == [
        ("null", 0, PAGE), ("system", 0x1000, PAGE), ("peb", 0x2000, PAGE), ("padding", 0x3000, base - 0x3000)]
    assert by_name["null"].flags == by_name["padding"].flags == NOT_PRESENT
    assert {r.name: r.flags for r in scratch} == {"input": USER_RW, "output": USER_RW, "heap": USER_RW,
                                                  "guard": NOT_PRESENT, "stack": USER_RW, "host_page": USER_RO}
    assert L.gdt_gpa == 0x1000 and L.idt_gpa == 0x1100 and L.tss_gpa == 0x1400


def test_i686_code_regions():
    L = make_layout(I686_IMAGE)
    code = [(r.gpa, r.size, r.flags) for r in L.regions(I686_IMAGE) if r.name == "code"]
    assert code == [(0x100000, PAGE, USER_RX), (0x101000, PAGE, USER_RO), (0x102000, 2 * PAGE, USER_RW)]


def test_i686_slots_and_ranges():
    L = make_layout(I686_IMAGE)
    slots = check_slots(L)
    assert [s[2] for s in slots] == [True, True, False]  # the i686 snapshot region logs dirty pages
    assert L.writable_image_ranges(I686_IMAGE) == []
    assert L.copied_ranges() == [(L.total_size - 48 * KiB - PAGE, 48 * KiB + PAGE)]
    assert L.host(0x100000) == 0x100000
    assert L.host(L.counter_gpa) == L.total_size - PAGE
    with pytest.raises(ValueError, match="is not guest memory"):
        L.host(L.snapshot_size)


@pytest.mark.parametrize("base", [0x200000, 0x104000, APIC_PAGE + PAGE, (1 << 32) - DEFAULT_SCRATCH_SIZE])
def test_i686_custom_scratch_base(base):
    L = make_layout(I686_IMAGE, scratch_base=base)
    assert L.scratch_gpa == base and L.counter_gpa == base + DEFAULT_SCRATCH_SIZE - 0x1000
    assert L.snapshot_size == 0x104000  # i686: nothing in the snapshot region depends on the scratch base
    split_regions(L, I686_IMAGE)
    check_slots(L)


@pytest.mark.parametrize("base, match", [
    (0x103000, r"^scratch_base_gpa=0x103000: the scratch region \[0x103000, 0x24d000\) overlaps the snapshot "
               r"region \[0x0, 0x104000\)$"),
    ((1 << 32) - DEFAULT_SCRATCH_SIZE + PAGE, r"ends beyond the i686 profile's reach \(0x100000000\)$"),
    (1 << 32, r"ends beyond the i686 profile's reach"),
    (APIC_PAGE - DEFAULT_SCRATCH_SIZE + PAGE, r"overlaps the APIC page at 0xfee00000$"),
    (APIC_PAGE, r"overlaps the APIC page at 0xfee00000$"),
    (0x200800, r"is not page aligned"),
])
def test_i686_bad_scratch_base(base, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        make_layout(I686_IMAGE, scratch_base=base)


def test_profile_must_match_the_image(guest):
    with pytest.raises(hl.InvalidConfiguration, match=r"^profile='i686' but the guest binary is an amd64 ELF$"):
        make_layout(guest.image, profile="i686")
    with pytest.raises(hl.InvalidConfiguration, match=r"^profile='amd64' but the guest binary is an i686 ELF$"):
        make_layout(I686_IMAGE, profile="amd64")
    with pytest.raises(hl.InvalidConfiguration, match=r"^profile='sparc': use one of amd64, i686$"):
        make_layout(guest.image, profile="sparc")
    assert make_layout(guest.image, profile="amd64").profile == "amd64"
    assert make_layout(I686_IMAGE, profile="i686").profile == "i686"


# -- describe() / from_dict() -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["default", "custom base", "1 GiB heap", "padding", "i686", "i686 base"])
def test_describe_round_trip(guest, which):
    if which == "default":
        L, img = make_layout(guest.image), guest.image
    elif which == "custom base":
        L, img = make_layout(guest.image, scratch_base=1 << 32), guest.image
    elif which == "1 GiB heap":
        L, img = make_layout(guest.image, hl.SandboxConfiguration(heap_size="1Gi")), guest.image
    elif which == "padding":
        img = image_of((0, PAGE, PF_R | PF_X), align=1 << 21)
        L = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    elif which == "i686":
        L, img = make_layout(I686_IMAGE), I686_IMAGE
    else:
        L, img = make_layout(I686_IMAGE, scratch_base=0x400000), I686_IMAGE
    d = L.describe()
    assert set(d) == set(SandboxMemoryLayout._KEYS)
    R = SandboxMemoryLayout.from_dict(dict(d))
    assert R.describe() == d
    assert R.slots() == L.slots()
    assert R.copied_ranges() == L.copied_ranges()
    assert R.mapped_ranges() == L.mapped_ranges()
    assert [(r.name, r.gpa, r.size, r.flags) for r in R._scratch_regions()] == \
        [(r.name, r.gpa, r.size, r.flags) for r in L._scratch_regions()]
    assert (R.host_page_gpa, R.gdt_gpa, R.idt_gpa, R.tss_gpa) == (L.host_page_gpa, L.gdt_gpa, L.idt_gpa, L.tss_gpa)


def edited(d, **changes):
    out = dict(d)
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def described(guest):
    return make_layout(guest.image).describe()


@pytest.mark.parametrize("make, match", [
    (lambda d: [tuple(d.items())], r"^layout fields missing or unknown$"),
    (lambda d: {k: v for k, v in d.items() if k != "heap_size"}, r"^layout fields missing or unknown$"),
    (lambda d: edited(d, extra=1), r"^layout fields missing or unknown$"),
    (lambda d: edited(d, profile="sparc"), r"^layout profile 'sparc' is unknown$"),
    (lambda d: edited(d, heap_size=True), r"^layout fields must be non-negative integers below 2\*\*48$"),
    (lambda d: edited(d, heap_size=float(d["heap_size"])), r"must be non-negative integers"),
    (lambda d: edited(d, heap_size=str(d["heap_size"])), r"must be non-negative integers"),
    (lambda d: edited(d, code_gpa=-PAGE), r"must be non-negative integers"),
    (lambda d: edited(d, total_size=1 << 48), r"must be non-negative integers"),
    (lambda d: edited(d, image_align=PAGE // 2), r"^image alignment 0x800 is invalid$"),
    (lambda d: edited(d, image_align=3 * PAGE), r"^image alignment 0x3000 is invalid$"),
    (lambda d: edited(d, image_align=1 << 22), r"^image alignment 0x400000 is invalid$"),
    (lambda d: edited(d, heap_gpa=d["heap_gpa"] + PAGE), r"^layout is inconsistent: heap_gpa$"),
    (lambda d: edited(d, total_size=d["total_size"] + PAGE), r"^layout is inconsistent: total_size$"),
    (lambda d: edited(d, counter_gpa=d["counter_gpa"] - 8), r"^layout is inconsistent: counter_gpa$"),
    (lambda d: edited(d, pt_size=d["pt_size"] + PAGE), r"^layout is inconsistent: pt_size$"),
    (lambda d: edited(d, scratch_size=d["scratch_size"] + PAGE), r"^layout is inconsistent: scratch_size$"),
    (lambda d: edited(d, profile="i686"), r"^layout sizes are invalid: .* ends beyond the i686 profile's reach"),
    (lambda d: edited(d, scratch_gpa=1 << 32), r"^layout is inconsistent: counter_gpa, guard_gpa, heap_gpa, "
                                                r"input_gpa, output_gpa, stack_gpa, stack_top$"),
    (lambda d: edited(d, scratch_gpa=PAGE), r"^layout sizes are invalid: scratch_base_gpa=0x1000: .* overlaps "
                                            r"the snapshot region"),
    (lambda d: edited(d, scratch_gpa=(1 << 36) - PAGE), r"^layout sizes are invalid: .* ends beyond the amd64 "
                                                         r"profile's reach"),
    (lambda d: edited(d, scratch_gpa=d["scratch_gpa"] + 8), r"^layout sizes are invalid: .* is not page aligned"),
])
def test_from_dict_rejects(described, make, match):
    with pytest.raises(ValueError, match=match):
        SandboxMemoryLayout.from_dict(make(described))


def test_from_dict_does_not_modify_its_argument(described):
    d = dict(described)
    SandboxMemoryLayout.from_dict(d)
    assert d == described


@pytest.mark.parametrize("sizes", [dict(heap_size=5000), dict(input_size=0, output_size=0), dict(stack_size=PAGE)])
def test_from_dict_rejects_sizes_no_configuration_produces(sizes):
    # A layout built with such sizes describes itself consistently, but no SandboxConfiguration
    # gives it (sizes are whole pages, stacks at least 2 pages, buffers at least 1): a snapshot
    # file carrying it must be refused, not turned into unaligned or empty KVM slots.
    image = ElfImage(entry=0, segments=[Segment(0, PAGE, b"", PF_R | PF_X)], relocations=[], align=PAGE, size=PAGE)
    args = dict(heap_size=MiB, stack_size=256 * KiB, input_size=16 * KiB, output_size=16 * KiB)
    args.update(sizes)
    L = SandboxMemoryLayout(image, args["heap_size"], args["stack_size"], args["input_size"], args["output_size"],
                            scratch_base=1 << 32)
    with pytest.raises(ValueError):
        SandboxMemoryLayout.from_dict(L.describe())
