"""Builds the C guests (csrc/guests/*.c) into freestanding static-PIE ELF files.

Pure standard library, so setup.py can import it before anything is installed.
Each guest is one compiler invocation: the SDK (csrc/guest/) plus the guest's
own source. Outputs newer than every input are not rebuilt.

    python3 csrc/build_guests.py [OUT_DIR]
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

CSRC = pathlib.Path(__file__).resolve().parent
ROOT = CSRC.parent
SDK_DIR = CSRC / "guest"
GUESTS_DIR = CSRC / "guests"

# docs/abi.md: a static PIE (only R_X86_64_RELATIVE relocations, no
# interpreter), 4 KiB segment alignment, no libc or start files, no endbr64,
# no stack protector (it would need TLS), stack probes so a big frame cannot
# jump over the stack guard page.
CFLAGS = [
    "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
    "-ffreestanding", "-fPIE", "-static-pie", "-nostdlib", "-nostartfiles",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-fstack-clash-protection", "-fno-plt",
    "-Wl,--no-dynamic-linker", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack",
    "-Wl,--build-id=none", "-Wl,-e,_start",
    "-I", "csrc/guest",
]

EM_X86_64 = 62
ET_DYN = 3


def _sdk_sources() -> list[pathlib.Path]:
    return sorted(SDK_DIR.glob("*.S")) + sorted(SDK_DIR.glob("*.c"))


def _inputs(guest: pathlib.Path) -> list[pathlib.Path]:
    """Everything a guest's ELF depends on, this script (its flags) included."""
    return _sdk_sources() + sorted(SDK_DIR.glob("*.h")) + [guest, pathlib.Path(__file__).resolve()]


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


def _compile(cc: str, guest: pathlib.Path, out: pathlib.Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
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
        _check_elf(tmp)
    except RuntimeError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)  # atomic: a half-written ELF is never left under the real name


def build_guests(out_dir: pathlib.Path, cc: str = os.environ.get("CC", "gcc")) -> list[pathlib.Path]:
    """Compiles every csrc/guests/*.c into out_dir/<name>.elf; returns the ELF paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for guest in sorted(GUESTS_DIR.glob("*.c")):
        out = out_dir / f"{guest.stem}.elf"
        if not _up_to_date(out, _inputs(guest)):
            _compile(cc, guest, out)
        outputs.append(out)
    return outputs


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hlsandbox" / "guests" / "bin"
    for path in build_guests(target):
        print(path)
