"""SandboxMemoryLayout: region order, alignment, flags and page-table sizing (no KVM)."""
from __future__ import annotations

import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.elf import PF_R, PF_W, PF_X, ElfImage, Segment
from hlsandbox.mem.layout import (NOT_PRESENT, NX, PAGE, RW, SUPERVISOR_RW, SYSTEM_SIZE, US, USER_RO, USER_RW,
                                  USER_RX, P, SandboxMemoryLayout, align_up, page_table_pages)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# docs/abi.md "Memory layout", in address order.
DOC_ORDER = ["null", "page_tables", "system", "peb", "trampoline", "code", "input", "output", "heap", "guard", "stack"]


@pytest.fixture(scope="module")
def guest():
    return hl.GuestBinary.from_path(hl.guests.path("simpleguest"))


def make_layout(image, config=None):
    c = config or hl.SandboxConfiguration()
    return SandboxMemoryLayout(image, c.heap_size, c.stack_size, c.input_data_size, c.output_data_size)


def image_of(*segs, align=PAGE):
    """An ElfImage from (vaddr, memsz, flags) triples."""
    segments = [Segment(v, m, b"", f) for v, m, f in segs]
    return ElfImage(entry=segs[0][0], segments=segments, relocations=[], align=align,
                    size=max(v + m for v, m, _ in segs))


def names_collapsed(regions):
    out = []
    for r in regions:
        if not out or out[-1] != r.name:
            out.append(r.name)
    return out


def check_regions(layout, image):
    regions = layout.regions(image)
    for r in regions:
        assert r.gpa % PAGE == 0, r
        assert r.size % PAGE == 0 and r.size > 0, r
    assert regions[0].gpa == 0
    for a, b in zip(regions, regions[1:]):
        assert a.end == b.gpa, (a, b)  # contiguous: no overlap and no hole
    assert regions[-1].end == layout.total_size
    return regions


# -- page_table_pages -----------------------------------------------------------------------

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


def test_align_up():
    assert [align_up(n, PAGE) for n in (0, 1, 4095, 4096, 4097)] == [0, 4096, 4096, 4096, 8192]
    assert align_up(0x5001, 1 << 21) == 1 << 21


# -- the real guest ------------------------------------------------------------------------

def test_simpleguest_regions_in_documented_order(guest):
    layout = make_layout(guest.image)
    regions = check_regions(layout, guest.image)
    assert names_collapsed(regions) == DOC_ORDER


def test_simpleguest_layout_values(guest):
    layout = make_layout(guest.image)
    img = align_up(guest.image.size, PAGE)
    code = 0x1000 + 0x4000 + 0x8000 + 0x1000 + 0x1000  # null, 4 page-table pages, system, PEB, trampoline
    assert layout.describe() == {
        "pt_gpa": 0x1000, "pt_size": 0x4000, "system_gpa": 0x5000, "peb_gpa": 0xD000, "trampoline_gpa": 0xE000,
        "code_gpa": code,
        "image_size": img, "image_align": PAGE, "input_gpa": code + img, "input_size": 16 * KiB,
        "output_gpa": code + img + 16 * KiB, "output_size": 16 * KiB, "heap_gpa": code + img + 32 * KiB,
        "heap_size": 1 * MiB, "guard_gpa": code + img + 32 * KiB + MiB, "stack_gpa": code + img + 36 * KiB + MiB,
        "stack_size": 256 * KiB, "stack_top": code + img + 292 * KiB + MiB,
        "total_size": code + img + 292 * KiB + MiB,
    }


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
                     "guard": NOT_PRESENT, "stack": P | RW | US | NX}
    assert SUPERVISOR_RW & US == 0
    assert NX == 1 << 63


def test_stack_and_guard(guest):
    layout = make_layout(guest.image, hl.SandboxConfiguration(stack_size="64Ki"))
    assert layout.stack_top == layout.total_size
    assert layout.stack_top - layout.stack_gpa == 64 * KiB
    assert layout.stack_top % 16 == 0
    assert layout.guard_gpa == layout.stack_gpa - PAGE
    assert layout.guard_gpa == layout.heap_gpa + layout.heap_size
    guard = [r for r in layout.regions(guest.image) if r.name == "guard"]
    assert guard == [type(guard[0])("guard", layout.guard_gpa, PAGE, NOT_PRESENT)]


