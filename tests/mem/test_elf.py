"""Guest ELF parsing and validation (no KVM): every bad input raises InvalidGuestBinary saying why.

64-bit x86-64 static PIEs are amd64 guests; 32-bit EM_386 ET_EXEC files are i686 guests."""
from __future__ import annotations

import os
import pathlib
import random
import struct

import pytest

import hlsandbox as hl
from hlsandbox.mem.elf import EXCEPTION_STUBS_SYMBOL, PF_R, PF_W, PF_X, R_X86_64_RELATIVE, GuestBinary, parse_elf

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
    for s, h in zip(im.segments, loads, strict=True):
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
    # A 32-bit ELF selects the i686 profile, which needs EM_386: x86-64 code in a 32-bit
    # container is refused saying so.
    expect_invalid(patch(GUEST, 4, "B", 1), r"^<bytes>: 32-bit ELF for machine EM_X86_64, not i386$")


@pytest.mark.parametrize("cls", [0, 3, 255])
def test_unknown_class(cls):
    expect_invalid(patch(GUEST, 4, "B", cls), rf"^<bytes>: unknown ELF class {cls} \(EI_CLASS\); expected 64-bit "
                                              r"\(amd64\) or 32-bit \(i686\)$")


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


# -- i686: 32-bit ELFs -----------------------------------------------------------------------------

EM_386, EM_X86_64, EM_ARM = 3, 62, 40
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PHOFF32, PHENT32, SHENT32 = 52, 32, 40
SHT_RELA, SHT_REL = 4, 9
PAGE_SIZE = 4096
NANVIX = pathlib.Path(hl.guests.BIN) / "nanvixlike.elf"


def seg_bytes(i: int, n: int) -> bytes:
    return bytes((37 * i + j) & 0xFF for j in range(n))


def tiny_elf32(segments=((0x100000, 0x100, PF_R | PF_X),), *, entry=None, etype=ET_EXEC, machine=EM_386,
               reloc=None, reloc_flags=0x2, reloc_count=1, interp=False) -> bytes:
    """A minimal 32-bit ELF. segments: (vaddr, memsz, flags[, filesz]) each with its file data
    (seg_bytes) at its own page of the file; reloc: None, "REL" or "RELA" for a relocation
    section of reloc_count entries with sh_flags reloc_flags; interp: add a PT_INTERP."""
    segs = [tuple(sg) + ((min(sg[1], 0x40),) if len(sg) == 3 else ()) for sg in segments]
    entry = segs[0][0] if entry is None else entry
    nph = len(segs) + bool(interp)
    body = bytearray(0x1000 * (len(segs) + 1))
    phdrs = []
    for i, (vaddr, memsz, flags, filesz) in enumerate(segs):
        off = 0x1000 * (i + 1)
        body[off:off + filesz] = seg_bytes(i, filesz)
        phdrs.append(struct.pack("<IIIIIIII", PT_LOAD, off, vaddr, vaddr, filesz, memsz, flags, 0x1000))
    if interp:
        path = b"/lib/ld-linux.so.2\0"
        at = PHOFF32 + nph * PHENT32
        body[at:at + len(path)] = path
        phdrs.insert(0, struct.pack("<IIIIIIII", PT_INTERP, at, 0, 0, len(path), len(path), PF_R, 1))
    shstr = b"\0.rel.dyn\0.rela.dyn\0.shstrtab\0"
    sections = [bytes(SHENT32)]

    def sh(name, stype, flags, off, size, entsize=0, align=4):
        return struct.pack("<IIIIIIIIII", shstr.index(name), stype, flags, 0, off, size, 0, 0, align, entsize)

    if reloc is not None:
        entsize = 8 if reloc == "REL" else 12
        table = b"".join(struct.pack("<II", 0x100010 + 4 * k, 8) + (bytes(4) if reloc == "RELA" else b"")
                         for k in range(reloc_count))
        off = len(body)
        body += table
        sections.append(sh(b".rel.dyn" if reloc == "REL" else b".rela.dyn", SHT_REL if reloc == "REL" else SHT_RELA,
                           reloc_flags, off, len(table), entsize))
    off = len(body)
    body += shstr
    body += bytes(-len(body) % 4)
    sections.append(sh(b".shstrtab", 3, 0, off, len(shstr), align=1))
    shoff = len(body)
    body += b"".join(sections)
    ehdr = (b"\x7fELF\x01\x01\x01" + bytes(9) +
            struct.pack("<HHIIIIIHHHHHH", etype, machine, 1, entry, PHOFF32, shoff, 0, 52, PHENT32, nph, SHENT32,
                        len(sections), len(sections) - 1))
    body[0:52] = ehdr
    body[PHOFF32:PHOFF32 + nph * PHENT32] = b"".join(phdrs)
    return bytes(body)


NANVIX_LIKE = ((0x100000, 0xD1C, PF_R | PF_X), (0x101000, 0x34E, PF_R), (0x102000, 0x1184, PF_R | PF_W, 4))


