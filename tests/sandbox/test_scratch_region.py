"""Where the scratch region goes: SandboxConfiguration(scratch_base_gpa=...), its validation
for both profiles, the defaults, and real amd64 sandboxes with the scratch region at custom
guest physical addresses (docs/abi.md, "Memory layout")."""
from __future__ import annotations

import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.builder import ABI_VERSION, PEB_MAGIC
from hlsandbox.mem.elf import PF_R, PF_W, PF_X, ElfImage, Segment
from hlsandbox.mem.layout import APIC_PAGE, PAGE, SandboxMemoryLayout, check_scratch_base
from hlsandbox.sandbox.evolve import layout_for

from helpers import host_add, make_sandbox

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
AMD64_TOP = 1 << 36
SCRATCH_SIZE = 16 * KiB + 16 * KiB + MiB + PAGE + 256 * KiB + PAGE  # the default configuration's
SIMPLEGUEST = hl.guests.path("simpleguest")
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}

# An i686 image like nanvixlike: linked at 1 MiB, 0x3184 bytes -> snapshot region [0, 0x104000).
I686_IMAGE = ElfImage(entry=0, segments=[Segment(0, 0xD1C, b"", PF_R | PF_X), Segment(0x1000, 0x34E, b"", PF_R),
                                         Segment(0x2000, 0x1184, b"", PF_R | PF_W)],
                      relocations=[], align=PAGE, size=0x3184, profile="i686", link_base=0x100000)
I686_SNAPSHOT_SIZE = 0x104000


def uninitialized(base):
    return hl.UninitializedSandbox(SIMPLEGUEST, hl.SandboxConfiguration(scratch_base_gpa=base))


def simpleguest_lowest_base() -> int:
    """The lowest scratch base the default configuration accepts: right after the snapshot region."""
    image = hl.GuestBinary.from_path(SIMPLEGUEST).image
    base = PAGE
    while True:
        try:
            return layout_for(image, hl.SandboxConfiguration(scratch_base_gpa=base)).scratch_gpa
        except hl.InvalidConfiguration as e:
            assert "overlaps the snapshot region" in str(e), e
            base += PAGE


LOWEST = simpleguest_lowest_base()


# -- configuration-level checks (no guest needed) ----------------------------------------------

