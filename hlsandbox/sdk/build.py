"""Compiling and linking a guest: one compiler invocation per guest, SDK runtime and
guest sources together.

amd64 guests are static PIEs built by `zig cc -target x86_64-linux-musl` from the
`ziglang` package (clang, musl and compiler-rt; docs/guests.md says why). i686
guests are 32-bit ET_EXEC files built by the system's gcc with -m32, with the
SDK's small runtime and no libc.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence

from ..errors import GuestBuildError

PROFILES = ("amd64", "i686")
API_NAMES = ("hlsandbox", "hyperlight")  # hyperlight: amd64 only (hyperlight_guest.h)
ZIG_VERSION = "0.17.0"  # pinned with the ziglang dependency in pyproject.toml

PathLike = str | os.PathLike[str]

_HERE = pathlib.Path(__file__).resolve().parent


def sdk_root() -> pathlib.Path:
    """The directory holding the SDK's C sources (sdk/amd64, sdk/i686, sdk/common):
    inside the package when installed, csrc/sdk in a source checkout."""
    for candidate in (_HERE / "src", _HERE.parent.parent / "csrc" / "sdk"):
        if (candidate / "amd64" / "hlguest.h").is_file():
            return candidate
    raise GuestBuildError(f"the guest SDK sources are missing (looked in {_HERE / 'src'} and "
                          f"{_HERE.parent.parent / 'csrc' / 'sdk'}); reinstall hlsandbox")


def _check_profile_api(profile: str, api: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    if api not in API_NAMES:
        raise ValueError(f"api must be one of {', '.join(API_NAMES)}, not {api!r}")
    if api == "hyperlight" and profile != "amd64":
        raise ValueError("Hyperlight's C API (api='hyperlight') is for amd64 guests")


def include_dirs(profile: str = "amd64", api: str = "hlsandbox") -> list[str]:
    """The SDK's include directories for a profile and API (what build() passes as -I)."""
    _check_profile_api(profile, api)
    return _sdk_include_dirs(profile, api)


def _sdk_include_dirs(profile: str, api: str) -> list[str]:
    dirs = [str(sdk_root() / profile), str(sdk_root() / "common")]
    if api == "hyperlight":
        dirs.insert(0, str(sdk_root() / "hyperlight"))
    return dirs


def _runtime_sources(profile: str, api: str) -> list[pathlib.Path]:
    d = sdk_root() / profile
    srcs = sorted(d.glob("*.S")) + sorted(d.glob("*.c"))
    if api == "hyperlight":
        srcs += sorted((sdk_root() / "hyperlight").glob("*.c"))
    srcs += sorted((sdk_root() / "common").glob("*.c"))  # records.c: the wire format, both profiles
    return srcs


# docs/abi.md: a static PIE (only R_X86_64_RELATIVE relocations, no interpreter),
# 4 KiB segment alignment, no endbr64, stack probes so a big frame cannot jump over
# the stack guard page. zig cc ignores -nostartfiles and -static-pie: musl's start
# file is linked, but nothing reaches it from the SDK's entry hl_start, so
# --gc-sections drops it (and its reference to main). hl_exception_stubs is
# reached only by the host (through the IDT): kept by -u.
_AMD64_FLAGS = [
    "-target", "x86_64-linux-musl", "-g", "-std=gnu11", "-Wall", "-Wextra",
    "-fPIE", "-static", "-fno-sanitize=all", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-fstack-clash-protection", "-fno-plt",
    "-fno-jump-tables",  # a switch's table would be one more .rodata page for a call to touch
    "-ffunction-sections", "-fdata-sections",
    "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack", "-Wl,--build-id=none", "-Wl,-e,hl_start",
    "-Wl,--gc-sections", "-Wl,-u,hl_exception_stubs",
]

# i686 profile: everything runs emulated on kvm-pvm, which has no x87, SSE or 32-bit
# iret: -mgeneral-regs-only keeps the compiler to integer registers. An ET_EXEC at
# its link address (link.ld puts everything at 0x100000). No libgcc for -m32 here:
# the code must not need it (no 64-bit division).
_I686_FLAGS = [
    "-m32", "-march=i686", "-g", "-Wall", "-Wextra", "-std=gnu11",
    "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-static", "-nostdlib", "-nostartfiles",
    "-mgeneral-regs-only", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack", "-Wl,--build-id=none", "-Wl,-e,_start",
]


def _zig_cc() -> list[str]:
    if importlib.util.find_spec("ziglang") is None:
        raise GuestBuildError("amd64 guests are built with zig cc from the ziglang package, which is not "
                              f"installed: pip install ziglang=={ZIG_VERSION}")
    return [sys.executable, "-m", "ziglang", "cc"]


