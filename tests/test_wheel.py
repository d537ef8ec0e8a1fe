"""The package as a user gets it: a wheel installed into a fresh venv carries the SDK,
builds a guest from a directory outside the repository and calls it (about two minutes:
building the wheel and installing ziglang into the venv dominate)."""
from __future__ import annotations

import importlib.util
import os
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
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(wheels), "-q"]
    # The build requirements already here (a developer's machine, CI after its install):
    # no isolated build environment to download and unpack again.
    if all(importlib.util.find_spec(m) for m in ("Cython", "setuptools", "wheel", "ziglang")):
        cmd.append("--no-build-isolation")
    _run(cmd, tmp_path)
    wheel, = wheels.glob("hlsandbox-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", str(wheel)], tmp_path)

    work = tmp_path / "user"  # outside the repository
    work.mkdir()
    (work / "guest.c").write_text(GUEST)
    (work / "call.py").write_text(CALL)
    _run([py, "-m", "hlsandbox", "build", "guest.c", "-o", "guest.elf"], work)
    assert _run([py, "call.py", "guest.elf"], work).strip() == "5.000"
