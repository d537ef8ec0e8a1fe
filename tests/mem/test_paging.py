"""RegionMap and build_page_tables, checked with an independent 4-level page walker (no KVM).

Guest memory is sparse: the snapshot region at GPA 0 and the scratch region high up; the
tables live in the snapshot region, where host offsets equal GPAs, so the walker reads
them by host offset."""
from __future__ import annotations

import struct

import numpy as np
import pytest

import hlsandbox as hl
from hlsandbox.mem.builder import build_guest_memory
from hlsandbox.mem.layout import (
    NOT_PRESENT,
    NX,
    PAGE,
    RW,
    SUPERVISOR_RW,
    US,
    USER_RO,
    USER_RW,
    USER_RX,
    P,
    SandboxMemoryLayout,
    page_table_pages_for,
)
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

def walk(mem64: np.ndarray, cr3: int, table_range: tuple[int, int]) -> dict[int, np.ndarray]:
    """The leaf page tables, by page-table number (virtual address >> 21), each an array of
    512 PTEs. Checks the non-leaf entries on the way: flags exactly P|RW|US (no PS), every
    table inside table_range and referenced once, and no table without entries."""
    lo, hi = table_range
    seen = {cr3}

    def table(entry: int) -> np.ndarray:
        assert entry & ~ADDR_MASK == TABLE_FLAGS, hex(entry)
        addr = entry & ADDR_MASK
        assert lo <= addr and addr + PAGE <= hi, hex(addr)
        assert addr not in seen, f"table {addr:#x} referenced twice"
        seen.add(addr)
        t = mem64[addr // 8: addr // 8 + 512]
        assert t.any(), f"empty table at {addr:#x}"
        return t

    assert cr3 % PAGE == 0 and lo <= cr3 < hi
    pml4 = mem64[cr3 // 8: cr3 // 8 + 512]
    leaves: dict[int, np.ndarray] = {}
    for i4 in np.flatnonzero(pml4):
        pdpt = table(int(pml4[i4]))
        for i3 in np.flatnonzero(pdpt):
            pd = table(int(pdpt[i3]))
            for i2 in np.flatnonzero(pd):
                leaves[(int(i4) * 512 + int(i3)) * 512 + int(i2)] = table(int(pd[i2]))
    walk.tables = len(seen)
    return leaves


def expected_leaves(regions, ranges) -> dict[int, np.ndarray]:
    """What the leaf tables must hold: every present page of `regions` inside `ranges`
    maps to itself with its flags; everything else is not mapped."""
    exp: dict[int, np.ndarray] = {}
    for start, end, flags in regions:
        if not flags & P:
            continue
        for a, b in ranges:
            lo, hi = max(start, a), min(end, b)
            for page in range(lo // PAGE, hi // PAGE):
                k = page >> 9
                if k not in exp:
                    exp[k] = np.zeros(512, dtype=np.uint64)
                exp[k][page & 511] = np.uint64((page * PAGE) | flags)
    return exp


class Walk:
    """The result of check_walk: pte(addr) is the leaf entry mapping addr (0 if none)."""

    def __init__(self, leaves: dict[int, np.ndarray], tables: int) -> None:
        self.leaves, self.tables = leaves, tables

    def pte(self, addr: int) -> int:
        pt = self.leaves.get(addr >> 21)
        return 0 if pt is None else int(pt[(addr >> 12) & 511])


def check_walk(mem64: np.ndarray, pt_gpa: int, used: int, regions, ranges) -> Walk:
    leaves = walk(mem64, pt_gpa, (pt_gpa, pt_gpa + used))
    tables = walk.tables
    exp = expected_leaves(regions, ranges)
    assert sorted(leaves) == sorted(exp), "page tables for the wrong 2 MiB ranges"
    for k, pt in leaves.items():
        bad = np.flatnonzero(pt != exp[k])
        assert bad.size == 0, [(hex((k * 512 + int(i)) * PAGE), hex(int(pt[i])), hex(int(exp[k][i])))
                               for i in bad[:5]]
        # identity mapping: every present leaf maps its own address
        mapped = np.flatnonzero(pt)
        assert np.array_equal(pt[mapped] & np.uint64(ADDR_MASK),
                              (np.uint64(k * 512) + mapped.astype(np.uint64)) * np.uint64(PAGE))
    assert tables * PAGE == used, "tables allocated but not reachable, or reachable beyond what was used"
    return Walk(leaves, tables)


def u64(shm: SharedMemory) -> np.ndarray:
    return np.frombuffer(memoryview(shm), dtype=np.uint64)


@pytest.fixture(scope="module")
def guest():
    return hl.GuestBinary.from_path(hl.guests.path("simpleguest"))


def layout_for(guest, scratch_base=None, **cfg):
    c = hl.SandboxConfiguration(**cfg)
    return SandboxMemoryLayout(guest.image, c.heap_size, c.stack_size, c.input_data_size, c.output_data_size,
                               scratch_base=scratch_base)


def lowest_scratch_base(guest):
    base = PAGE
    while True:
        try:
            return layout_for(guest, scratch_base=base).scratch_gpa
        except hl.InvalidConfiguration:
            base += PAGE


def check_guest_memory(guest, layout):
    regions = layout.regions(guest.image)
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        mem64 = u64(shm)
        w = check_walk(mem64, layout.pt_gpa, layout.pt_size, [(r.gpa, r.end, r.flags) for r in regions],
                       layout.mapped_ranges())
        assert layout.pt_gpa + layout.pt_size <= layout.snapshot_size  # tables: host offset == GPA
        by_name: dict[str, set[int]] = {}
        for r in regions:
            for addr in range(r.gpa, r.end, PAGE):
                by_name.setdefault(r.name, set()).add(w.pte(addr) & ~ADDR_MASK)
        assert by_name["null"] == by_name["page_tables"] == by_name["guard"] == {0}
        assert by_name["system"] == {SUPERVISOR_RW} == {P | RW | NX}
        assert by_name["peb"] == {USER_RO}
        assert by_name["trampoline"] == {USER_RX}
        assert by_name["host_page"] == {USER_RO} == {P | US | NX}
        assert by_name["input"] == by_name["output"] == by_name["heap"] == by_name["stack"] == {USER_RW}
        assert by_name["code"] >= {USER_RX, USER_RW, USER_RO}
        # stack top - 8 is writable, the guard page below the stack is not mapped
        assert w.pte(layout.stack_top - 8) & (P | RW | US) == P | RW | US
        assert w.pte(layout.guard_gpa) == 0 and w.pte(layout.stack_gpa - 1) == 0
        assert w.pte(0) == 0
        # the GuestCounter is readable, not writable, by the guest
        assert w.pte(layout.counter_gpa) == layout.counter_gpa | USER_RO
        # nothing around the two parts is mapped
        end = layout.scratch_gpa + layout.scratch_size
        outside = [a for a in (layout.snapshot_size, layout.scratch_gpa - PAGE, end, end + (1 << 21), 1 << 36,
                               (1 << 36) + layout.scratch_gpa)
                   if not (a < layout.snapshot_size or layout.scratch_gpa <= a < end)]
        assert len(outside) >= 4
        for addr in outside:
            assert w.pte(addr) == 0, hex(addr)
        # the entry point is executable from user mode
        entry_pte = w.pte(layout.code_gpa + guest.image.entry)
        assert entry_pte & (P | US | NX) == P | US
        return w
    finally:
        shm.close()


@pytest.mark.parametrize("cfg", [
    {},
    dict(heap_size="8Mi", stack_size="1Mi", input_data_size="12Ki", output_data_size="20Ki"),
    dict(heap_size=4096, stack_size=8192, input_data_size=4096, output_data_size=4096),
    dict(scratch_base=0x10000000),
    dict(scratch_base=1 << 32),
    dict(scratch_base=1 << 35, heap_size="5Mi"),
    dict(scratch_base=(1 << 30) - 0x80000),  # the scratch region across a 1 GiB boundary
    dict(scratch_base="lowest"),  # right after the snapshot region, in the same page table
])
def test_guest_memory_page_tables(guest, cfg):
    if cfg.get("scratch_base") == "lowest":
        cfg = dict(cfg, scratch_base=lowest_scratch_base(guest))
    layout = layout_for(guest, **cfg)
    w = check_guest_memory(guest, layout)
    assert w.tables == page_table_pages_for([(layout.system_gpa, layout.snapshot_size),
                                             (layout.scratch_gpa, layout.scratch_gpa + layout.scratch_size)])
    if cfg.get("scratch_base") is not None and cfg["scratch_base"] < 1 << 21:
        assert w.tables == 4  # PML4, PDPT, PD, one PT for both parts


@pytest.mark.parametrize("corrupt", ["writable host page", "unmapped guard", "moved page", "extra table"])
def test_the_walker_notices_wrong_tables(guest, corrupt):
    # the checks above can fail: a wrong bit anywhere in the tables is caught
    layout = layout_for(guest)
    regions = [(r.gpa, r.end, r.flags) for r in layout.regions(guest.image)]
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        mem64 = u64(shm)
        w = check_walk(mem64, layout.pt_gpa, layout.pt_size, regions, layout.mapped_ranges())
        pt_of = {}  # page number -> index in mem64 of its PTE, found through the walk
        for k, pt in w.leaves.items():
            base = int(pt.ctypes.data - mem64.ctypes.data) // 8
            for i in range(512):
                pt_of[k * 512 + i] = base + i
        if corrupt == "writable host page":
            mem64[pt_of[layout.counter_gpa // PAGE]] |= np.uint64(RW)
        elif corrupt == "unmapped guard":
            g = layout.guard_gpa
            mem64[pt_of[g // PAGE]] = np.uint64(g | USER_RW)
        elif corrupt == "moved page":
            mem64[pt_of[layout.heap_gpa // PAGE]] += np.uint64(PAGE)
        else:  # an entry in the PML4 to a table that maps nothing
            mem64[layout.pt_gpa // 8 + 5] = np.uint64((layout.pt_gpa + PAGE) | TABLE_FLAGS)
        with pytest.raises(AssertionError):
            check_walk(mem64, layout.pt_gpa, layout.pt_size, regions, layout.mapped_ranges())
    finally:
        shm.close()


def test_default_layout_tables(guest):
    layout = layout_for(guest)
    w = check_guest_memory(guest, layout)
    assert w.tables == 6
    # one PT for the snapshot region's 2 MiB, one for the last 2 MiB below 2**36
    assert sorted(w.leaves) == [0, ((1 << 36) >> 21) - 1]


def test_rebuild_is_deterministic(guest):
    layout = layout_for(guest, heap_size="8Mi")
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        mem64 = u64(shm)
        before = mem64.copy()
        rm = RegionMap((r.gpa, r.end, r.flags) for r in layout.regions(guest.image))
        used = build_page_tables(mem64, layout.pt_gpa, layout.pt_size, rm, layout.mapped_ranges())
        assert used == layout.pt_size
        assert np.array_equal(before, mem64)
    finally:
        shm.close()


def test_large_heap_page_tables(guest):
    layout = layout_for(guest, heap_size="1Gi")
    w = check_guest_memory(guest, layout)
    assert layout.pt_size // PAGE == w.tables == 519
    last = layout.heap_gpa + (1 << 30) - 1
    assert w.pte(last) == (last & ADDR_MASK) | USER_RW
    assert w.pte(layout.heap_gpa) == layout.heap_gpa | USER_RW
    assert len(w.leaves) == 1 + 513  # the snapshot region's page table and the scratch region's


# -- build_page_tables on hand-made region maps ------------------------------------------------

TOP = 1 << 36


def test_gaps_and_not_present_regions_have_no_mapping():
    regions = [(5 * PAGE, 7 * PAGE, USER_RO),
               (10 * PAGE, 12 * PAGE, NOT_PRESENT),
               (12 * PAGE, 13 * PAGE, USER_RX),
               (20 * PAGE, 64 * PAGE, USER_RW),
               (TOP - 8 * PAGE, TOP - 2 * PAGE, USER_RW),
               (TOP - 2 * PAGE, TOP - PAGE, NOT_PRESENT),
               (TOP - PAGE, TOP, USER_RO)]
    ranges = [(0, 64 * PAGE), (TOP - 8 * PAGE, TOP)]
    shm = SharedMemory(16 * PAGE)  # only the tables need to be in memory
    try:
        mem64 = u64(shm)
        used = build_page_tables(mem64, PAGE, 8 * PAGE, RegionMap(regions), ranges)
        assert used == 6 * PAGE  # PML4, PDPT, PD 0 and PD 63, two PTs
        w = check_walk(mem64, PAGE, used, regions, ranges)
        pages = sorted((k * 512 + int(i)) for k, pt in w.leaves.items() for i in np.flatnonzero(pt))
        top = TOP // PAGE
        assert pages == [5, 6, 12] + list(range(20, 64)) + list(range(top - 8, top - 2)) + [top - 1]
        assert w.pte(TOP - PAGE) == (TOP - PAGE) | USER_RO
        assert w.pte(TOP - 2 * PAGE) == 0
    finally:
        shm.close()


def test_only_pages_inside_the_ranges_are_mapped():
    regions = [(0, 64 * PAGE, USER_RW), (1 << 30, (1 << 30) + 4 * PAGE, USER_RX)]
    ranges = [(8 * PAGE, 16 * PAGE), (12 * PAGE, 20 * PAGE), ((1 << 30) + 2 * PAGE, (1 << 30) + 8 * PAGE)]
    shm = SharedMemory(8 * PAGE)
    try:
        mem64 = u64(shm)
        used = build_page_tables(mem64, 0, 8 * PAGE, RegionMap(regions), ranges)
        w = check_walk(mem64, 0, used, regions, ranges)
        assert used == 6 * PAGE  # PML4, PDPT, PDs for GiB 0 and 1, a PT in each
        mapped = sorted((k * 512 + int(i)) for k, pt in w.leaves.items() for i in np.flatnonzero(pt))
        g = (1 << 30) // PAGE
        assert mapped == list(range(8, 20)) + [g + 2, g + 3]
        assert w.pte(7 * PAGE) == 0 and w.pte(20 * PAGE) == 0 and w.pte(1 << 30) == 0
    finally:
        shm.close()


def test_present_regions_outside_every_range_are_not_mapped():
    shm = SharedMemory(4 * PAGE)
    try:
        mem64 = u64(shm)
        used = build_page_tables(mem64, 0, 4 * PAGE, RegionMap([(TOP - PAGE, TOP, USER_RW)]), [(0, 64 * PAGE)])
        assert used == PAGE  # the PML4 alone, empty
        assert not mem64[:512].any()
        assert build_page_tables(mem64, 0, 4 * PAGE, RegionMap([(0, PAGE, USER_RW)]), []) == PAGE
    finally:
        shm.close()


def test_tables_span_several_page_tables():
    total = 3 * 512 * PAGE + 7 * PAGE  # 4 PTs
    shm = SharedMemory(16 * PAGE)
    try:
        mem64 = u64(shm)
        regions = [(0x10000, total, USER_RW)]
        used = build_page_tables(mem64, 0, 8 * PAGE, RegionMap(regions), [(0, total)])
        assert used == (1 + 1 + 1 + 4) * PAGE
        # PML4 at 0, PDPT at 0x1000, PD at 0x2000, PTs at 0x3000..0x7000
        assert [int(x) for x in mem64[0:2]] == [0x1000 | 7, 0]
        assert [int(x) for x in mem64[0x1000 // 8:0x1000 // 8 + 2]] == [0x2000 | 7, 0]
        assert [int(x) for x in mem64[0x2000 // 8:0x2000 // 8 + 5]] == [0x3000 | 7, 0x4000 | 7, 0x5000 | 7,
                                                                       0x6000 | 7, 0]
        check_walk(mem64, 0, used, regions, [(0, total)])
    finally:
        shm.close()


def test_tables_at_the_top_of_the_address_space():
    top = 1 << 48
    regions = [(top - 2 * PAGE, top, USER_RW)]
    shm = SharedMemory(4 * PAGE)
    try:
        mem64 = u64(shm)
        used = build_page_tables(mem64, 0, 4 * PAGE, RegionMap(regions), [(top - 4 * PAGE, top)])
        assert used == 4 * PAGE
        assert int(mem64[511]) == 0x1000 | 7  # the last PML4 entry
        w = check_walk(mem64, 0, used, regions, [(top - 4 * PAGE, top)])
        assert w.pte(top - PAGE) == (top - PAGE) | USER_RW
    finally:
        shm.close()


def test_stale_entries_are_cleared():
    shm = SharedMemory(16 * PAGE)
    try:
        shm.fill(0, 10 * PAGE, 0xAB)
        mem64 = u64(shm)
        regions = [(TOP - 8 * PAGE, TOP, USER_RW)]
        used = build_page_tables(mem64, 0, 8 * PAGE, RegionMap(regions), [(0, 16 * PAGE), (TOP - 8 * PAGE, TOP)])
        check_walk(mem64, 0, used, regions, [(TOP - 8 * PAGE, TOP)])
        assert used == 4 * PAGE
        assert shm.read(used, 8 * PAGE - used) == bytes(8 * PAGE - used)  # reserved but unused: zeroed
        assert shm.read(8 * PAGE, 2 * PAGE) == b"\xab" * 2 * PAGE  # beyond the tables: untouched
    finally:
        shm.close()


def test_tables_must_fit_and_be_aligned():
    shm = SharedMemory(4 * PAGE)
    try:
        mem64 = u64(shm)
        rm = RegionMap([])
        for pt_gpa, pt_size in [(PAGE, 4 * PAGE), (8, 2 * PAGE), (0, PAGE + 8), (0, 0), (0, 5 * PAGE),
                                (4 * PAGE, PAGE)]:
            with pytest.raises(ValueError, match="^page tables do not fit guest memory$"):
                build_page_tables(mem64, pt_gpa, pt_size, rm, [])
        for ranges in ([(8, PAGE)], [(0, PAGE + 1)], [(0, (1 << 48) + PAGE)]):
            with pytest.raises(ValueError, match=r"^ranges must be page aligned and below 2\*\*48$"):
                build_page_tables(mem64, 0, 4 * PAGE, rm, ranges)
        assert build_page_tables(mem64, 0, 4 * PAGE, rm, [((1 << 48) - PAGE, 1 << 48)]) == PAGE
        assert build_page_tables(mem64, 0, 4 * PAGE, rm, []) == PAGE
    finally:
        shm.close()


@pytest.mark.parametrize("pt_pages, ok", [(3, False), (5, False), (6, True)])
def test_too_few_table_pages(pt_pages, ok):
    regions = [(0, PAGE, USER_RW), (TOP - PAGE, TOP, USER_RW)]
    ranges = [(0, PAGE), (TOP - PAGE, TOP)]
    assert page_table_pages_for(ranges) == 6
    shm = SharedMemory(8 * PAGE)
    try:
        mem64 = u64(shm)
        if ok:
            assert build_page_tables(mem64, PAGE, pt_pages * PAGE, RegionMap(regions), ranges) == 6 * PAGE
        else:
            with pytest.raises(ValueError, match="^page tables need more pages than the layout reserved$"):
                build_page_tables(mem64, PAGE, pt_pages * PAGE, RegionMap(regions), ranges)
    finally:
        shm.close()


def test_page_table_pages_for_is_what_the_builder_uses():
    # sparse random layouts: the count is exactly what the builder allocates when every
    # page of the ranges is present
    rng = np.random.default_rng(7)
    for _ in range(30):
        ranges = []
        for _ in range(rng.integers(1, 4)):
            start = int(rng.integers(0, (1 << 36) // PAGE - 2048)) * PAGE
            ranges.append((start, start + int(rng.integers(1, 1200)) * PAGE))
        ranges.sort()
        merged = []
        for a, b in ranges:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        regions = [(a, b, USER_RW) for a, b in merged]
        need = page_table_pages_for(merged)
        shm = SharedMemory((need + 1) * PAGE)
        try:
            mem64 = u64(shm)
            used = build_page_tables(mem64, 0, need * PAGE, RegionMap(regions), merged)
            assert used == need * PAGE
            check_walk(mem64, 0, used, regions, merged)
        finally:
            shm.close()


# What the CPU reads from a leaf PTE (Intel SDM vol. 3A, 4.5, table 4-20), written out here
# rather than taken from mem/layout.py, so that a wrong flag constant there fails.
def permissions(pte: int) -> str:
    """"" (not mapped), or the access a CPL3 guest has: "r", "rw", "rx", "rwx"; "kernel"
    for a page only CPL0 may touch."""
    if not pte & 1:
        return ""
    if not pte & 4:
        return "kernel"
    return "r" + ("w" if pte & 2 else "") + ("" if pte >> 63 else "x")


def test_page_permissions_are_what_the_guest_gets(guest):
    layout = layout_for(guest)
    shm = build_guest_memory(guest.image, layout, guest.name)
    try:
        w = check_walk(u64(shm), layout.pt_gpa, layout.pt_size,
                       [(r.gpa, r.end, r.flags) for r in layout.regions(guest.image)], layout.mapped_ranges())
        # Per image page, what its program headers ask for (raw ELF, not pyelftools or the builder).
        data = open(hl.guests.path("simpleguest"), "rb").read()
        phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
        want: dict[int, str] = {}
        for i in range(phnum):
            ptype, pflags, _, vaddr, _, _, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if ptype == 1 and memsz:  # PT_LOAD; p_flags: 1 X, 2 W, 4 R
                for page in range(vaddr // PAGE, (vaddr + memsz - 1) // PAGE + 1):
                    have = want.get(page, "r")
                    want[page] = "r" + ("w" if pflags & 2 or "w" in have else "") + \
                        ("x" if pflags & 1 or "x" in have else "")
        got = {p: permissions(w.pte(layout.code_gpa + p * PAGE)) for p in range(layout.image_size // PAGE)}
        assert got == {p: want.get(p, "") for p in got}
        assert {"rx", "r", "rw"} <= set(got.values())
        assert permissions(w.pte(layout.system_gpa)) == "kernel"
        assert permissions(w.pte(layout.peb_gpa)) == "r"
        assert permissions(w.pte(layout.trampoline_gpa)) == "rx"
        assert permissions(w.pte(layout.counter_gpa)) == "r"
        for gpa in (layout.input_gpa, layout.output_gpa, layout.heap_gpa, layout.stack_top - 8):
            assert permissions(w.pte(gpa)) == "rw", hex(gpa)
        assert permissions(w.pte(layout.guard_gpa)) == permissions(w.pte(0)) == ""
    finally:
        shm.close()
