"""Guest binaries: reading a static-PIE x86-64 ELF with pyelftools into a loadable image."""
from __future__ import annotations

import functools
import io
import itertools
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ..errors import GuestBinaryNotFound, InvalidGuestBinary

PF_X, PF_W, PF_R = 1, 2, 4
R_X86_64_NONE = 0
R_X86_64_RELATIVE = 8
EXCEPTION_STUBS_SYMBOL = "hl_exception_stubs"
THREAD_BLOCK_SYMBOL = "hl_tcb"  # the C library's thread block: FS points at it
MAX_IMAGE_SIZE = 1 << 30
I686_MIN_ADDRESS = 0x10000  # below: the i686 profile's null page, system page and PEB
I686_MAX_ADDRESS = 0xFEE00000  # the APIC page


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD segment, with addresses relative to the load base."""

    vaddr: int
    memsz: int
    data: bytes
    flags: int


@dataclass
class ElfImage:
    """What loading needs: segments, relocations and entry, all relative to the load base."""

    entry: int
    segments: list[Segment]
    relocations: list[tuple[int, int]]  # (offset, addend) of R_X86_64_RELATIVE
    align: int
    size: int
    symbols: dict[str, int] = field(default_factory=dict)
    profile: str = "amd64"
    link_base: int | None = None  # i686: the fixed address segment offsets are relative to
    stripped: bool = False  # no .symtab: the host cannot find the SDK's symbols

    def load_into(self, mem: memoryview, base: int, mem_offset: int) -> None:
        """Copies the segments to mem[mem_offset:], then applies relocations for `base`."""
        for seg in self.segments:
            start = mem_offset + seg.vaddr
            mem[start:start + len(seg.data)] = seg.data
        for off, addend in self.relocations:
            at = mem_offset + off
            mem[at:at + 8] = ((base + addend) & (2**64 - 1)).to_bytes(8, "little")


class GuestBinary:
    """A guest ELF, from a file or from bytes; parsed and validated on creation."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = bytes(data)
        self.name = name
        self.image = parse_elf(self.data, name)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> GuestBinary:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError as e:
            err = GuestBinaryNotFound(f"cannot read guest binary {p}: {e.strerror}")
            err.errno, err.strerror, err.filename = e.errno, e.strerror, str(p)
            raise err from e
        except OSError as e:
            raise InvalidGuestBinary(f"cannot read guest binary {p}: {e.strerror}") from e
        return cls(data, str(p))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> GuestBinary:
        return cls(data, name)

    @classmethod
    def coerce(cls, guest: GuestBinary | str | os.PathLike[str] | bytes) -> GuestBinary:
        """Accepts a GuestBinary, a path, or the ELF's bytes."""
        if isinstance(guest, GuestBinary):
            return guest
        if isinstance(guest, (bytes, bytearray, memoryview)):
            return cls.from_bytes(bytes(guest))
        if isinstance(guest, (str, os.PathLike)):
            return cls.from_path(guest)
        raise TypeError(f"a guest is a path, bytes or GuestBinary, not {type(guest).__name__}")

    def __repr__(self) -> str:
        return f"GuestBinary({self.name!r}, {len(self.data)} bytes)"


def parse_elf(data: bytes, name: str = "<bytes>") -> ElfImage:
    """Validates and parses a guest ELF; every problem raises InvalidGuestBinary saying why.
    Parses of the same bytes are cached: sandboxes of one guest share the result."""
    image = _parse_cached(data)
    if isinstance(image, str):  # a cached failure: the message without the name
        raise InvalidGuestBinary(f"{name}: {image}")
    return image


@functools.lru_cache(maxsize=32)
def _parse_cached(data: bytes) -> ElfImage | str:
    try:
        return _parse_uncached(data, "\0")
    except InvalidGuestBinary as e:
        return str(e).removeprefix("\0: ")


