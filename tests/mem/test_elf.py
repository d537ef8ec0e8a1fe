"""Guest ELF parsing and validation (no KVM): every bad input raises InvalidGuestBinary saying why."""
from __future__ import annotations

import os
import pathlib
import random
import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.elf import (EXCEPTION_STUBS_SYMBOL, PF_R, PF_W, PF_X, R_X86_64_RELATIVE, GuestBinary,
                               parse_elf)

GUEST_PATH = hl.guests.path("simpleguest")
GUEST = pathlib.Path(GUEST_PATH).read_bytes()

PHOFF, PHENT = 64, 56
PT_NULL, PT_LOAD, PT_INTERP, PT_NOTE = 0, 1, 3, 4


# -- helpers -------------------------------------------------------------------------------

def phnum(data: bytes) -> int:
    return struct.unpack_from("<H", data, 56)[0]


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def phdr(data: bytes, i: int) -> dict:
    t, f, off, vaddr, paddr, filesz, memsz, align = struct.unpack_from("<IIQQQQQQ", data, PHOFF + i * PHENT)
    return dict(type=t, flags=f, offset=off, vaddr=vaddr, filesz=filesz, memsz=memsz, align=align)


def load_index(data: bytes, n: int) -> int:
    """Program header index of the n-th PT_LOAD."""
    loads = [i for i in range(phnum(data)) if phdr(data, i)["type"] == PT_LOAD]
    return loads[n]


def patch_phdr(data: bytes, i: int, field: str, value: int) -> bytes:
    off, fmt = {"type": (0, "<I"), "flags": (4, "<I"), "offset": (8, "<Q"), "vaddr": (16, "<Q"),
                "filesz": (32, "<Q"), "memsz": (40, "<Q"), "align": (48, "<Q")}[field]
    return patch(data, PHOFF + i * PHENT + off, fmt, value)


def tiny_elf(rela=(), *, rela_flags=0x2, rel_section=False, entry=0x100, code_flags=PF_R | PF_X,
             with_stubs=True) -> bytes:
    """A minimal static-PIE: one PT_LOAD of the first page, a .rela.dyn section holding `rela`
    ((offset, type, addend) triples), .symtab with hl_exception_stubs, and .shstrtab."""
    shstr = b"\0.rela.dyn\0.shstrtab\0.symtab\0.strtab\0.rel.dyn\0"
    strtab = b"\0" + EXCEPTION_STUBS_SYMBOL.encode() + b"\0"
    sym = bytes(24) + struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0x200, 512)
    relas = b"".join(struct.pack("<QQq", off, rtype, addend) for off, rtype, addend in rela)
    rels = b"".join(struct.pack("<QQ", off, rtype) for off, rtype, _ in rela)
    body = bytearray(0x1000)  # the loaded page: header + phdr + zeros
    blobs = {}
    pos = len(body)
    for name, blob in (("rela", rels if rel_section else relas), ("shstr", shstr), ("sym", sym),
                       ("str", strtab)):
        blobs[name] = (pos, len(blob))
        body += blob
        body += bytes(-len(body) % 8)
        pos = len(body)
    shoff = len(body)
    sections = [bytes(64)]

    def sh(name_off, stype, flags, off, size, link=0, info=0, align=8, entsize=0):
        return struct.pack("<IIQQQQIIQQ", name_off, stype, flags, 0, off, size, link, info, align, entsize)

    if rel_section:
        sections.append(sh(shstr.index(b".rel.dyn"), 9, rela_flags, *blobs["rela"], entsize=16))
    else:
        sections.append(sh(shstr.index(b".rela.dyn"), 4, rela_flags, *blobs["rela"], entsize=24))
    sections.append(sh(shstr.index(b".shstrtab"), 3, 0, *blobs["shstr"], align=1))
    if with_stubs:
        sections.append(sh(shstr.index(b".symtab"), 2, 0, *blobs["sym"], link=4, info=1, entsize=24))
        sections.append(sh(shstr.index(b".strtab"), 3, 0, *blobs["str"], align=1))
    body += b"".join(sections)
    ehdr = (b"\x7fELF\x02\x01\x01" + bytes(9) +
            struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, entry, PHOFF, shoff, 0, 64, PHENT, 1, 64, len(sections), 2))
    ph = struct.pack("<IIQQQQQQ", PT_LOAD, code_flags, 0, 0, 0, 0x1000, 0x1000, 0x1000)
    body[0:64] = ehdr
    body[64:64 + PHENT] = ph
    return bytes(body)


