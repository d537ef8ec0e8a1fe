# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""4-level page tables for the amd64 profile, written in one pass over typed memoryviews.

Tables are built once per sandbox, before the guest first runs: on kvm-pvm the
guest does not see later host edits of its page tables (docs/abi.md)."""
from libc.stdint cimport uint64_t, int64_t

cdef enum:
    PAGE = 4096
    ENTRIES = 512
    TABLE_FLAGS = 7  # present, writable, user: the leaf entries decide the real permissions


cdef uint64_t[::1] _u64s(Py_ssize_t n):
    """n zeroed u64s."""
    return memoryview(bytearray(8 * n)).cast("Q")


cdef class RegionMap:
    """Sorted, non-overlapping [start, end) ranges with PTE flags; looking an address up
    reuses the index of the last hit, so walking memory in order costs O(1) a page."""

    cdef uint64_t[::1] starts, ends, flags
    cdef Py_ssize_t n
    cdef readonly Py_ssize_t last_index

    def __init__(self, regions):
        """regions: iterable of (start, end, flags), sorted by start, not overlapping."""
        rs = list(regions)
        self.n = len(rs)
        self.starts, self.ends, self.flags = _u64s(self.n), _u64s(self.n), _u64s(self.n)
        for i, (start, end, flags) in enumerate(rs):
            self.starts[i], self.ends[i], self.flags[i] = start, end, flags
        self.last_index = 0
        for i in range(self.n):
            if self.ends[i] <= self.starts[i] or (i and self.starts[i] < self.ends[i - 1]):
                raise ValueError(f"regions must be sorted, non-empty and disjoint (index {i})")

    cdef inline int64_t find(self, uint64_t addr) nogil:
        cdef Py_ssize_t i = self.last_index
        if i < self.n and self.starts[i] <= addr < self.ends[i]:
            return i
        if i + 1 < self.n and self.starts[i + 1] <= addr < self.ends[i + 1]:
            self.last_index = i + 1
            return i + 1
        cdef Py_ssize_t lo = 0, hi = self.n - 1, mid
        while lo <= hi:  # binary search for a random access
            mid = (lo + hi) // 2
            if addr < self.starts[mid]:
                hi = mid - 1
            elif addr >= self.ends[mid]:
                lo = mid + 1
            else:
                self.last_index = mid
                return mid
        return -1

    def lookup(self, uint64_t addr):
        """Index of the region holding addr, or -1."""
        return self.find(addr)

    cdef inline uint64_t flags_at(self, uint64_t addr) nogil:
        cdef int64_t i = self.find(addr)
        return 0 if i < 0 else self.flags[i]


def build_page_tables(uint64_t[::1] mem, uint64_t pt_gpa, uint64_t pt_size, RegionMap regions, ranges):
    """Writes 4-level tables identity-mapping every present page of `regions` inside the
    [start, end) `ranges`, with 4 KiB pages, into [pt_gpa, pt_gpa + pt_size) of `mem`
    (memory viewed as u64, indexed by guest physical address: the tables live in the
    snapshot region, where host offsets equal GPAs). Tables are allocated as needed;
    returns the bytes used."""
    if pt_gpa % PAGE or pt_size % PAGE or pt_size < PAGE or pt_gpa + pt_size > <uint64_t>mem.shape[0] * 8:
        raise ValueError("page tables do not fit guest memory")
    cdef uint64_t pml4 = pt_gpa, next_table = pt_gpa + PAGE, end = pt_gpa + pt_size
    cdef uint64_t addr, stop, f, table, idx, shift, entry
    cdef uint64_t i
    cdef int level
    for i in range(pt_gpa // 8, end // 8):
        mem[i] = 0
    for start_, stop_ in ranges:
        addr = start_
        stop = stop_
        if addr % PAGE or stop % PAGE or stop > (<uint64_t>1 << 48):
            raise ValueError("ranges must be page aligned and below 2**48")
        while addr < stop:
            f = regions.flags_at(addr)
            if f & 1:
                table = pml4
                for level in range(3):  # PML4 -> PDPT -> PD -> PT
                    shift = 39 - 9 * level
                    idx = table // 8 + ((addr >> shift) & 511)
                    entry = mem[idx]
                    if entry == 0:
                        if next_table >= end:
                            raise ValueError("page tables need more pages than the layout reserved")
                        entry = next_table | TABLE_FLAGS
                        mem[idx] = entry
                        next_table += PAGE
                    table = entry & 0x000FFFFFFFFFF000
                mem[table // 8 + ((addr >> 12) & 511)] = addr | f
            addr += PAGE
    return next_table - pt_gpa