def test_i686_parses():
    im = parse_elf(tiny_elf32(NANVIX_LIKE, entry=0x100010))
    assert im.profile == "i686"
    assert im.link_base == 0x100000
    assert im.entry == 0x10  # relative to link_base, like every address in the image
    assert [(s.vaddr, s.memsz, s.flags) for s in im.segments] == [(0, 0xD1C, PF_R | PF_X), (0x1000, 0x34E, PF_R),
                                                                  (0x2000, 0x1184, PF_R | PF_W)]
    assert [s.data for s in im.segments] == [seg_bytes(0, 0x40), seg_bytes(1, 0x40), seg_bytes(2, 4)]
    assert im.relocations == [] and im.symbols == {}
    assert im.size == 0x3184 and im.align == 0x1000


def test_i686_guest_binary_and_load():
    g = GuestBinary.from_bytes(tiny_elf32(NANVIX_LIKE, entry=0x100010), "n.elf")
    assert g.image.profile == "i686" and g.name == "n.elf"
    mem = bytearray(0x4000)
    g.image.load_into(memoryview(mem), g.image.link_base, 0)  # no relocations: only copies
    assert mem[0:0x40] == seg_bytes(0, 0x40) and mem[0x2000:0x2004] == seg_bytes(2, 4)
    assert mem[0x2004:0x4000] == bytes(0x1FFC)


def test_amd64_image_profile():
    im = parse_elf(GUEST)
    assert im.profile == "amd64" and im.link_base is None


def test_i686_link_base_is_the_page_of_the_lowest_segment():
    # program headers out of order; the lowest segment starts inside a page
    im = parse_elf(tiny_elf32(((0x302000, 0x10, PF_R | PF_W), (0x300200, 0x100, PF_R | PF_X)), entry=0x300280))
    assert im.link_base == 0x300000
    assert [(s.vaddr, s.memsz, s.flags) for s in im.segments] == [(0x200, 0x100, PF_R | PF_X),
                                                                  (0x2000, 0x10, PF_R | PF_W)]
    assert im.entry == 0x280
    assert im.size == 0x2010


@pytest.mark.parametrize("machine, name", [(EM_X86_64, "EM_X86_64"), (EM_ARM, "EM_ARM")])
def test_i686_wrong_machine(machine, name):
    expect_invalid(tiny_elf32(machine=machine), rf"^<bytes>: 32-bit ELF for machine {name}, not i386$")


@pytest.mark.parametrize("etype, name", [(ET_DYN, "ET_DYN"), (ET_REL, "ET_REL"), (4, "ET_CORE")])
def test_i686_must_be_exec(etype, name):
    expect_invalid(tiny_elf32(etype=etype),
                   rf"^<bytes>: type {name}; i686 guests are linked at fixed addresses \(ET_EXEC\)$")


@pytest.mark.parametrize("segments", [
    ((0x10000, 0x100, PF_R | PF_X),),  # the lowest address allowed
    ((0x10800, 0x100, PF_R | PF_X),),
    ((0xFEDFF000, 0x1000, PF_R | PF_X),),  # ends right at the APIC page
    ((0x10000, 0x100, PF_R | PF_X), (0x3FFF0000, 0x10000, PF_R)),  # exactly 1 GiB
])
def test_i686_segment_bounds_accepted(segments):
    im = parse_elf(tiny_elf32(segments))
    assert im.link_base == segments[0][0] // PAGE_SIZE * PAGE_SIZE


@pytest.mark.parametrize("segments, span", [
    (((0xF000, 0x100, PF_R | PF_X),), "0xf000, 0xf100"),
    (((0xFFFF, 0x10, PF_R | PF_X),), "0xf000, 0x1000f"),
    (((0, 0x100, PF_R | PF_X),), "0x0, 0x100"),
    (((0x2000, 0x100, PF_R | PF_X), (0x100000, 0x100, PF_R)), "0x2000, 0x100100"),
    (((0xFEDFF000, 0x1001, PF_R | PF_X),), "0xfedff000, 0xfee00001"),
    (((0x100000, 0x100, PF_R | PF_X), (0xFEE00000, 0x10, PF_R)), "0x100000, 0xfee00010"),
    (((0x100000, 0x100, PF_R | PF_X), (0xFF000000, 0x10, PF_R)), "0x100000, 0xff000010"),
])
def test_i686_segments_outside_the_allowed_range(segments, span):
    expect_invalid(tiny_elf32(segments), rf"^<bytes>: segments span \[{span}\); i686 guests must lie within "
                                         r"\[0x10000, 0xfee00000\)$")


def test_i686_image_beyond_1_gib():
    expect_invalid(tiny_elf32(((0x10000, 0x100, PF_R | PF_X), (0x40010000, 0x10, PF_R))),
                   r"^<bytes>: the image is beyond the 1 GiB limit$")


def test_i686_segment_beyond_4_gib():
    # vaddr + memsz wraps past 2**32
    expect_invalid(tiny_elf32(((0x100000, 0x100, PF_R | PF_X), (0xFFFFF000, 0x2000, PF_R))),
                   r"^<bytes>: segment at 0xfffff000 ends beyond 4 GiB$")