def _parse_uncached(data: bytes, name: str) -> ElfImage:
    if len(data) < 64:
        raise InvalidGuestBinary(f"{name}: {len(data)} bytes is too short for an ELF header")
    if data[:4] != b"\x7fELF":
        raise InvalidGuestBinary(f"{name}: not an ELF file (bad magic {data[:4]!r})")
    if data[4] not in (1, 2):
        raise InvalidGuestBinary(f"{name}: unknown ELF class {data[4]} (EI_CLASS); expected 64-bit (amd64) "
                                 "or 32-bit (i686)")
    if data[5] != 1:
        raise InvalidGuestBinary(f"{name}: not a little-endian ELF")
    if len(data) < (64 if data[4] == 2 else 52):
        raise InvalidGuestBinary(f"{name}: {len(data)} bytes is too short for an ELF header")
    try:
        return _parse(ELFFile(io.BytesIO(data)), len(data), name)
    except InvalidGuestBinary:
        raise
    except (ELFError, ValueError, KeyError, IndexError, OverflowError, AssertionError, Exception) as e:
        # pyelftools raises many kinds of errors on truncated or corrupt input.
        raise InvalidGuestBinary(f"{name}: corrupt or truncated ELF ({type(e).__name__}: {e})") from e


def _parse(elf: ELFFile, file_size: int, name: str) -> ElfImage:
    if elf.elfclass == 32:
        return _parse_i686(elf, file_size, name)
    if elf["e_machine"] != "EM_X86_64":
        raise InvalidGuestBinary(f"{name}: machine is {elf['e_machine']}, not x86-64")
    if elf["e_type"] != "ET_DYN":
        raise InvalidGuestBinary(f"{name}: type {elf['e_type']}, expected a static PIE (ET_DYN)")
    segments, align = _segments(elf, file_size, name)
    size = max(s.vaddr + s.memsz for s in segments)
    if size > MAX_IMAGE_SIZE:
        raise InvalidGuestBinary(f"{name}: the image is beyond the 1 GiB limit")
    entry = _checked_entry(elf["e_entry"], segments, name)
    relocations = _relocations(elf, size, name)
    symbols = _symbols(elf)
    stripped = not isinstance(elf.get_section_by_name(".symtab"), SymbolTableSection)
    return ElfImage(entry, segments, relocations, align, size, symbols, stripped=stripped)


def _parse_i686(elf: ELFFile, file_size: int, name: str) -> ElfImage:
    """A 32-bit guest for the i686 (non-paging) profile: loaded at its link addresses."""
    if elf["e_machine"] != "EM_386":
        raise InvalidGuestBinary(f"{name}: 32-bit ELF for machine {elf['e_machine']}, not i386")
    if elf["e_type"] != "ET_EXEC":
        raise InvalidGuestBinary(f"{name}: type {elf['e_type']}; i686 guests are linked at fixed addresses "
                                 "(ET_EXEC)")
    segments, align = _segments(elf, file_size, name)
    low = segments[0].vaddr // 4096 * 4096
    high = max(s.vaddr + s.memsz for s in segments)
    if low < I686_MIN_ADDRESS or high > I686_MAX_ADDRESS:
        raise InvalidGuestBinary(f"{name}: segments span [{low:#x}, {high:#x}); i686 guests must lie within "
                                 f"[{I686_MIN_ADDRESS:#x}, {I686_MAX_ADDRESS:#x})")
    if high - low > MAX_IMAGE_SIZE:
        raise InvalidGuestBinary(f"{name}: the image is beyond the 1 GiB limit")
    rel = [Segment(s.vaddr - low, s.memsz, s.data, s.flags) for s in segments]
    if not any(s.vaddr <= elf["e_entry"] < s.vaddr + s.memsz and s.flags & PF_X for s in segments):
        raise InvalidGuestBinary(f"{name}: entry point {elf['e_entry']:#x} is not in an executable segment")
    entry = elf["e_entry"] - low
    if any(sec["sh_type"] in ("SHT_REL", "SHT_RELA") and sec["sh_flags"] & 0x2 and sec.data_size
           for sec in elf.iter_sections()):
        raise InvalidGuestBinary(f"{name}: i686 guests must not need relocations")
    return ElfImage(entry, rel, [], align, high - low, {}, profile="i686", link_base=low)