def expect_invalid(data: bytes, match: str, name: str = "<bytes>"):
    with pytest.raises(hl.InvalidGuestBinary, match=match) as ei:
        GuestBinary.from_bytes(data, name)
    assert str(ei.value).startswith(f"{name}: ")
    return ei.value


# -- the bundled guest ---------------------------------------------------------------------

def raw_loads(data: bytes = GUEST) -> list[dict]:
    """PT_LOAD headers with memsz > 0, read with struct (independently of pyelftools)."""
    return [h for h in (phdr(data, i) for i in range(phnum(data))) if h["type"] == PT_LOAD and h["memsz"]]


def exec_load(data: bytes = GUEST) -> dict:
    return next(h for h in raw_loads(data) if h["flags"] & PF_X)


def test_simpleguest_parses():
    g = GuestBinary.from_path(GUEST_PATH)
    im = g.image
    entry = struct.unpack_from("<Q", GUEST, 24)[0]
    assert im.entry == entry
    assert any(s.vaddr <= im.entry < s.vaddr + s.memsz and s.flags & PF_X for s in im.segments)
    assert EXCEPTION_STUBS_SYMBOL in im.symbols
    x = exec_load()
    stubs = im.symbols[EXCEPTION_STUBS_SYMBOL]
    assert x["vaddr"] <= stubs and stubs + 32 * 16 <= x["vaddr"] + x["memsz"]  # 32 stubs in the code
    assert all(off + 8 <= im.size for off, _ in im.relocations)
    assert im.align == max(4096, max(min(h["align"], 1 << 21) for h in raw_loads()))
    assert im.size == max(h["vaddr"] + h["memsz"] for h in raw_loads())


def test_simpleguest_segments_match_file():
    im = GuestBinary.from_bytes(GUEST).image
    loads = sorted(raw_loads(), key=lambda h: h["vaddr"])
    assert len(loads) >= 2
    assert [(s.vaddr, s.memsz, s.flags) for s in im.segments] == [(h["vaddr"], h["memsz"], h["flags"])
                                                                  for h in loads]
    for s, h in zip(im.segments, loads):
        assert s.data == GUEST[h["offset"]:h["offset"] + h["filesz"]]
        assert len(s.data) == h["filesz"]
    assert {s.flags for s in im.segments} >= {PF_R | PF_X, PF_R | PF_W}


def test_simpleguest_has_only_relative_relocations():
    # simpleguest is a static PIE with no dynamic relocations at all; a synthetic image
    # below checks R_X86_64_RELATIVE handling.
    im = parse_elf(GUEST)
    assert im.relocations == []


def test_from_path_and_name():
    g = GuestBinary.from_path(GUEST_PATH)
    assert g.name == GUEST_PATH
    assert g.data == GUEST
    assert repr(g) == f"GuestBinary({GUEST_PATH!r}, {len(GUEST)} bytes)"


def test_from_bytes():
    g = GuestBinary.from_bytes(GUEST)
    assert g.name == "<bytes>"
    assert g.data == GUEST
    assert GuestBinary.from_bytes(GUEST, "mine").name == "mine"


