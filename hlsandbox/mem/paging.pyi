"""Types of hlsandbox.mem.paging (paging.pyx): amd64 page tables."""
from collections.abc import Iterable

from typing_extensions import disjoint_base

@disjoint_base
class RegionMap:
    """Sorted, non-overlapping [start, end) ranges with PTE flags."""

    @property
    def last_index(self) -> int: ...
    def __init__(self, regions: Iterable[tuple[int, int, int]]) -> None: ...
    def lookup(self, addr: int) -> int:
        """Index of the region holding addr, or -1."""

def build_page_tables(mem: memoryview, pt_gpa: int, pt_size: int, regions: RegionMap,
                      ranges: Iterable[tuple[int, int]]) -> int:
    """Writes 4-level tables identity-mapping the present pages of `regions` inside `ranges`
    into [pt_gpa, pt_gpa + pt_size) of `mem` (u64 words); returns the bytes used."""