@pytest.mark.parametrize("kind", ["REL", "RELA"])
def test_i686_relocations_rejected(kind):
    expect_invalid(tiny_elf32(reloc=kind), r"^<bytes>: i686 guests must not need relocations$")
    expect_invalid(tiny_elf32(reloc=kind, reloc_count=3), r"must not need relocations$")


@pytest.mark.parametrize("kind", ["REL", "RELA"])
def test_i686_harmless_relocation_sections(kind):
    # not loaded (no SHF_ALLOC), or empty: nothing for a loader to do
    assert parse_elf(tiny_elf32(reloc=kind, reloc_flags=0)).relocations == []
    assert parse_elf(tiny_elf32(reloc=kind, reloc_count=0)).relocations == []


@pytest.mark.parametrize("entry", [0x101000, 0x102000, 0x100000 + 0xD1C, 0x10000, 0x200000])
def test_i686_entry_not_executable(entry):
    expect_invalid(tiny_elf32(NANVIX_LIKE, entry=entry), r"entry point -?0x[0-9a-f]+ is not in an executable segment$")


def test_i686_entry_last_code_byte():
    assert parse_elf(tiny_elf32(NANVIX_LIKE, entry=0x100000 + 0xD1B)).entry == 0xD1B


def test_i686_interpreter():
    expect_invalid(tiny_elf32(interp=True), r"^<bytes>: has an interpreter; guests must be static$")
    assert parse_elf(tiny_elf32()).profile == "i686"  # the same file without it is fine


def test_i686_segment_problems():
    expect_invalid(tiny_elf32(((0x100000, 0x10, PF_R | PF_X, 0x20),)),
                   r"^<bytes>: segment at 0x100000 has p_filesz > p_memsz$")
    expect_invalid(tiny_elf32(((0x100000, 0x900, PF_R | PF_X), (0x100800, 0x100, PF_R))),
                   r"^<bytes>: segments at 0x100000 and 0x100800 overlap$")
    data = tiny_elf32(((0x100000, 0x2000, PF_R | PF_X, 0x2000),))
    expect_invalid(data[:0x2800], r"segment at 0x100000 extends past the end of the file \(truncated\?\)$")
    no_loads = bytearray(tiny_elf32())
    struct.pack_into("<I", no_loads, PHOFF32, PT_NOTE)
    expect_invalid(bytes(no_loads), r"^<bytes>: no loadable \(PT_LOAD\) segments$")


def test_i686_big_endian():
    expect_invalid(patch(tiny_elf32(), 5, "B", 2), r"^<bytes>: not a little-endian ELF$")


@pytest.mark.parametrize("seed", range(30))
def test_i686_random_header_corruption(seed):
    rng = random.Random(3000 + seed)
    b = bytearray(tiny_elf32(NANVIX_LIKE, reloc="REL", reloc_flags=0))
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(7, PHOFF32 + 3 * PHENT32)] = rng.getrandbits(8)
    try:
        im = GuestBinary.from_bytes(bytes(b)).image
    except hl.InvalidGuestBinary:
        return
    if im.profile == "i686":  # what parses must respect the profile's rules
        assert 0x10000 <= im.link_base and im.link_base + im.size <= 0xFEE00000
        assert im.relocations == []


def raw_loads32(data: bytes) -> list[dict]:
    phoff, = struct.unpack_from("<I", data, 28)
    phentsize, nph = struct.unpack_from("<HH", data, 42)
    out = []
    for i in range(nph):
        t, off, vaddr, _, filesz, memsz, flags, align = struct.unpack_from("<IIIIIIII", data, phoff + i * phentsize)
        if t == PT_LOAD and memsz:
            out.append(dict(offset=off, vaddr=vaddr, filesz=filesz, memsz=memsz, flags=flags, align=align))
    return sorted(out, key=lambda h: h["vaddr"])


@pytest.mark.skipif(not NANVIX.is_file(), reason="nanvixlike.elf is not built")
def test_nanvixlike_parses():
    data = NANVIX.read_bytes()
    assert data[4] == 1 and struct.unpack_from("<HH", data, 16) == (ET_EXEC, EM_386)
    g = GuestBinary.from_path(NANVIX)
    im = g.image
    loads = raw_loads32(data)
    low = loads[0]["vaddr"] // PAGE_SIZE * PAGE_SIZE
    assert im.profile == "i686"
    assert im.link_base == low
    assert 0x10000 <= low and max(h["vaddr"] + h["memsz"] for h in loads) <= 0xFEE00000
    assert [(s.vaddr, s.memsz, s.flags) for s in im.segments] == [(h["vaddr"] - low, h["memsz"], h["flags"])
                                                                  for h in loads]
    for s, h in zip(im.segments, loads, strict=True):
        assert s.data == data[h["offset"]:h["offset"] + h["filesz"]]
    assert im.entry == struct.unpack_from("<I", data, 24)[0] - low
    assert any(s.vaddr <= im.entry < s.vaddr + s.memsz and s.flags & PF_X for s in im.segments)
    assert im.relocations == []
    assert im.size == max(h["vaddr"] + h["memsz"] for h in loads) - low
