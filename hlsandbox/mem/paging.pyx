# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""4-level page tables for the amd64 profile, written in one pass over typed memoryviews.

Tables are built once per sandbox, before the guest first runs: on kvm-pvm the
guest does not see later host edits of its page tables (docs/abi.md)."""
from libc.stdint cimport uint64_t, int64_t

cdef enum:
    PAGE = 4096
    ENTRIES = 512
    TABLE_FLAGS = 7  # present, writable, user: the leaf entries decide the real permissions


cdef class RegionMap:
    """Sorted, non-overlapping [start, end) ranges with PTE flags; looking an address up
    reuses the index of the last hit, so walking memory in order costs O(1) a page."""

    cdef uint64_t[::1] starts, ends, flags
    cdef Py_ssize_t n
    cdef readonly Py_ssize_t last_index

    def __init__(self, regions):
        """regions: iterable of (start, end, flags), sorted by start, not overlapping."""
        import numpy as np
        rs = list(regions)
        self.starts = np.array([r[0] for r in rs], dtype=np.uint64)
        self.ends = np.array([r[1] for r in rs], dtype=np.uint64)
        self.flags = np.array([r[2] for r in rs], dtype=np.uint64)
        self.n = len(rs)
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


def build_page_tables(uint64_t[::1] mem, uint64_t pt_gpa, uint64_t total, RegionMap regions):
    """Writes PML4, PDPTs, PDs and PTs identity-mapping [0, total) with 4 KiB pages at
    pt_gpa inside `mem` (guest memory viewed as u64). Returns the bytes used."""
    cdef uint64_t npages = (total + PAGE - 1) // PAGE
    cdef uint64_t npt = (npages + ENTRIES - 1) // ENTRIES
    cdef uint64_t npd = (npt + ENTRIES - 1) // ENTRIES
    cdef uint64_t npdpt = (npd + ENTRIES - 1) // ENTRIES
    if npdpt > ENTRIES:
        raise ValueError("guest memory larger than 256 TiB")
    cdef uint64_t pml4 = pt_gpa
    cdef uint64_t pdpt = pml4 + PAGE
    cdef uint64_t pd = pdpt + npdpt * PAGE
    cdef uint64_t pt = pd + npd * PAGE
    cdef uint64_t end = pt + npt * PAGE
    if end > <uint64_t>mem.shape[0] * 8 or pt_gpa % PAGE:
        raise ValueError("page tables do not fit guest memory")
    cdef uint64_t i, f
    with nogil:
        for i in range(pml4 // 8, end // 8):
            mem[i] = 0
        for i in range(npdpt):
            mem[pml4 // 8 + i] = (pdpt + i * PAGE) | TABLE_FLAGS
        for i in range(npd):
            mem[pdpt // 8 + i] = (pd + i * PAGE) | TABLE_FLAGS
        for i in range(npt):
            mem[pd // 8 + i] = (pt + i * PAGE) | TABLE_FLAGS
        for i in range(npages):
            f = regions.flags_at(i * PAGE)
            if f & 1:
                mem[pt // 8 + i] = (i * PAGE) | f
    return end - pt_gpa
