"""RegionMap and build_page_tables, checked with an independent 4-level page walker (no KVM)."""
from __future__ import annotations

import numpy as np
import pytest

import hlsandbox as hl
from hlsandbox.mem.builder import build_guest_memory
from hlsandbox.mem.layout import NOT_PRESENT, NX, PAGE, RW, US, USER_RO, USER_RW, USER_RX, P, SandboxMemoryLayout, \
    page_table_pages
from hlsandbox.mem.paging import RegionMap, build_page_tables
from hlsandbox.mem.shared_memory import SharedMemory

ADDR_MASK = 0x000F_FFFF_FFFF_F000
PS = 1 << 7
TABLE_FLAGS = P | RW | US


# -- RegionMap -------------------------------------------------------------------------------

def test_lookup_hits_and_misses():
    m = RegionMap([(0x1000, 0x3000, 1), (0x3000, 0x4000, 3), (0x8000, 0x9000, 7)])
    assert [m.lookup(a) for a in (0x1000, 0x2FFF, 0x3000, 0x3FFF, 0x8000, 0x8FFF)] == [0, 0, 1, 1, 2, 2]
    assert [m.lookup(a) for a in (0, 0xFFF, 0x4000, 0x7FFF, 0x9000, 2**64 - 1)] == [-1] * 6


def test_lookup_generator_input():
    m = RegionMap((a, a + 0x1000, 1) for a in range(0, 0x10000, 0x2000))
    assert [m.lookup(a) for a in range(0, 0x10000, 0x1000)] == [0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1,
                                                              7, -1]


def test_empty_map():
    m = RegionMap([])
    assert m.lookup(0) == -1
    assert m.lookup(12345) == -1


def test_last_index_follows_sequential_lookups():
    regions = [(i * 0x1000, (i + 1) * 0x1000, 1) for i in range(20)]
    m = RegionMap(regions)
    assert m.last_index == 0
    for i in range(20):
        assert m.lookup(i * 0x1000 + 5) == i
        assert m.last_index == i
        assert m.lookup(i * 0x1000 + 0xFFF) == i  # same region: cache hit
        assert m.last_index == i


def test_last_index_after_random_access_and_miss():
    m = RegionMap([(i * 0x1000, (i + 1) * 0x1000, 1) for i in range(0, 40, 2)])  # gaps between regions
    assert m.lookup(30 * 0x1000) == 15
    assert m.last_index == 15
    assert m.lookup(3 * 0x1000) == -1  # a miss leaves the cache alone
    assert m.last_index == 15
    assert m.lookup(4 * 0x1000) == 2
    assert m.last_index == 2
    assert m.lookup(6 * 0x1000) == 3  # the next region: found by the i+1 check
    assert m.last_index == 3


def test_last_index_is_read_only():
    m = RegionMap([(i * 0x1000, (i + 1) * 0x1000, 1) for i in range(8)])
    with pytest.raises(AttributeError):
        m.last_index = -1
    assert [m.lookup(i * 0x1000) for i in range(8)] == list(range(8))


@pytest.mark.parametrize("regions, index", [
    ([(0x2000, 0x3000, 1), (0x1000, 0x2000, 1)], 1),  # unsorted
    ([(0x1000, 0x3000, 1), (0x2000, 0x4000, 1)], 1),  # overlapping
    ([(0x1000, 0x1000, 1)], 0),  # empty
    ([(0x2000, 0x1000, 1)], 0),  # end before start
    ([(0, 0x1000, 1), (0x1000, 0x2000, 1), (0x3000, 0x3000, 1)], 2),
    ([(0, 0x1000, 1), (0x1000, 0x2000, 1), (0x1800, 0x3000, 1)], 2),
])
def test_bad_region_lists(regions, index):
    with pytest.raises(ValueError, match=rf"^regions must be sorted, non-empty and disjoint \(index {index}\)$"):
        RegionMap(regions)


def test_adjacent_regions_are_fine():
    m = RegionMap([(0, 0x1000, 1), (0x1000, 0x2000, 3)])
    assert (m.lookup(0xFFF), m.lookup(0x1000)) == (0, 1)


# -- a Python page walker ----------------------------------------------------------------------

