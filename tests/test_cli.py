"""The command line, run as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "hlsandbox", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_demo():
    r = cli("demo", "--repeat", "5")
    assert r.returncode == 0, r.stderr
    assert "Echo('hello from Python')" in r.stdout and "'hello from Python'" in r.stdout
    assert "CallHostAdd(20, 22)" in r.stdout and " 42 " in r.stdout
    assert "µs" in r.stdout
    assert "the guest prints through the host" in r.stdout


@pytest.mark.parametrize("args,out", [
    (("Add", "40", "2"), "42"),
    (("Echo", "hi there"), "'hi there'"),
    (("EchoBool", "true"), "True"),
    (("EchoF64", "2.5"), "2.5"),
    (("EchoU64", "0xff"), "255"),
    (("EchoBytes", "abc"), "b'abc'"),
    (("CallHostAdd", "1", "2"), "3"),
])
def test_call(args, out):
    r = cli("call", "simpleguest", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == out


def test_call_errors():
    r = cli("call", "simpleguest", "Nope")
    assert r.returncode == 2 and "no guest function 'Nope'" in r.stderr
    r = cli("call", "simpleguest", "Add", "1")
    assert r.returncode == 2 and "takes 2 arguments, got 1" in r.stderr
    r = cli("call", "simpleguest", "Add", "x", "1")
    assert r.returncode == 2 and "bad argument" in r.stderr
    r = cli("call", "simpleguest", "DivideByZero", "0")
    assert r.returncode == 1 and "GuestFault" in r.stderr and "#DE" in r.stderr
    r = cli("call", "noguest", "Add")
    assert r.returncode == 1 and "no bundled guest 'noguest'" in r.stderr