def _gcc_m32() -> list[str]:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise GuestBuildError(f"i686 guests are built with gcc -m32, and {cc!r} is not on PATH: "
                              "install gcc (Debian: apt-get install gcc)")
    return [cc]


def build(sources: PathLike | Sequence[PathLike], output: PathLike, *, profile: str = "amd64",
          api: str = "hlsandbox", include_dirs: Iterable[PathLike] = (), defines: Iterable[str] = (),
          optimize: str = "2", extra_cflags: Iterable[str] = ()) -> str:
    """Compiles C (and .S) `sources` with the SDK into the guest ELF `output`; returns its path.

    `include_dirs` become -I, `defines` -D (NAME or NAME=VALUE), `optimize` -O (0, 1, 2,
    3, s, z), `extra_cflags` go last, so they override the SDK's defaults (for example
    -fstack-protector-strong or -Werror). amd64 guests link the C library (musl); see
    docs/guests.md. Raises GuestBuildError with the compiler's messages when the build
    fails, or naming what to install when the toolchain is missing.
    """
    _check_profile_api(profile, api)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    srcs = [pathlib.Path(s) for s in sources]
    if not srcs:
        raise ValueError("build() needs at least one source file")
    for s in srcs:
        if not s.is_file():
            raise GuestBuildError(f"no such source file: {s}")
    if str(optimize) not in ("0", "1", "2", "3", "s", "z", "g", "fast"):
        raise ValueError(f"optimize must be one of 0, 1, 2, 3, s, z, g, fast, not {optimize!r}")
    out = pathlib.Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = sdk_root()
    flags = [f"-O{optimize}", f"-ffile-prefix-map={root}=hlsandbox-sdk"]
    if profile == "amd64":
        cmd = _zig_cc() + _AMD64_FLAGS + flags
    else:
        cmd = _gcc_m32() + _I686_FLAGS + flags + [f"-Wl,-T,{root / 'i686' / 'link.ld'}"]
    for d in include_dirs:
        cmd.append(f"-I{os.fspath(d)}")
    cmd += [f"-I{d}" for d in _sdk_include_dirs(profile, api)]
    for d in defines:
        if not d or d.startswith("-"):
            raise ValueError(f"bad define {d!r}: NAME or NAME=VALUE")
        cmd.append(f"-D{d}")
    cmd += list(extra_cflags)
    tmp = out.with_name(out.name + ".tmp")
    cmd += [*map(str, _runtime_sources(profile, api)), *map(str, srcs), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL)
    except OSError as e:
        raise GuestBuildError(f"cannot run the compiler {cmd[0]!r}: {e}") from e
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        names = ", ".join(s.name for s in srcs)
        raise GuestBuildError(f"building {out.name} from {names} failed (exit {proc.returncode}):\n"
                              f"{proc.stdout.strip()}", proc.stdout)
    try:
        (_check_amd64 if profile == "amd64" else _check_i686)(tmp)
    except GuestBuildError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)  # atomic: a half-written ELF is never left under the real name
    return str(out)


EM_X86_64 = 62
EM_386 = 3
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
PT_INTERP = 3
MIN_LOAD_32 = 0x10000


def _check_amd64(path: pathlib.Path) -> None:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestBuildError(f"{path}: the compiler did not produce a 64-bit little-endian ELF")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_X86_64:
        raise GuestBuildError(f"{path}: built for machine {e_machine}, not x86-64")
    if e_type != ET_DYN:
        raise GuestBuildError(f"{path}: not a static PIE (e_type {e_type})")
    e_phoff, = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    for i in range(e_phnum):
        p_type, = struct.unpack_from("<I", data, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            raise GuestBuildError(f"{path}: has an interpreter (a dynamic link); guests must be static")


def _check_i686(path: pathlib.Path) -> None:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise GuestBuildError(f"{path}: the compiler did not produce a 32-bit little-endian ELF "
                              "(does it support -m32?)")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_386:
        raise GuestBuildError(f"{path}: built for machine {e_machine}, not i386")
    if e_type != ET_EXEC:
        raise GuestBuildError(f"{path}: not ET_EXEC (e_type {e_type}); i686 guests load at their link address")
    e_phoff, = struct.unpack_from("<I", data, 28)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    for i in range(e_phnum):
        p_type, _, p_vaddr, p_paddr = struct.unpack_from("<IIII", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD and min(p_vaddr, p_paddr) < MIN_LOAD_32:
            raise GuestBuildError(f"{path}: a PT_LOAD segment at {p_vaddr:#x}, below {MIN_LOAD_32:#x}")