def walk(mem64: np.ndarray, cr3: int, table_range: tuple[int, int]) -> np.ndarray:
    """Leaf PTEs of every mapped 4 KiB page, indexed by virtual page number (0 where unmapped).
    Checks the non-leaf entries on the way: flags P|RW|US only, no PS, tables inside table_range."""
    lo, hi = table_range

    def table(entry: int) -> np.ndarray:
        assert entry & ~ADDR_MASK == TABLE_FLAGS, hex(entry)
        addr = entry & ADDR_MASK
        assert lo <= addr and addr + PAGE <= hi, hex(addr)
        return mem64[addr // 8: addr // 8 + 512]

    assert cr3 % PAGE == 0
    pml4 = mem64[cr3 // 8: cr3 // 8 + 512]
    leaves: dict[int, np.ndarray] = {}
    for i4 in np.flatnonzero(pml4):
        pdpt = table(int(pml4[i4]))
        for i3 in np.flatnonzero(pdpt):
            pd = table(int(pdpt[i3]))
            for i2 in np.flatnonzero(pd):
                leaves[(int(i4) * 512 + int(i3)) * 512 + int(i2)] = table(int(pd[i2]))
    npt = max(leaves) + 1 if leaves else 0
    out = np.zeros(npt * 512, dtype=np.uint64)
    for k, pt in leaves.items():
        out[k * 512:(k + 1) * 512] = pt
    return out


def expected_leaves(regions, npages: int) -> np.ndarray:
    exp = np.zeros(npages, dtype=np.uint64)
    for start, end, flags in regions:
        if flags & P:
            pages = np.arange(start // PAGE, end // PAGE, dtype=np.uint64)
            exp[start // PAGE:end // PAGE] = (pages * np.uint64(PAGE)) | np.uint64(flags)
    return exp


def check_walk(shm: SharedMemory, pt_gpa: int, pt_size: int, total: int, regions):
    mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
    leaves = walk(mem64, pt_gpa, (pt_gpa, pt_gpa + pt_size))
    npages = total // PAGE
    assert len(leaves) >= npages
    assert not leaves[npages:].any(), "pages beyond the end of guest memory are mapped"
    leaves = leaves[:npages]
    exp = expected_leaves(regions, npages)
    bad = np.flatnonzero(leaves != exp)
    assert bad.size == 0, [(hex(int(p) * PAGE), hex(int(leaves[p])), hex(int(exp[p]))) for p in bad[:5]]
    mapped = leaves != 0
    # identity mapping: every present leaf maps its own address
    pages = np.flatnonzero(mapped).astype(np.uint64)
    assert np.array_equal(leaves[mapped] & np.uint64(ADDR_MASK), pages * np.uint64(PAGE))
    return leaves


@pytest.fixture(scope="module")
def guest():
    return hl.GuestBinary.from_path(hl.guests.path("simpleguest"))


def layout_for(guest, **cfg):
    c = hl.SandboxConfiguration(**cfg)
    return SandboxMemoryLayout(guest.image, c.heap_size, c.stack_size, c.input_data_size, c.output_data_size)


@pytest.mark.parametrize("cfg", [
    {},
    dict(heap_size="8Mi", stack_size="1Mi", input_data_size="12Ki", output_data_size="20Ki"),
    dict(heap_size=4096, stack_size=8192, input_data_size=4096, output_data_size=4096),
])
def test_guest_memory_page_tables(guest, cfg):
    layout = layout_for(guest, **cfg)
    regions = layout.regions(guest.image)
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        leaves = check_walk(shm, layout.pt_gpa, layout.pt_size, layout.total_size,
                            [(r.gpa, r.end, r.flags) for r in regions])
        by_name: dict[str, set[int]] = {}
        for r in regions:
            for page in range(r.gpa // PAGE, r.end // PAGE):
                by_name.setdefault(r.name, set()).add(int(leaves[page]) & ~ADDR_MASK)
        assert by_name["null"] == by_name["page_tables"] == by_name["guard"] == {0}
        assert by_name["system"] == {P | RW | NX}
        assert by_name["peb"] == {USER_RO}
        assert by_name["input"] == by_name["output"] == by_name["heap"] == by_name["stack"] == {USER_RW}
        assert by_name["code"] >= {USER_RX, USER_RW, USER_RO}
        # stack top - 8 is writable, the guard page below the stack is not mapped
        assert int(leaves[(layout.stack_top - 8) // PAGE]) & (P | RW | US) == P | RW | US
        assert leaves[layout.guard_gpa // PAGE] == 0
        assert leaves[0] == 0
        # the entry point is executable from user mode
        entry_pte = int(leaves[(layout.code_gpa + guest.image.entry) // PAGE])
        assert entry_pte & (P | US | NX) == P | US
    finally:
        shm.close()


def test_rebuild_returns_table_bytes(guest):
    layout = layout_for(guest, heap_size="8Mi")
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
        before = mem64.copy()
        rm = RegionMap((r.gpa, r.end, r.flags) for r in layout.regions(guest.image))
        used = build_page_tables(mem64, layout.pt_gpa, layout.total_size, rm)
        assert used == page_table_pages(layout.total_size) * PAGE == layout.pt_size
        assert np.array_equal(before, mem64)  # deterministic
    finally:
        shm.close()


def test_large_heap_page_tables(guest):
    layout = layout_for(guest, heap_size="1Gi")
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        leaves = check_walk(shm, layout.pt_gpa, layout.pt_size, layout.total_size,
                            [(r.gpa, r.end, r.flags) for r in layout.regions(guest.image)])
        assert layout.pt_size // PAGE == 518
        assert int(leaves[(layout.heap_gpa + (1 << 30) - 1) // PAGE]) == \
            ((layout.heap_gpa + (1 << 30) - 1) & ADDR_MASK) | USER_RW
    finally:
        shm.close()


# -- build_page_tables on hand-made region maps ------------------------------------------------

def test_gaps_and_not_present_regions_have_no_mapping():
    total = 64 * PAGE
    regions = [(0x3000 + PAGE * 2, 0x3000 + PAGE * 4, USER_RO),  # [5, 7)
               (PAGE * 10, PAGE * 12, NOT_PRESENT),
               (PAGE * 12, PAGE * 13, USER_RX),
               (PAGE * 20, PAGE * 64, USER_RW)]
    shm = SharedMemory(total)
    try:
        mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
        used = build_page_tables(mem64, PAGE, total, RegionMap(regions))
        assert used == 4 * PAGE
        leaves = check_walk(shm, PAGE, used, total, regions)
        assert np.flatnonzero(leaves).tolist() == [5, 6, 12] + list(range(20, 64))
    finally:
        shm.close()


def test_tables_span_several_page_tables():
    total = 3 * 512 * PAGE + 7 * PAGE  # 4 PTs
    shm = SharedMemory(total)
    try:
        mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
        regions = [(0x10000, total, USER_RW)]
        used = build_page_tables(mem64, 0, total, RegionMap(regions))
        assert used == (1 + 1 + 1 + 4) * PAGE
        # PML4 at 0, PDPT at 0x1000, PD at 0x2000, PTs at 0x3000..0x7000
        assert [int(x) for x in mem64[0:2]] == [0x1000 | 7, 0]
        assert [int(x) for x in mem64[0x1000 // 8:0x1000 // 8 + 2]] == [0x2000 | 7, 0]
        assert [int(x) for x in mem64[0x2000 // 8:0x2000 // 8 + 5]] == [0x3000 | 7, 0x4000 | 7, 0x5000 | 7,
                                                                       0x6000 | 7, 0]
        check_walk(shm, 0, used, total, regions)
    finally:
        shm.close()


def test_stale_entries_are_cleared():
    total = 16 * PAGE
    shm = SharedMemory(total)
    try:
        shm.fill(0, 6 * PAGE, 0xAB)
        mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
        used = build_page_tables(mem64, 0, total, RegionMap([(8 * PAGE, 16 * PAGE, USER_RW)]))
        check_walk(shm, 0, used, total, [(8 * PAGE, 16 * PAGE, USER_RW)])
        assert used == 4 * PAGE
        assert shm.read(used, 2 * PAGE) == b"\xab" * 2 * PAGE  # beyond the tables: untouched
    finally:
        shm.close()


def test_tables_must_fit_and_be_aligned():
    shm = SharedMemory(4 * PAGE)
    try:
        mem64 = np.frombuffer(memoryview(shm), dtype=np.uint64)
        rm = RegionMap([])
        with pytest.raises(ValueError, match="^page tables do not fit guest memory$"):
            build_page_tables(mem64, PAGE, 4 * PAGE, rm)  # needs PAGE..5*PAGE
        with pytest.raises(ValueError, match="^page tables do not fit guest memory$"):
            build_page_tables(mem64, 8, 4 * PAGE, rm)
        with pytest.raises(ValueError, match="^guest memory larger than 256 TiB$"):
            build_page_tables(mem64, 0, (256 << 40) + PAGE, rm)
        assert build_page_tables(mem64, 0, 4 * PAGE, rm) == 4 * PAGE
    finally:
        shm.close()
