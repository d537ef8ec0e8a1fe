"""Types of hlsandbox.mem.shared_memory (shared_memory.pyx): guest memory."""
from typing_extensions import Self, disjoint_base

@disjoint_base
class SharedMemory:
    """`size` bytes of zeroed guest memory (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE), or a
    mapping of `fd` from `offset`."""

    # __cinit__ at runtime: the constructor's arguments go to __new__.
    def __new__(cls, size: int, fd: int = -1, offset: int = 0, writable: bool = True,
                shared: bool = False) -> Self: ...
    @property
    def size(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    @classmethod
    def from_fd(cls, fd: int, size: int, offset: int = 0, writable: bool = True,
                shared: bool = False) -> SharedMemory:
        """Maps a file: privately (copy-on-write, the file is never modified) unless shared."""
    def resident_pages(self) -> bytearray:
        """One byte a page, 1 where the page may hold data, else 0."""
    def resident_runs(self) -> list[tuple[int, int]]:
        """[start, end) page index runs of the resident pages."""
    def copy_from(self, src_address: int, offset: int, n: int) -> None:
        """Copies n bytes from host address src_address (another mapping) to offset."""
    @property
    def address(self) -> int:
        """Host virtual address of guest physical address 0."""
    def close(self) -> None:
        """Unmaps now, or when the last exported buffer is released."""
    def _check_open(self) -> None: ...
    def prefault(self, offset: int, n: int) -> None:
        """Backs [offset, offset+n) with host pages now."""
    def read(self, offset: int, n: int) -> bytes: ...
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...
    def fill(self, offset: int, n: int, value: int = 0) -> None: ...
    def read_u64(self, offset: int) -> int: ...
    def write_u64(self, offset: int, value: int) -> None: ...
    # The buffer protocol, so memoryview(shm) type-checks; before Python 3.12 the runtime has
    # no __buffer__ attribute (tests/test_typing.py allows that to stubtest).
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

def page_runs(mask: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
    """[start, end) index runs where mask (one byte an entry) is nonzero."""

def nonzero_pages(data: bytes | bytearray | memoryview) -> list[int]:
    """Indices of the 4 KiB pages of data (a whole number of pages) that are not all zero."""