def _checked_entry(entry: int, segments: list[Segment], name: str) -> int:
    if not any(s.vaddr <= entry < s.vaddr + s.memsz and s.flags & PF_X for s in segments):
        raise InvalidGuestBinary(f"{name}: entry point {entry:#x} is not in an executable segment")
    return entry


def _segments(elf: ELFFile, file_size: int, name: str) -> tuple[list[Segment], int]:
    segments: list[Segment] = []
    align = 4096
    for ph in elf.iter_segments():
        if ph["p_type"] == "PT_INTERP":
            raise InvalidGuestBinary(f"{name}: has an interpreter; guests must be static")
        if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
            continue
        off, filesz, memsz, vaddr = ph["p_offset"], ph["p_filesz"], ph["p_memsz"], ph["p_vaddr"]
        if filesz > memsz:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} has p_filesz > p_memsz")
        if off + filesz > file_size:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} extends past the end of the file (truncated?)")
        if elf.elfclass == 64 and vaddr + memsz > MAX_IMAGE_SIZE:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} is beyond the 1 GiB image limit")
        if elf.elfclass == 32 and vaddr + memsz > 1 << 32:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} ends beyond 4 GiB")
        data = ph.data() if filesz else b""
        if len(data) != filesz:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} is truncated")
        p_align = int(ph["p_align"] or 1)
        if p_align & (p_align - 1):
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} has p_align {p_align:#x}, not a power of two")
        align = max(align, min(p_align, 1 << 21))
        segments.append(Segment(vaddr, memsz, data, ph["p_flags"]))
    if not segments:
        raise InvalidGuestBinary(f"{name}: no loadable (PT_LOAD) segments")
    segments.sort(key=lambda s: s.vaddr)
    for a, b in itertools.pairwise(segments):
        if a.vaddr + a.memsz > b.vaddr:
            raise InvalidGuestBinary(f"{name}: segments at {a.vaddr:#x} and {b.vaddr:#x} overlap")
    return segments, align


def _relocations(elf: ELFFile, size: int, name: str) -> list[tuple[int, int]]:
    out = []
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or not sec.is_RELA():
            if isinstance(sec, RelocationSection) and sec.num_relocations():
                raise InvalidGuestBinary(f"{name}: REL relocations in {sec.name} are not supported")
            continue
        if not sec["sh_flags"] & 0x2:  # SHF_ALLOC: only relocations the loader applies
            continue
        for rel in sec.iter_relocations():
            rtype = rel["r_info_type"]
            if rtype == R_X86_64_NONE:
                continue
            if rtype != R_X86_64_RELATIVE:
                raise InvalidGuestBinary(f"{name}: relocation type {rtype} at {rel['r_offset']:#x} is not "
                                         "supported (only R_X86_64_RELATIVE: build a static PIE)")
            off = rel["r_offset"]
            if off + 8 > size:
                raise InvalidGuestBinary(f"{name}: relocation at {off:#x} is outside the image")
            out.append((off, rel["r_addend"]))
    return out


def _symbols(elf: ELFFile) -> dict[str, int]:
    """The symbols the host needs, read straight from .symtab (pyelftools' per-symbol
    parsing costs milliseconds for a small guest)."""
    sec = elf.get_section_by_name(".symtab")
    if not isinstance(sec, SymbolTableSection) or sec["sh_entsize"] != 24:
        return {}
    strtab = elf.get_section(sec["sh_link"]).data()
    wanted = {EXCEPTION_STUBS_SYMBOL.encode(), THREAD_BLOCK_SYMBOL.encode()}
    out = {}
    for name_off, _info, _other, _shndx, value, _size in struct.iter_unpack("<IBBHQQ", sec.data()):
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off:end if end >= 0 else len(strtab)]
        if name in wanted:
            out[name.decode()] = value
    return out
