"""Guest binaries: reading a static-PIE x86-64 ELF with pyelftools into a loadable image."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ..errors import InvalidGuestBinary

PF_X, PF_W, PF_R = 1, 2, 4
R_X86_64_NONE = 0
R_X86_64_RELATIVE = 8
EXCEPTION_STUBS_SYMBOL = "hl_exception_stubs"
MAX_IMAGE_SIZE = 1 << 30


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
    def from_path(cls, path: Union[str, os.PathLike]) -> "GuestBinary":
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InvalidGuestBinary(f"cannot read guest binary {p}: {e.strerror}") from e
        return cls(data, str(p))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> "GuestBinary":
        return cls(data, name)

    @classmethod
    def coerce(cls, guest: Union["GuestBinary", str, os.PathLike, bytes]) -> "GuestBinary":
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
    """Validates and parses a guest ELF; every problem raises InvalidGuestBinary saying why."""
    if len(data) < 64:
        raise InvalidGuestBinary(f"{name}: {len(data)} bytes is too short for an ELF header")
    if data[:4] != b"\x7fELF":
        raise InvalidGuestBinary(f"{name}: not an ELF file (bad magic {data[:4]!r})")
    if data[4] != 2:
        raise InvalidGuestBinary(f"{name}: not a 64-bit ELF (EI_CLASS={data[4]}); the amd64 profile needs x86-64")
    if data[5] != 1:
        raise InvalidGuestBinary(f"{name}: not a little-endian ELF")
    try:
        return _parse(ELFFile(io.BytesIO(data)), len(data), name)
    except InvalidGuestBinary:
        raise
    except (ELFError, ValueError, KeyError, IndexError, OverflowError, AssertionError, Exception) as e:
        # pyelftools raises many kinds of errors on truncated or corrupt input.
        raise InvalidGuestBinary(f"{name}: corrupt or truncated ELF ({type(e).__name__}: {e})") from e


def _parse(elf: ELFFile, file_size: int, name: str) -> ElfImage:
    if elf["e_machine"] != "EM_X86_64":
        raise InvalidGuestBinary(f"{name}: machine is {elf['e_machine']}, not x86-64")
    if elf["e_type"] != "ET_DYN":
        raise InvalidGuestBinary(f"{name}: type {elf['e_type']}, expected a static PIE (ET_DYN)")
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
        if vaddr + memsz > MAX_IMAGE_SIZE:
            raise InvalidGuestBinary(f"{name}: segment at {vaddr:#x} is beyond the 1 GiB image limit")
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
    for a, b in zip(segments, segments[1:]):
        if a.vaddr + a.memsz > b.vaddr:
            raise InvalidGuestBinary(f"{name}: segments at {a.vaddr:#x} and {b.vaddr:#x} overlap")
    size = max(s.vaddr + s.memsz for s in segments)
    entry = elf["e_entry"]
    if not any(s.vaddr <= entry < s.vaddr + s.memsz and s.flags & PF_X for s in segments):
        raise InvalidGuestBinary(f"{name}: entry point {entry:#x} is not in an executable segment")
    relocations = _relocations(elf, size, name)
    symbols = _symbols(elf)
    return ElfImage(entry, segments, relocations, align, size, symbols)


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
    sec = elf.get_section_by_name(".symtab")
    if not isinstance(sec, SymbolTableSection):
        return {}
    wanted = {EXCEPTION_STUBS_SYMBOL}
    return {s.name: s["st_value"] for s in sec.iter_symbols() if s.name in wanted}
