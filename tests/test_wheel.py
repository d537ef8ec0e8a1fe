"""The package as a user gets it: a wheel installed into a fresh venv carries the SDK,
builds a guest from a directory outside the repository and calls it.

The wheel is built by pip in its isolated build environment (3-4 minutes on 2 busy
cores, most of it installing the build requirements) and cached under
~/.cache/hlsandbox-tests (or $HLSANDBOX_TEST_CACHE), keyed by a hash of every file that
goes into it. With the wheel cached the test takes about two minutes on the busy
2-core machine: creating the venv (~30 s), pip installing ziglang into it (~45 s) and
the first guest build in it (zig re-checks its cached musl against the new files). In
a venv at a new path that build compiled musl again (3.5 minutes measured), hence the
venv's fixed path."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GUEST = textwrap.dedent("""
    #include <math.h>
    #include <stdio.h>
    #include "hlguest.h"
    static char out[64];
    static hl_value hyp(const hl_value *a) {
      snprintf(out, sizeof out, "%.3f", hypot(a[0].f64, a[1].f64));
      return hl_str(out);
    }
    void hyperlight_main(void) {
      static const hl_type p[] = {HL_F64, HL_F64};
      hl_register("Hypot", hyp, HL_STR, 2, p);
    }
""")

CALL = textwrap.dedent("""
    import sys, hlsandbox as hl
    from hlsandbox import sdk
    assert "site-packages" in hl.__file__, hl.__file__
    assert "site-packages" in str(sdk.sdk_root()), sdk.sdk_root()
    with hl.UninitializedSandbox(sys.argv[1]).evolve() as sb:
        print(sb.call("Hypot", 3.0, 4.0))
""")


CACHE = Path(os.environ.get("HLSANDBOX_TEST_CACHE", Path.home() / ".cache" / "hlsandbox-tests"))


def _source_hash() -> str:
    """What the wheel is made of: the package's sources (not generated or built files),
    the SDK and guests, and the build configuration."""
    h = hashlib.sha256()
    files = [ROOT / "setup.py", ROOT / "pyproject.toml", ROOT / "MANIFEST.in", ROOT / "README.md"]
    files += [p for p in (ROOT / "hlsandbox").rglob("*") if p.suffix in (".py", ".pyx", ".pxd", ".h")]
    files += [p for p in (ROOT / "csrc").rglob("*") if p.is_file()]
    for p in sorted(files):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _wheel(tmp_path: Path) -> Path:
    cached = CACHE / "wheels" / _source_hash()
    found = sorted(cached.glob("hlsandbox-*.whl"))
    if found:
        return found[0]
    out = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), "-q"], tmp_path, 1200)
    wheel, = out.glob("hlsandbox-*.whl")
    cached.mkdir(parents=True, exist_ok=True)
    shutil.copy(wheel, cached / (wheel.name + ".tmp"))
    os.replace(cached / (wheel.name + ".tmp"), cached / wheel.name)
    return cached / wheel.name


def _run(cmd: list, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"$ {' '.join(map(str, cmd))}\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.mark.kvm
@pytest.mark.slow
def test_wheel_in_a_fresh_venv_builds_and_calls_a_guest(tmp_path):
    wheel = _wheel(tmp_path)

    # A fresh venv, at the same path every run: zig's cache of musl and compiler-rt is
    # keyed by where its library sources are, so a new path would rebuild them (minutes).
    # One per checkout, so test runs in two checkouts do not share it.
    venv = CACHE / f"venv-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", str(wheel)], tmp_path)

    work = tmp_path / "user"  # outside the repository
    work.mkdir()
    (work / "guest.c").write_text(GUEST)
    (work / "call.py").write_text(CALL)
    _run([py, "-m", "hlsandbox", "build", "guest.c", "-o", "guest.elf"], work)
    assert _run([py, "call.py", "guest.elf"], work).strip() == "5.000"
