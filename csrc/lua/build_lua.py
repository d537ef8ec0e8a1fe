"""Builds the bundled `lua` guest: Lua 5.4 from a pinned package, plus csrc/lua/luaguest.c.

Lua is not our code and is not in the repository: its C sources come from the
`lupa` source distribution on PyPI (MIT licence, like Lua itself; Lua's own
copyright notice is in lua.h), downloaded with pip at build time, checked
against the pinned sha256 and cached under build/. HLSANDBOX_LUA_SDIST may name
a local copy of that archive (an offline build); it is checked the same way.

Pure standard library, so setup.py can import it before anything is installed.

    python3 csrc/lua/build_lua.py [OUT_DIR]
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / "build" / "lua"

LUPA_VERSION = "2.6"
LUPA_SDIST = f"lupa-{LUPA_VERSION}.tar.gz"
LUPA_SHA256 = "9a770a6e89576be3447668d7ced312cd6fd41d3c13c2462c9dc2c2ab570e45d9"
LUA_VERSION = "5.4.8"  # what lupa 2.6 carries in third-party/lua54
LUA_DIR_IN_SDIST = f"lupa-{LUPA_VERSION}/third-party/lua54/"

# The Lua core and the libraries the sandbox offers (base, coroutine, table,
# string, math, utf8). Not: liolib, loslib (a reduced os is in luaguest.c),
# loadlib, ldblib, linit, lua.c, luac.c, ltests.c, onelua.c.
LUA_SOURCES = [
    "lapi", "lcode", "lctype", "ldebug", "ldo", "ldump", "lfunc", "lgc", "llex", "lmem", "lobject",
    "lopcodes", "lparser", "lstate", "lstring", "ltable", "ltm", "lundump", "lvm", "lzio",
    "lauxlib", "lbaselib", "lcorolib", "lmathlib", "lstrlib", "ltablib", "lutf8lib",
]
LUA_HEADERS = [
    "lapi", "lauxlib", "lcode", "lctype", "ldebug", "ldo", "lfunc", "lgc", "ljumptab", "llex", "llimits",
    "lmem", "lobject", "lopcodes", "lopnames", "lparser", "lprefix", "lstate", "lstring", "ltable", "ltm",
    "lua", "luaconf", "lualib", "lundump", "lvm", "lzio",
]
GUEST_SOURCES = [HERE / "luaguest.c"]
GUEST_CONF = HERE / "lua_guest_conf.h"


class LuaSourceError(RuntimeError):
    """The pinned Lua sources could not be obtained or did not match their hash."""


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_sdist() -> pathlib.Path:
    """The lupa sdist, verified: from HLSANDBOX_LUA_SDIST, the cache, or pip download."""
    local = os.environ.get("HLSANDBOX_LUA_SDIST")
    candidates = [pathlib.Path(local)] if local else [CACHE / LUPA_SDIST]
    for path in candidates:
        if path.is_file():
            digest = _sha256(path)
            if digest == LUPA_SHA256:
                return path
            if local:
                raise LuaSourceError(f"HLSANDBOX_LUA_SDIST={local}: sha256 {digest}, expected {LUPA_SHA256} "
                                     f"({LUPA_SDIST})")
            path.unlink()  # a corrupt cache entry: fetch again
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", tmp, f"lupa=={LUPA_VERSION}"]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  stdin=subprocess.DEVNULL, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LuaSourceError(f"cannot download the Lua sources ({LUPA_SDIST} from PyPI): {e}") from e
        got = pathlib.Path(tmp) / LUPA_SDIST
        if proc.returncode != 0 or not got.is_file():
            raise LuaSourceError(
                f"cannot download the Lua sources: `{' '.join(cmd[2:])}` failed (exit {proc.returncode}). "
                f"The lua guest needs {LUPA_SDIST} (Lua {LUA_VERSION}) from PyPI; without network access, "
                f"download it elsewhere and set HLSANDBOX_LUA_SDIST to its path.\n{proc.stdout.strip()[-2000:]}")
        digest = _sha256(got)
        if digest != LUPA_SHA256:
            raise LuaSourceError(f"{LUPA_SDIST} from the package index has sha256 {digest}, expected "
                                 f"{LUPA_SHA256}: refusing to build Lua from it")
        os.replace(got, CACHE / LUPA_SDIST)
    return CACHE / LUPA_SDIST


def lua_source_dir() -> pathlib.Path:
    """A directory holding the pinned Lua C sources (extracted once, cached)."""
    dest = CACHE / f"lua-{LUA_VERSION}-{LUPA_SHA256[:12]}"
    wanted = [f"{n}.c" for n in LUA_SOURCES] + [f"{n}.h" for n in LUA_HEADERS]
    if all((dest / n).is_file() for n in wanted):
        return dest
    sdist = _fetch_sdist()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=CACHE))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for name in wanted:  # only the files we compile, by exact name: no path from the archive is trusted
                member = tar.getmember(LUA_DIR_IN_SDIST + name)
                if not member.isfile():
                    raise LuaSourceError(f"{LUPA_SDIST}: {member.name} is not a regular file")
                src = tar.extractfile(member)
                (tmp / name).write_bytes(src.read())
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except KeyError as e:
        raise LuaSourceError(f"{LUPA_SDIST} does not contain {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _inputs() -> list[pathlib.Path]:
    return GUEST_SOURCES + [GUEST_CONF, pathlib.Path(__file__).resolve()]


def _up_to_date(out: pathlib.Path, inputs: list[pathlib.Path]) -> bool:
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(p.stat().st_mtime_ns < built for p in inputs)


SDK = ROOT / "csrc" / "sdk"


def _sdk_inputs() -> list[pathlib.Path]:
    return (sorted((SDK / "amd64").iterdir()) + sorted((SDK / "common").iterdir())
            + [ROOT / "hlsandbox" / "sdk" / "build.py"])


def build_lua_guest(out_dir: os.PathLike, sdk: Any) -> pathlib.Path:
    """Builds out_dir/lua.elf with `sdk` (the module hlsandbox.sdk.build) unless it is
    newer than its inputs; returns its path."""
    out = pathlib.Path(out_dir) / "lua.elf"
    if _up_to_date(out, _inputs() + _sdk_inputs()):
        return out
    lua = lua_source_dir()
    # The VM's hot loop runs natively at CPL3, built at -O2 like lupa's and Debian's Lua.
    # Measured in the guest against lupa (fib(27), interleaved, quickest of 5): -O2
    # 1.06-1.08x, -O3 with jump tables 1.11x, -flto 1.13x; natively the same zig
    # build runs within 3% of gcc's, so what remains is the VM's, not the compiler's.
    sdk.build([lua / f"{n}.c" for n in LUA_SOURCES] + GUEST_SOURCES, out, profile="amd64", include_dirs=[lua],
              optimize="2", extra_cflags=["-include", str(GUEST_CONF), f"-ffile-prefix-map={ROOT}/="])
    return out


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hlsandbox" / "guests" / "bin"
    from hlsandbox.sdk import build as sdk_build
    print(build_lua_guest(target, sdk_build))
