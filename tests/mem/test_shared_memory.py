"""SharedMemory: bounds checks, closing, buffer export and prefault (no KVM)."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from hlsandbox.mem.shared_memory import SharedMemory

PAGE = 4096


@pytest.fixture
def shm():
    m = SharedMemory(4 * PAGE)
    yield m
    m.close()


@pytest.mark.parametrize("size", [PAGE, 2 * PAGE, 256 * PAGE, 1 << 30])
def test_sizes(size):
    m = SharedMemory(size)
    try:
        assert m.size == size
        assert m.address % PAGE == 0
        assert m.read(0, 16) == bytes(16)
        assert m.read(size - 16, 16) == bytes(16)
    finally:
        m.close()


@pytest.mark.parametrize("size", [0, 1, 4095, 4097, PAGE + 8, 3 * PAGE - 1])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match="^guest memory size must be a positive multiple of 4096$"):
        SharedMemory(size)


def test_negative_size():
    with pytest.raises((ValueError, OverflowError)):
        SharedMemory(-PAGE)


def test_read_write(shm):
    shm.write(100, b"hello")
    assert shm.read(100, 5) == b"hello"
    assert shm.read(99, 7) == b"\0hello\0"
    shm.write(0, bytearray(b"\x01\x02"))
    shm.write(4 * PAGE - 3, memoryview(b"end"))
    assert shm.read(0, 3) == b"\x01\x02\0"
    assert shm.read(4 * PAGE - 3, 3) == b"end"
    shm.write(50, b"")  # empty write is fine, even at the end
    shm.write(4 * PAGE, b"")
    assert shm.read(4 * PAGE, 0) == b""


def test_u64(shm):
    shm.write_u64(8, 0x0102030405060708)
    assert shm.read(8, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert shm.read_u64(8) == 0x0102030405060708
    shm.write_u64(4 * PAGE - 8, 2**64 - 1)
    assert shm.read_u64(4 * PAGE - 8) == 2**64 - 1
    shm.write_u64(3, 7)  # unaligned is allowed
    assert shm.read_u64(3) == 7
    with pytest.raises(OverflowError):
        shm.write_u64(0, 2**64)
    with pytest.raises(OverflowError):
        shm.write_u64(0, -1)


def test_fill(shm):
    shm.fill(10, 20, 0x5A)
    assert shm.read(9, 22) == b"\0" + b"\x5a" * 20 + b"\0"
    shm.fill(15, 5)
    assert shm.read(10, 10) == b"\x5a" * 5 + b"\0" * 5
    shm.fill(0, 4 * PAGE, 0xFF)
    assert shm.read(0, 4 * PAGE) == b"\xff" * 4 * PAGE


@pytest.mark.parametrize("offset, n", [
    (4 * PAGE, 1), (4 * PAGE - 1, 2), (4 * PAGE + 1, 0), (0, 4 * PAGE + 1), (1, 4 * PAGE), (2**63, 1),
    (1, 2**64 - 1), (2**64 - 1, 2),
])
def test_out_of_range(shm, offset, n):
    msg = r"^guest memory access \[0x[0-9a-f]+, \+0x[0-9a-f]+\) outside \[0, 0x4000\)$"
    with pytest.raises(IndexError, match=msg):
        shm.read(offset, n)
    with pytest.raises(IndexError, match=msg):
        shm.fill(offset, n, 1)
    with pytest.raises(IndexError, match=msg):
        shm.prefault(offset, n)
    if n < 1 << 20:
        with pytest.raises(IndexError, match=msg):
            shm.write(offset, b"x" * n)


@pytest.mark.parametrize("offset", [4 * PAGE - 7, 4 * PAGE - 1, 4 * PAGE, 2**64 - 1, 2**64 - 8])
def test_u64_out_of_range(shm, offset):
    with pytest.raises(IndexError, match=r"outside \[0, 0x4000\)"):
        shm.read_u64(offset)
    with pytest.raises(IndexError, match=r"outside \[0, 0x4000\)"):
        shm.write_u64(offset, 1)


def test_out_of_range_leaves_memory_alone(shm):
    with pytest.raises(IndexError):
        shm.write(4 * PAGE - 2, b"abc")
    with pytest.raises(IndexError):
        shm.fill(4 * PAGE - 2, 3, 0xEE)
    assert shm.read(4 * PAGE - 2, 2) == b"\0\0"


def test_negative_offsets_are_rejected(shm):
    for call in (lambda: shm.read(-1, 1), lambda: shm.write(-1, b"x"), lambda: shm.read_u64(-8),
                 lambda: shm.write_u64(-8, 0), lambda: shm.fill(-1, 1), lambda: shm.read(0, -1)):
        with pytest.raises((IndexError, OverflowError)):
            call()


def test_close_then_access():
    m = SharedMemory(PAGE)
    m.close()
    for call in (lambda: m.read(0, 1), lambda: m.write(0, b"x"), lambda: m.read_u64(0),
                 lambda: m.write_u64(0, 1), lambda: m.fill(0, 1), lambda: m.prefault(0, PAGE),
                 lambda: m.address, lambda: memoryview(m)):
        with pytest.raises(ValueError, match="^guest memory is closed$"):
            call()
    m.close()  # twice is fine
    assert m.size == PAGE


def test_memoryview_export(shm):
    mv = memoryview(shm)
    assert (mv.nbytes, mv.format, mv.itemsize, mv.ndim, mv.readonly) == (4 * PAGE, "B", 1, 1, False)
    mv[10:13] = b"abc"
    assert shm.read(10, 3) == b"abc"
    shm.write(20, b"xyz")
    assert bytes(mv[20:23]) == b"xyz"
    a = np.frombuffer(mv, dtype=np.uint64)
    a[1] = 0xDEADBEEF
    assert shm.read_u64(8) == 0xDEADBEEF
    assert a.ctypes.data == shm.address
    mv.release()


def test_close_with_live_export_defers_unmap():
    m = SharedMemory(PAGE)
    mv = memoryview(m)
    mv[0:4] = b"live"
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.read(0, 4)
    assert bytes(mv[0:4]) == b"live"  # the mapping stays valid while exported
    mv.release()
    del m
    gc.collect()


def test_numpy_view_keeps_memory_alive():
    m = SharedMemory(PAGE)
    a = np.frombuffer(memoryview(m), dtype=np.uint8)
    a[:3] = [1, 2, 3]
    m.close()
    assert a[:3].tolist() == [1, 2, 3]
    del a
    gc.collect()


def test_prefault_keeps_content(shm):
    pattern = bytes(range(256)) * 16
    shm.write(PAGE, pattern)
    shm.write(3 * PAGE + 5, b"tail")
    before = shm.read(0, 4 * PAGE)
    shm.prefault(0, 4 * PAGE)
    shm.prefault(PAGE + 100, 10)
    shm.prefault(3 * PAGE + 1, PAGE - 1)
    shm.prefault(4 * PAGE, 0)
    assert shm.read(0, 4 * PAGE) == before


def test_prefault_large_untouched_region():
    m = SharedMemory(64 * PAGE)
    try:
        m.prefault(PAGE, 62 * PAGE)
        assert m.read(0, 64 * PAGE) == bytes(64 * PAGE)
    finally:
        m.close()


def test_separate_mappings_are_independent():
    a, b = SharedMemory(PAGE), SharedMemory(PAGE)
    try:
        assert a.address != b.address
        a.write(0, b"a")
        assert b.read(0, 1) == b"\0"
    finally:
        a.close()
        b.close()


# -- resident pages, page runs, nonzero pages (what snapshots copy and checksum) ----------------

def test_resident_pages_and_runs():
    m = SharedMemory(16 * PAGE)
    try:
        assert m.resident_pages() == bytearray(16) and m.resident_runs() == []
        for p in (1, 2, 3, 7, 15):
            m.write(p * PAGE + 5, b"x")
        assert list(m.resident_pages()) == [1 if p in (1, 2, 3, 7, 15) else 0 for p in range(16)]
        assert m.resident_runs() == [(1, 4), (7, 8), (15, 16)]
        m.prefault(9 * PAGE, 2 * PAGE)  # backed, though still zero: a snapshot copies it
        assert m.resident_runs() == [(1, 4), (7, 8), (9, 11), (15, 16)]
    finally:
        m.close()
    with pytest.raises(ValueError, match="closed"):
        m.resident_pages()


@pytest.mark.parametrize("mask, runs", [
    (b"", []), (b"\0\0", []), (b"\1", [(0, 1)]), (b"\1\1\0\1", [(0, 2), (3, 4)]),
    (b"\0\1\1\1\0\0\2\0", [(1, 4), (6, 7)]), (bytes([1] * 1000), [(0, 1000)]),
])
def test_page_runs(mask, runs):
    from hlsandbox.mem.shared_memory import page_runs
    assert page_runs(mask) == runs
    assert page_runs(bytearray(mask)) == runs


def test_nonzero_pages():
    from hlsandbox.mem.shared_memory import nonzero_pages
    data = bytearray(6 * PAGE)
    assert nonzero_pages(data) == []
    data[0] = 1
    data[2 * PAGE + PAGE - 1] = 0x80  # the last byte of a page
    data[5 * PAGE + 2048] = 7
    assert nonzero_pages(data) == [0, 2, 5]
    assert nonzero_pages(memoryview(data)[2 * PAGE:4 * PAGE]) == [0]
    assert nonzero_pages(b"") == []
    with pytest.raises(ValueError, match="whole number of pages"):
        nonzero_pages(bytes(PAGE + 8))
