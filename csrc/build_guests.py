"""Builds the C guests into freestanding ELF files.

- csrc/guests/amd64/*.c: amd64-profile guests, static PIEs built with the SDK
  in csrc/sdk/amd64/;
- csrc/guests/i686/*.c: i686-profile guests (docs/abi.md, "i686 profile"),
  32-bit ET_EXEC files linked at 0x100000 with the runtime in csrc/sdk/i686/.

csrc/sdk/common/ holds the sources both profiles compile.

Pure standard library, so setup.py can import it before anything is installed.
Each guest is one compiler invocation: its runtime plus the guest's own
source. Outputs newer than every input are not rebuilt.

    python3 csrc/build_guests.py [OUT_DIR]
"""
from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

CSRC = pathlib.Path(__file__).resolve().parent
ROOT = CSRC.parent
SDK_DIR = CSRC / "sdk" / "amd64"
GUESTS_DIR = CSRC / "guests" / "amd64"
RUNTIME32_DIR = CSRC / "sdk" / "i686"
GUESTS32_DIR = CSRC / "guests" / "i686"
COMMON_DIR = CSRC / "sdk" / "common"  # shared by both runtimes

# docs/abi.md: a static PIE (only R_X86_64_RELATIVE relocations, no
# interpreter), 4 KiB segment alignment, no libc or start files, no endbr64,
# no stack protector (it would need TLS), stack probes so a big frame cannot
# jump over the stack guard page.
CFLAGS = [
    "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
    "-ffreestanding", "-fPIE", "-static-pie", "-nostdlib", "-nostartfiles",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-fstack-clash-protection", "-fno-plt",
    "-fno-jump-tables",  # a switch's table would be one more .rodata page for a call to touch
    "-Wl,--no-dynamic-linker", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack",
    "-Wl,--build-id=none", "-Wl,-e,_start",
    "-I", "csrc/sdk/amd64",
]

# i686 profile: everything runs emulated on kvm-pvm, which has no x87, SSE or
# 32-bit iret (../shared/docs/platform.md): -mgeneral-regs-only keeps the
# compiler to integer registers. An ET_EXEC at its link address (link.ld puts
# everything at 0x100000 and loads no headers, so every PT_LOAD is >= 0x10000).
# No libgcc exists for -m32 here: the code must not need it (no 64-bit division).
CFLAGS32 = [
    "-m32", "-march=i686", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
    "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-static", "-nostdlib", "-nostartfiles",
    "-mgeneral-regs-only", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-Wl,-T,csrc/sdk/i686/link.ld", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack",
    "-Wl,--build-id=none", "-Wl,-e,_start",
    "-I", "csrc/sdk/i686",
]

EM_X86_64 = 62
EM_386 = 3
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
MIN_LOAD_32 = 0x10000


def _sdk_sources() -> list[pathlib.Path]:
    return sorted(SDK_DIR.glob("*.S")) + sorted(SDK_DIR.glob("*.c")) + sorted(COMMON_DIR.glob("*.c"))


def _inputs(guest: pathlib.Path) -> list[pathlib.Path]:
    """Everything a guest's ELF depends on, this script (its flags) included."""
    return _sdk_sources() + sorted(SDK_DIR.glob("*.h")) + [guest, pathlib.Path(__file__).resolve()]


def _runtime32_sources() -> list[pathlib.Path]:
    return sorted(RUNTIME32_DIR.glob("*.S")) + sorted(RUNTIME32_DIR.glob("*.c")) + sorted(COMMON_DIR.glob("*.c"))


def _inputs32(guest: pathlib.Path) -> list[pathlib.Path]:
    return (_runtime32_sources() + sorted(RUNTIME32_DIR.glob("*.h")) + [RUNTIME32_DIR / "link.ld", guest,
            pathlib.Path(__file__).resolve()])


def _up_to_date(out: pathlib.Path, inputs: list[pathlib.Path]) -> bool:
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(p.stat().st_mtime_ns < built for p in inputs)


def _rel(p: pathlib.Path) -> str:
    # Relative source paths keep __FILE__ (guest log records) and the debug
    # info free of the build machine's directory layout.
    return os.path.relpath(p, ROOT)


def _check_elf(path: pathlib.Path) -> None:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise RuntimeError(f"{path}: the compiler did not produce a 64-bit little-endian ELF")
    e_type = int.from_bytes(head[16:18], "little")
    e_machine = int.from_bytes(head[18:20], "little")
    if e_machine != EM_X86_64:
        raise RuntimeError(f"{path}: built for machine {e_machine}, not x86-64; guests are amd64 only, "
                           "set CC to an x86-64 compiler")
    if e_type != ET_DYN:
        raise RuntimeError(f"{path}: not a static PIE (e_type {e_type}); does the compiler support -static-pie?")


def _check_elf32(path: pathlib.Path) -> None:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise RuntimeError(f"{path}: the compiler did not produce a 32-bit little-endian ELF "
                           "(does it support -m32?)")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_386:
        raise RuntimeError(f"{path}: built for machine {e_machine}, not i386")
    if e_type != ET_EXEC:
        raise RuntimeError(f"{path}: not ET_EXEC (e_type {e_type}); i686 guests load at their link address")
    e_phoff, = struct.unpack_from("<I", data, 28)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    for i in range(e_phnum):
        p_type, _, p_vaddr, p_paddr = struct.unpack_from("<IIII", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD and min(p_vaddr, p_paddr) < MIN_LOAD_32:
            raise RuntimeError(f"{path}: a PT_LOAD segment at {p_vaddr:#x}, below {MIN_LOAD_32:#x}")


def _compile(cc: str, guest: pathlib.Path, out: pathlib.Path, profile32: bool = False) -> None:
    tmp = out.with_name(out.name + ".tmp")
    if profile32:
        cmd = [cc, *CFLAGS32, *map(_rel, _runtime32_sources()), _rel(guest), "-o", str(tmp)]
    else:
        cmd = [cc, *CFLAGS, *map(_rel, _sdk_sources()), _rel(guest), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise RuntimeError(f"cannot run the C compiler {cc!r} to build guest {guest.stem}: {e}") from e
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building guest {guest.stem} failed (exit {proc.returncode}):\n"
                           f"$ {' '.join(cmd)}\n{proc.stdout}")
    try:
        (_check_elf32 if profile32 else _check_elf)(tmp)
    except RuntimeError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)  # atomic: a half-written ELF is never left under the real name


def build_guests(out_dir: pathlib.Path, cc: str = os.environ.get("CC", "gcc")) -> list[pathlib.Path]:
    """Compiles every csrc/guests/amd64/*.c and csrc/guests/i686/*.c into
    out_dir/<name>.elf; returns the ELF paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for guest in sorted(GUESTS_DIR.glob("*.c")):
        out = out_dir / f"{guest.stem}.elf"
        if not _up_to_date(out, _inputs(guest)):
            _compile(cc, guest, out)
        outputs.append(out)
    for guest in sorted(GUESTS32_DIR.glob("*.c")):
        out = out_dir / f"{guest.stem}.elf"
        if out in outputs:
            raise RuntimeError(f"guest name {guest.stem!r} is used in both {_rel(GUESTS_DIR)} and {_rel(GUESTS32_DIR)}")
        if not _up_to_date(out, _inputs32(guest)):
            _compile(cc, guest, out, profile32=True)
        outputs.append(out)
    return outputs


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hlsandbox" / "guests" / "bin"
    for path in build_guests(target):
        print(path)