@pytest.mark.parametrize("value, match", [
    (-1, r"^scratch_base_gpa=-1: use a non-negative integer address or None$"),
    (-PAGE, r"^scratch_base_gpa=-4096: use a non-negative integer address or None$"),
    (True, r"^scratch_base_gpa=True: use a non-negative integer address or None$"),
    (False, r"^scratch_base_gpa=False: use a non-negative integer address or None$"),
    ("0x10000000", r"^scratch_base_gpa='0x10000000': use a non-negative integer address or None$"),
    (float(1 << 32), r"^scratch_base_gpa=4294967296.0: use a non-negative integer address or None$"),
    ([PAGE], r"use a non-negative integer address or None$"),
    (0x10000001, r"^scratch_base_gpa=0x10000001 is not page aligned \(a multiple of 0x1000\)$"),
    (0x10000800, r"^scratch_base_gpa=0x10000800 is not page aligned \(a multiple of 0x1000\)$"),
    ((1 << 32) + 8, r"^scratch_base_gpa=0x100000008 is not page aligned"),
])
def test_configuration_rejects(value, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        hl.SandboxConfiguration(scratch_base_gpa=value)


@pytest.mark.parametrize("value", [None, 0, PAGE, 0x10000000, 1 << 32, 1 << 40])
def test_configuration_accepts_aligned_addresses(value):
    # the configuration alone checks type and alignment; the guest's layout checks the rest
    assert hl.SandboxConfiguration(scratch_base_gpa=value).scratch_base_gpa == value


def test_invalid_configuration_is_a_value_error():
    with pytest.raises(ValueError):
        hl.SandboxConfiguration(scratch_base_gpa=-1)


# -- amd64: the UninitializedSandbox constructor checks the layout -------------------------------

def test_lowest_amd64_base_is_the_end_of_the_snapshot_region():
    image = hl.GuestBinary.from_path(SIMPLEGUEST).image
    L = layout_for(image, hl.SandboxConfiguration(scratch_base_gpa=LOWEST))
    assert L.scratch_gpa == L.snapshot_size == LOWEST
    assert LOWEST == 0xF000 + L.image_size  # null, 4 table pages, system, PEB, trampoline, code


@pytest.mark.parametrize("base, match", [
    (0, r"^scratch_base_gpa=0x0: the scratch region \[0x0, 0x14a000\) overlaps the snapshot region \[0x0, "),
    (PAGE, r"^scratch_base_gpa=0x1000: the scratch region \[0x1000, 0x14b000\) overlaps the snapshot region"),
    (0x10000, r"overlaps the snapshot region \[0x0, 0x[0-9a-f]+\)$"),
    (LOWEST - PAGE, r"overlaps the snapshot region \[0x0, 0x[0-9a-f]+\)$"),
    (AMD64_TOP - SCRATCH_SIZE + PAGE, r"^scratch_base_gpa=0xfffeb7000: the scratch region \[0xfffeb7000, "
                                      r"0x1000001000\) ends beyond the amd64 profile's reach \(0x1000000000\)$"),
    (AMD64_TOP - PAGE, r"ends beyond the amd64 profile's reach \(0x1000000000\)$"),
    (AMD64_TOP, r"^scratch_base_gpa=0x1000000000: .* ends beyond the amd64 profile's reach"),
    (1 << 40, r"ends beyond the amd64 profile's reach"),
    (APIC_PAGE, r"^scratch_base_gpa=0xfee00000: the scratch region \[0xfee00000, 0xfef4a000\) overlaps the APIC "
                r"page at 0xfee00000$"),
    (APIC_PAGE - SCRATCH_SIZE + PAGE, r"\[0xfecb7000, 0xfee01000\) overlaps the APIC page at 0xfee00000$"),
    (0xFED00000, r"overlaps the APIC page at 0xfee00000$"),
])
def test_amd64_rejected_bases(base, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        uninitialized(base)


def test_amd64_unaligned_base_set_after_the_configuration():
    # assigning a field validates it as the constructor does
    cfg = hl.SandboxConfiguration()
    with pytest.raises(hl.InvalidConfiguration,
                       match=r"^scratch_base_gpa=0x10000800 is not page aligned \(a multiple of 0x1000\)$"):
        cfg.scratch_base_gpa = 0x10000800
    assert cfg.scratch_base_gpa is None


@pytest.mark.parametrize("base", [LOWEST, 0x10000000, APIC_PAGE - SCRATCH_SIZE, APIC_PAGE + PAGE, 1 << 32,
                                  1 << 35, AMD64_TOP - SCRATCH_SIZE])
def test_amd64_accepted_bases(base):
    u = uninitialized(base)
    L = layout_for(u.binary.image, u.config)
    assert L.scratch_gpa == base and L.scratch_size == SCRATCH_SIZE
    assert L.counter_gpa == base + SCRATCH_SIZE - 0x1000


def test_bigger_scratch_regions_are_checked_too():
    # a 64 MiB heap: a base fine for the default scratch region now reaches the APIC page
    base = APIC_PAGE - SCRATCH_SIZE
    with pytest.raises(hl.InvalidConfiguration, match="overlaps the APIC page"):
        hl.UninitializedSandbox(SIMPLEGUEST, hl.SandboxConfiguration(scratch_base_gpa=base, heap_size="64Mi"))
    with pytest.raises(hl.InvalidConfiguration, match="ends beyond the amd64 profile's reach"):
        hl.UninitializedSandbox(SIMPLEGUEST, hl.SandboxConfiguration(scratch_base_gpa=AMD64_TOP - SCRATCH_SIZE,
                                                                     heap_size="2Mi"))


# -- i686 ---------------------------------------------------------------------------------------

I686_SCRATCH_TOP = APIC_PAGE


@pytest.mark.parametrize("base, match", [
    (0, r"^scratch_base_gpa=0x0: the scratch region \[0x0, 0x14a000\) overlaps the snapshot region "
        r"\[0x0, 0x104000\)$"),
    (I686_SNAPSHOT_SIZE - PAGE, r"^scratch_base_gpa=0x103000: the scratch region \[0x103000, 0x24d000\) overlaps "
                                r"the snapshot region \[0x0, 0x104000\)$"),
    ((1 << 32) - SCRATCH_SIZE + PAGE, r"^scratch_base_gpa=0xffeb7000: the scratch region \[0xffeb7000, "
                                      r"0x100001000\) ends beyond the i686 profile's reach \(0x100000000\)$"),
    (1 << 32, r"ends beyond the i686 profile's reach \(0x100000000\)$"),
    (AMD64_TOP - SCRATCH_SIZE, r"ends beyond the i686 profile's reach"),  # amd64's default: too high for i686
    (APIC_PAGE, r"^scratch_base_gpa=0xfee00000: the scratch region \[0xfee00000, 0xfef4a000\) overlaps the APIC "
                r"page at 0xfee00000$"),
    (APIC_PAGE - SCRATCH_SIZE + PAGE, r"overlaps the APIC page at 0xfee00000$"),
    (0xFED00000, r"overlaps the APIC page at 0xfee00000$"),
    (0x200800, r"^scratch_base_gpa=0x200800 is not page aligned \(a multiple of 0x1000\)$"),
    (-PAGE, r"^scratch_base_gpa=-4096: use a non-negative integer address$"),
    (True, r"^scratch_base_gpa=True: use a non-negative integer address$"),
    ("0x200000", r"^scratch_base_gpa='0x200000': use a non-negative integer address$"),
])
def test_i686_rejected_bases(base, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        check_scratch_base(base, SCRATCH_SIZE, I686_SNAPSHOT_SIZE, "i686")
    if not isinstance(base, str) and base is not True and base >= 0 and base % PAGE == 0:
        with pytest.raises(hl.InvalidConfiguration, match=match):  # the same through a layout
            SandboxMemoryLayout(I686_IMAGE, MiB, 256 * KiB, 16 * KiB, 16 * KiB, scratch_base=base)


@pytest.mark.parametrize("base", [I686_SNAPSHOT_SIZE, 0x200000, 0x10000000, APIC_PAGE - SCRATCH_SIZE,
                                  APIC_PAGE + PAGE, (1 << 32) - SCRATCH_SIZE])
def test_i686_accepted_bases(base):
    check_scratch_base(base, SCRATCH_SIZE, I686_SNAPSHOT_SIZE, "i686")
    L = SandboxMemoryLayout(I686_IMAGE, MiB, 256 * KiB, 16 * KiB, 16 * KiB, scratch_base=base)
    assert L.scratch_gpa == base and L.snapshot_size == I686_SNAPSHOT_SIZE


def nanvixlike_path():
    try:
        return hl.guests.path("nanvixlike")
    except FileNotFoundError:
        pytest.skip("nanvixlike.elf is not built")


@pytest.mark.parametrize("base, match", [(0x100000, "overlaps the snapshot region"),
                                         (APIC_PAGE, "overlaps the APIC page"),
                                         (1 << 32, "ends beyond the i686 profile's reach")])
def test_i686_uninitialized_sandbox_checks(base, match):
    path = nanvixlike_path()
    with pytest.raises(hl.InvalidConfiguration, match=match):
        hl.UninitializedSandbox(path, hl.SandboxConfiguration(scratch_base_gpa=base))


# -- defaults -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [{}, dict(heap_size="64Mi"), dict(stack_size="1Mi", input_data_size="1Mi")])
def test_amd64_default_ends_at_2_pow_36(cfg):
    image = hl.GuestBinary.from_path(SIMPLEGUEST).image
    L = layout_for(image, hl.SandboxConfiguration(**cfg))
    assert L.scratch_gpa + L.scratch_size == AMD64_TOP
    assert L.counter_gpa == AMD64_TOP - 0x1000
    assert L.profile == "amd64"


@pytest.mark.parametrize("cfg", [{}, dict(heap_size="64Mi"), dict(stack_size="1Mi", input_data_size="1Mi")])
def test_i686_default_ends_at_the_apic_page(cfg):
    L = layout_for(I686_IMAGE, hl.SandboxConfiguration(**cfg))
    assert L.scratch_gpa + L.scratch_size == APIC_PAGE
    assert L.counter_gpa == APIC_PAGE - 0x1000
    assert L.profile == "i686"


def test_i686_default_for_nanvixlike():
    path = nanvixlike_path()
    L = layout_for(hl.GuestBinary.from_path(path).image, hl.SandboxConfiguration())
    assert L.profile == "i686"
    assert L.scratch_gpa + L.scratch_size == APIC_PAGE


# -- real amd64 sandboxes at custom bases --------------------------------------------------------

BASES = {
    "lowest": LOWEST,  # right after the snapshot region
    "256 MiB": 0x10000000,
    "below APIC": APIC_PAGE - SCRATCH_SIZE,
    "above APIC": APIC_PAGE + PAGE,
    "4 GiB": 1 << 32,
    "2**35": 1 << 35,
    "default": None,
}


@pytest.fixture(params=list(BASES), ids=list(BASES))
def placed(request):
    base = BASES[request.param]
    sb = make_sandbox(hl.SandboxConfiguration(scratch_base_gpa=base))
    yield sb
    sb.close()


def expected_base(sb):
    b = sb.config.scratch_base_gpa
    return AMD64_TOP - SCRATCH_SIZE if b is None else b


@pytest.mark.kvm
def test_calls(placed):
    L = placed.layout
    assert L.scratch_gpa == expected_base(placed)
    assert placed.call("Echo", "hello scratch") == "hello scratch"
    assert placed.call("EchoBytes", bytes(range(256)) * 40) == bytes(range(256)) * 40  # 10 KiB through the buffers
    assert placed.call("CallHostAdd", 40, 2) == 42
    assert placed.call("StackOverflow", 100) == 100  # deep, but within the stack
    p = placed.call("Malloc", 100_000)
    assert L.heap_gpa <= p < L.heap_gpa + L.heap_size
    placed.call("Free", p)


@pytest.mark.kvm
def test_peb(placed):
    L = placed.layout
    fields = struct.unpack("<17Q", placed.read_memory(L.peb_gpa, 17 * 8))
    base = expected_base(placed)
    top = base + SCRATCH_SIZE - PAGE  # the host page; below it output, input, then the stack
    assert fields == (PEB_MAGIC, ABI_VERSION, top - 32 * KiB, 16 * KiB, top - 16 * KiB, 16 * KiB, base, MiB,
                      top - 32 * KiB, 256 * KiB, L.code_gpa, L.image_size,
                      L.snapshot_size + SCRATCH_SIZE, base, SCRATCH_SIZE, base + SCRATCH_SIZE - 0x1000, 0)
    assert fields[0] == 0x0142455050424C48 and fields[1] == 2
    assert placed.read_memory(L.peb_gpa, 8) == b"HLBPPEB\x01"
    # the guest reads the same PEB
    assert placed.call("ReadAddress", L.peb_gpa + 104) == base
    assert placed.call("ReadAddress", L.peb_gpa + 120) == base + SCRATCH_SIZE - 0x1000


@pytest.mark.kvm
def test_stack_overflow_is_reported_as_such(placed):
    L = placed.layout
    with pytest.raises(hl.StackOverflow, match=r"^guest stack overflow: write of guard page address 0x") as ei:
        placed.call("StackOverflow", 1_000_000)
    assert L.guard_gpa <= ei.value.address < L.guard_gpa + PAGE
    assert placed.poisoned
    placed.restore()
    assert not placed.poisoned
    assert placed.call("Echo", "after overflow") == "after overflow"


@pytest.mark.kvm
def test_snapshot_and_restore(placed):
    L = placed.layout
    placed.call("SetStatic", 5)
    p = placed.call("Malloc", 3 * PAGE)
    snap = placed.snapshot()
    assert snap.layout.scratch_gpa == L.scratch_gpa
    heap = placed.read_memory(L.heap_gpa, L.heap_size)
    stack = placed.read_memory(L.stack_gpa, L.stack_size)
    placed.call("SetStatic", 9)
    placed.call("Free", p)
    for _ in range(10):
        placed.call("Malloc", 5000)
    placed.call("StackOverflow", 60)
    assert placed.read_memory(L.heap_gpa, L.heap_size) != heap
    placed.restore(snap)
    assert placed.call("GetStatic") == 5
    assert placed.read_memory(L.heap_gpa, L.heap_size) == heap
    placed.restore(snap)
    assert placed.read_memory(L.stack_gpa, L.stack_size) == stack
    placed.restore()  # the state after initialisation
    assert placed.call("GetStatic") == 0


@pytest.mark.kvm
def test_guest_memory_outside_both_parts_is_unmapped(placed):
    L = placed.layout
    end = L.scratch_gpa + L.scratch_size
    for addr in (L.snapshot_size, L.scratch_gpa - PAGE, end, AMD64_TOP):
        if addr < L.snapshot_size or L.scratch_gpa <= addr < end:
            continue  # the scratch region right after the snapshot region: no gap
        with pytest.raises(hl.MemoryAccessViolation, match=rf"read of {addr:#x} \(not mapped\)") as ei:
            placed.call("ReadAddress", addr)
        assert not isinstance(ei.value, hl.StackOverflow)
        placed.restore()
        with pytest.raises(ValueError, match=rf"^guest physical address {addr:#x} is not guest memory$"):
            placed.read_memory(addr, 8)
    assert placed.call("ReadAddress", L.heap_gpa) == int.from_bytes(placed.read_memory(L.heap_gpa, 8), "little")
    with pytest.raises(ValueError):
        placed.read_memory(end - 4, 8)  # runs off the end of the scratch region


@pytest.mark.kvm
def test_snapshot_file_keeps_the_base(tmp_path):
    with make_sandbox(hl.SandboxConfiguration(scratch_base_gpa=1 << 32)) as sb:
        sb.call("SetStatic", 77)
        path = tmp_path / "high.hlsnap"
        sb.snapshot().save(path)
    loaded = hl.Snapshot.load(path)
    assert loaded.layout.scratch_gpa == 1 << 32
    with hl.MultiUseSandbox.from_snapshot(loaded, host_functions=HOST) as sb2:
        assert sb2.layout.scratch_gpa == 1 << 32
        assert sb2.call("GetStatic") == 77
        assert sb2.call("CallHostAdd", 1, 2) == 3
    ok = hl.SandboxConfiguration(scratch_base_gpa=1 << 32)
    with hl.MultiUseSandbox.from_snapshot(loaded, ok, host_functions=HOST) as sb3:
        assert sb3.call("GetStatic") == 77
    with pytest.raises(hl.SnapshotMismatch, match="scratch_base_gpa"):
        hl.MultiUseSandbox.from_snapshot(loaded, hl.SandboxConfiguration(scratch_base_gpa=1 << 35),
                                         host_functions=HOST)


@pytest.mark.kvm
def test_restore_across_scratch_bases_is_refused():
    with make_sandbox(hl.SandboxConfiguration(scratch_base_gpa=1 << 32)) as a, make_sandbox() as b:
        with pytest.raises(hl.SnapshotMismatch, match="memory layout differs"):
            b.restore(a.snapshot())
        assert b.call("Echo", "still fine") == "still fine"


@pytest.mark.kvm
def test_larger_scratch_region_at_a_custom_base():
    cfg = hl.SandboxConfiguration(scratch_base_gpa=(1 << 30) - 4 * MiB, heap_size="8Mi", stack_size="1Mi")
    with make_sandbox(cfg) as sb:  # the scratch region crosses the 1 GiB boundary
        L = sb.layout
        assert L.scratch_gpa < 1 << 30 < L.scratch_gpa + L.scratch_size
        assert sb.call("StackOverflow", 500) == 500
        p = sb.call("Malloc", 6 * MiB)
        assert L.heap_gpa <= p and p + 6 * MiB <= L.heap_gpa + L.heap_size
        assert sb.call("Echo", "x" * 15000) == "x" * 15000


@pytest.mark.parametrize("guest, heap", [("simpleguest", "64Gi"), ("nanvixlike", "8Gi")])
def test_scratch_region_too_big_for_the_profile(guest, heap):
    try:
        path = hl.guests.path(guest)
    except FileNotFoundError:
        pytest.skip(f"{guest}.elf is not built")
    with pytest.raises(hl.InvalidConfiguration) as ei:
        hl.UninitializedSandbox(path, hl.SandboxConfiguration(heap_size=heap))
    assert "scratch_base_gpa=-" not in str(ei.value)