@pytest.mark.parametrize("kind", ["str", "pathlike", "bytes", "bytearray", "memoryview"])
def test_coerce(kind):
    value = {"str": GUEST_PATH, "pathlike": pathlib.Path(GUEST_PATH), "bytes": GUEST,
             "bytearray": bytearray(GUEST), "memoryview": memoryview(GUEST)}[kind]
    g = GuestBinary.coerce(value)
    assert isinstance(g, GuestBinary)
    assert g.data == GUEST
    assert g.image.entry == struct.unpack_from("<Q", GUEST, 24)[0]


def test_coerce_custom_pathlike():
    class P(os.PathLike):
        def __fspath__(self):
            return GUEST_PATH

    assert GuestBinary.coerce(P()).name == GUEST_PATH


def test_coerce_keeps_guest_binary():
    g = GuestBinary.from_bytes(GUEST)
    assert GuestBinary.coerce(g) is g


@pytest.mark.parametrize("bad", [None, 42, 1.5, [GUEST], object()])
def test_coerce_bad_type(bad):
    with pytest.raises(TypeError, match=f"^a guest is a path, bytes or GuestBinary, not {type(bad).__name__}$"):
        GuestBinary.coerce(bad)


# -- synthetic images: relocations and loading -------------------------------------------

def test_relative_relocations_are_applied():
    data = tiny_elf([(0x800, R_X86_64_RELATIVE, 0x123), (0x808, 0, 0), (0x810, R_X86_64_RELATIVE, -8)])
    im = parse_elf(data)
    assert im.relocations == [(0x800, 0x123), (0x810, -8)]
    assert im.symbols == {EXCEPTION_STUBS_SYMBOL: 0x200}
    mem = bytearray(0x3000)
    im.load_into(memoryview(mem), 0x10000, 0x1000)
    assert mem[0x1000:0x1004] == b"\x7fELF"
    assert struct.unpack_from("<Q", mem, 0x1800)[0] == 0x10123
    assert struct.unpack_from("<Q", mem, 0x1808)[0] == 0
    assert struct.unpack_from("<Q", mem, 0x1810)[0] == 0x10000 - 8


def test_other_relocation_type_rejected():
    expect_invalid(tiny_elf([(0x800, 1, 0)]),  # R_X86_64_64
                   r"relocation type 1 at 0x800 is not supported \(only R_X86_64_RELATIVE: build a static PIE\)")


def test_relocation_outside_image():
    expect_invalid(tiny_elf([(0xFF9, R_X86_64_RELATIVE, 0)]), r"relocation at 0xff9 is outside the image")


def test_non_alloc_relocation_section_ignored():
    assert parse_elf(tiny_elf([(0x800, 1, 0)], rela_flags=0)).relocations == []


def test_rel_relocations_rejected():
    expect_invalid(tiny_elf([(0x800, R_X86_64_RELATIVE, 0)], rel_section=True),
                   r"REL relocations in \.rel\.dyn are not supported")


def test_no_symtab_gives_no_symbols():
    assert parse_elf(tiny_elf(with_stubs=False)).symbols == {}


def test_entry_not_executable():
    expect_invalid(tiny_elf(code_flags=PF_R), r"entry point 0x100 is not in an executable segment")
    expect_invalid(tiny_elf(entry=0x1000), r"entry point 0x1000 is not in an executable segment")


# -- bad binaries ----------------------------------------------------------------------------

def test_empty():
    expect_invalid(b"", r"^<bytes>: 0 bytes is too short for an ELF header$")


def test_too_short():
    expect_invalid(GUEST[:63], r"63 bytes is too short for an ELF header$")


@pytest.mark.parametrize("head", [b"MZ\x90\x00", b"\x7fELG", b"\0\0\0\0", b"ELF\x7f"])
def test_not_elf_magic(head):
    expect_invalid(head + GUEST[4:], r"not an ELF file \(bad magic ")


def test_text_file():
    expect_invalid(b"#!/bin/sh\necho hello\n" * 10, r"not an ELF file \(bad magic b'#!/b'\)")


def test_32_bit_class():
    expect_invalid(patch(GUEST, 4, "B", 1), r"not a 64-bit ELF \(EI_CLASS=1\); the amd64 profile needs x86-64$")