def test_system_addresses(guest):
    layout = make_layout(guest.image)
    s = layout.system_gpa
    assert (layout.gdt_gpa, layout.idt_gpa, layout.tss_gpa) == (s, s + 0x1000, s + 0x2000)
    assert layout.rsp0 == s + 0x7000  # top of the two-page CPL0 stack at 0x5000
    assert layout.ist1 == s + SYSTEM_SIZE  # top of the double-fault stack at 0x7000
    assert layout.peb_gpa == s + SYSTEM_SIZE


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
    sizes = {r.name: r.size for r in layout.regions(guest.image) if r.name in ("input", "output", "heap", "stack")}
    assert sizes == {"input": c.input_data_size, "output": c.output_data_size, "heap": c.heap_size,
                     "stack": c.stack_size}
    assert layout.output_gpa == layout.input_gpa + c.input_data_size
    assert layout.heap_gpa == layout.output_gpa + c.output_data_size
    check_regions(layout, guest.image)
    assert page_table_pages(layout.total_size) * PAGE == layout.pt_size


def test_large_heap_page_tables(guest):
    c = hl.SandboxConfiguration(heap_size="1Gi")
    layout = make_layout(guest.image, c)
    regions = check_regions(layout, guest.image)
    assert names_collapsed(regions) == DOC_ORDER
    total = layout.total_size
    assert total > GiB
    # The tables map everything, including themselves, and are not oversized.
    assert layout.pt_size == page_table_pages(total) * PAGE
    pts = -(-total // (2 * MiB))
    assert layout.pt_size // PAGE == 1 + 1 + 2 + pts
    assert pts == 514 and layout.pt_size // PAGE == 518
    assert layout.code_gpa == 0x1000 + 518 * PAGE + SYSTEM_SIZE + 2 * PAGE  # + PEB, trampoline
    assert layout.total_size == layout.code_gpa + layout.image_size + 32 * KiB + GiB + PAGE + 256 * KiB
    assert layout.system_gpa == layout.pt_gpa + layout.pt_size


def test_page_table_growth_feeds_back():
    # A tiny image where adding page tables pushes the total past a 2 MiB boundary.
    img = image_of((0, PAGE, PF_R | PF_X))
    for heap_pages in range(490, 500):
        layout = SandboxMemoryLayout(img, heap_pages * PAGE, 2 * PAGE, PAGE, PAGE)
        assert layout.pt_size == page_table_pages(layout.total_size) * PAGE
        check_regions(layout, img)


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


def test_user_flag_constants():
    assert USER_RX == P | US and not USER_RX & NX and not USER_RX & RW
    assert USER_RW == P | RW | US | NX
    assert USER_RO == P | US | NX


def test_shared_page_gets_union_and_gaps_are_not_present():
    # RX [0, 0x1800), RW [0x1800, 0x2000) share page 1; page 2 unmapped; page 3 R.
    img = image_of((0, 0x1800, PF_R | PF_X), (0x1800, 0x800, PF_R | PF_W), (3 * PAGE, 0x10, PF_R))
    layout = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    assert layout.image_size == 4 * PAGE
    code = [(r.gpa - layout.code_gpa, r.size, r.flags) for r in layout.regions(img) if r.name == "code"]
    assert code == [(0, PAGE, USER_RX), (PAGE, PAGE, USER_RX | RW), (2 * PAGE, PAGE, NOT_PRESENT),
                    (3 * PAGE, PAGE, USER_RO)]
    check_regions(layout, img)


def test_large_alignment_adds_padding():
    img = image_of((0, PAGE, PF_R | PF_X), align=1 << 21)
    layout = SandboxMemoryLayout(img, PAGE, 2 * PAGE, PAGE, PAGE)
    assert layout.code_gpa == 1 << 21
    regions = check_regions(layout, img)
    assert names_collapsed(regions) == DOC_ORDER[:5] + ["padding"] + DOC_ORDER[5:]
    pad = [r for r in regions if r.name == "padding"][0]
    assert (pad.gpa, pad.end, pad.flags) == (layout.trampoline_gpa + PAGE, 1 << 21, NOT_PRESENT)


def test_no_padding_when_aligned(guest):
    layout = make_layout(guest.image)
    assert all(r.name != "padding" for r in layout.regions(guest.image))
    assert layout.code_gpa == layout.trampoline_gpa + PAGE
