"""KVM availability: clear errors when /dev/kvm cannot be used, and CI's hard requirement."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hlsandbox.hypervisor import device

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=e, timeout=120, cwd=ROOT)


PROBE = """
    import hlsandbox as hl
    try:
        hl.UninitializedSandbox(hl.guests.path("simpleguest")).evolve()
    except hl.KvmUnavailable as e:
        print("KvmUnavailable:", e)
"""


def test_missing_device_names_the_cause():
    r = run_python(PROBE, HLSANDBOX_KVM_DEVICE="/nonexistent/kvm")
    assert "KvmUnavailable: cannot open /nonexistent/kvm: it does not exist" in r.stdout, r.stderr


def test_device_that_is_not_kvm(tmp_path):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    r = run_python(PROBE, HLSANDBOX_KVM_DEVICE=str(fake))
    assert "KvmUnavailable:" in r.stdout and "API version" in r.stdout, r.stdout + r.stderr


def test_require_kvm_fails_the_test_run(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_nothing():\n    pass\n")
    for name in ("conftest.py", "helpers.py"):
        (tmp_path / name).write_text((ROOT / "tests" / name).read_text())
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HLSANDBOX_KVM_DEVICE="/nonexistent/kvm")
    required = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, HLSANDBOX_REQUIRE_KVM="1"),
                              timeout=120, cwd=tmp_path)
    assert required.returncode != 0
    assert "HLSANDBOX_REQUIRE_KVM=1 but KVM is unusable" in required.stdout + required.stderr
    optional = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, HLSANDBOX_REQUIRE_KVM="0"),
                              timeout=120, cwd=tmp_path)
    assert optional.returncode == 0, optional.stdout + optional.stderr


@pytest.mark.kvm
def test_check_kvm_passes_here():
    device.check_kvm()