def test_big_endian():
    expect_invalid(patch(GUEST, 5, "B", 2), r"not a little-endian ELF$")


@pytest.mark.parametrize("machine, name", [(3, "EM_386"), (183, "EM_AARCH64"), (40, "EM_ARM")])
def test_wrong_machine(machine, name):
    expect_invalid(patch(GUEST, 18, "<H", machine), rf"machine is {name}, not x86-64$")


@pytest.mark.parametrize("etype, name", [(2, "ET_EXEC"), (1, "ET_REL"), (4, "ET_CORE")])
def test_wrong_type(etype, name):
    expect_invalid(patch(GUEST, 16, "<H", etype), rf"type {name}, expected a static PIE \(ET_DYN\)$")


def test_header_only():
    expect_invalid(GUEST[:64], r"corrupt or truncated ELF \(")


@pytest.mark.parametrize("cut", [PHOFF + 10, PHOFF + PHENT + 20, PHOFF + 3 * PHENT - 1])
def test_truncated_in_program_headers(cut):
    expect_invalid(GUEST[:cut], r"corrupt or truncated ELF|extends past the end of the file \(truncated\?\)")


def _segment_cuts():
    loads = sorted((h for h in raw_loads() if h["filesz"]), key=lambda h: h["offset"])
    cuts = []
    for h in loads:
        for cut in (h["offset"], h["offset"] + 1, h["offset"] + h["filesz"] // 2, h["offset"] + h["filesz"] - 1):
            if cut >= PHOFF + phnum(GUEST) * PHENT:
                cuts.append((cut, h["vaddr"]))
    return cuts


@pytest.mark.parametrize("cut, vaddr", _segment_cuts())
def test_truncated_in_segment_data(cut, vaddr):
    expect_invalid(GUEST[:cut], rf"segment at {vaddr:#x} extends past the end of the file \(truncated\?\)$")


@pytest.mark.parametrize("cut", [max(h["offset"] + h["filesz"] for h in raw_loads()), len(GUEST) - 1000,
                                 len(GUEST) - 1])
def test_truncated_after_segments(cut):
    expect_invalid(GUEST[:cut], r"corrupt or truncated ELF \(ELFParseError: ")


def test_no_load_segments():
    data = GUEST
    for i in range(phnum(data)):
        data = patch_phdr(data, i, "type", PT_NULL)
    expect_invalid(data, r"no loadable \(PT_LOAD\) segments$")


def test_only_empty_load_segments():
    data = GUEST
    for i in range(phnum(data)):
        if phdr(data, i)["type"] == PT_LOAD:
            data = patch_phdr(data, i, "filesz", 0)
            data = patch_phdr(data, i, "memsz", 0)
    expect_invalid(data, r"no loadable \(PT_LOAD\) segments$")


def test_interpreter():
    i = next(i for i in range(phnum(GUEST)) if phdr(GUEST, i)["type"] not in (PT_LOAD,))
    expect_invalid(patch_phdr(GUEST, i, "type", PT_INTERP), r"has an interpreter; guests must be static$")


def test_filesz_larger_than_memsz():
    i = load_index(GUEST, -1)
    h = phdr(GUEST, i)
    expect_invalid(patch_phdr(GUEST, i, "filesz", h["memsz"] + 1),
                   rf"segment at {h['vaddr']:#x} has p_filesz > p_memsz$")


def test_overlapping_segments():
    x = exec_load()
    i = next(i for i in range(phnum(GUEST)) if phdr(GUEST, i)["type"] == PT_LOAD
             and phdr(GUEST, i)["vaddr"] > x["vaddr"])
    into = x["vaddr"] + x["memsz"] - 1  # move the next segment onto the last code byte
    expect_invalid(patch_phdr(GUEST, i, "vaddr", into), rf"segments at {x['vaddr']:#x} and {into:#x} overlap$")


def test_segment_beyond_image_limit():
    i = load_index(GUEST, -1)
    expect_invalid(patch_phdr(GUEST, i, "vaddr", (1 << 30) - 0x100),
                   r"segment at 0x3fffff00 is beyond the 1 GiB image limit$")


def test_entry_outside_executable_segment():
    x = exec_load()
    end = x["vaddr"] + x["memsz"]
    for entry in (end, x["vaddr"] - 1, 0x40000000):
        expect_invalid(patch(GUEST, 24, "<Q", entry), rf"entry point {entry:#x} is not in an executable segment$")
    # the last byte of the executable segment is fine
    assert parse_elf(patch(GUEST, 24, "<Q", end - 1)).entry == end - 1


def test_named_errors_use_the_name():
    expect_invalid(patch(GUEST, 5, "B", 2), r"^guest\.elf: not a little-endian ELF$", name="guest.elf")


def test_nonexistent_path(tmp_path):
    p = tmp_path / "missing.elf"
    with pytest.raises(hl.InvalidGuestBinary, match=rf"^cannot read guest binary {p}: No such file or directory$"):
        GuestBinary.from_path(p)
    with pytest.raises(hl.InvalidGuestBinary, match="No such file or directory"):
        GuestBinary.coerce(str(p))


def test_directory_path(tmp_path):
    with pytest.raises(hl.InvalidGuestBinary, match=r"^cannot read guest binary .*: Is a directory$"):
        GuestBinary.from_path(tmp_path)


def test_bad_file_on_disk_named_by_path(tmp_path):
    p = tmp_path / "bad.elf"
    p.write_bytes(patch(GUEST, 18, "<H", 3))
    with pytest.raises(hl.InvalidGuestBinary, match=rf"^{p}: machine is EM_386, not x86-64$"):
        GuestBinary.from_path(p)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("prefix", [b"\x7fELF", b"\x7fELF\x02\x01\x01"])
def test_random_bytes_after_magic(seed, prefix):
    rng = random.Random(seed)
    data = prefix + bytes(rng.getrandbits(8) for _ in range(rng.choice([60, 200, 1000, 5000])))
    expect_invalid(data, r"^<bytes>: ")


@pytest.mark.parametrize("seed", range(40))
def test_random_header_corruption_never_raises_other_errors(seed):
    # Flip bytes in the ELF header and program headers of a valid guest: it may still load,
    # but any failure must be InvalidGuestBinary.
    rng = random.Random(1000 + seed)
    b = bytearray(GUEST)
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(7, PHOFF + 7 * PHENT)] = rng.getrandbits(8)
    try:
        GuestBinary.from_bytes(bytes(b))
    except hl.InvalidGuestBinary:
        pass


@pytest.mark.parametrize("seed", range(20))
def test_random_section_header_corruption(seed):
    rng = random.Random(2000 + seed)
    b = bytearray(GUEST)
    shoff = struct.unpack_from("<Q", GUEST, 40)[0]
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(shoff, len(b))] = rng.getrandbits(8)
    try:
        GuestBinary.from_bytes(bytes(b))
    except hl.InvalidGuestBinary:
        pass


def test_invalid_guest_binary_is_hyperlight_error():
    assert issubclass(hl.InvalidGuestBinary, hl.HyperlightError)


@pytest.mark.parametrize("p_align, expected", [(0, 4096), (1, 4096), (0x1000, 4096), (0x10000, 0x10000),
                                               (1 << 21, 1 << 21), (1 << 30, 1 << 21)])
def test_alignment_is_clamped(p_align, expected):
    data = patch_phdr(GUEST, load_index(GUEST, 0), "align", p_align)
    assert parse_elf(data).align == expected


@pytest.mark.parametrize("p_align", [5000, 0x1800])
def test_non_power_of_two_alignment_rejected(p_align):
    data = patch_phdr(GUEST, load_index(GUEST, 0), "align", p_align)
    with pytest.raises(hl.InvalidGuestBinary, match="align"):
        GuestBinary.from_bytes(data)
