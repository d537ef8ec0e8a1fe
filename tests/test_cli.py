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


def test_version():
    import hlsandbox
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hlsandbox {hlsandbox.__version__}"


def test_call_timeout_is_reported_as_a_timeout():
    r = cli("call", "simpleguest", "Spin", "--timeout", "0.3")
    assert r.returncode == 124, r.stderr
    assert "timeout: Spin ran longer than 0.3 s" in r.stderr
    r = cli("call", "simpleguest", "Add", "1", "2", "--timeout", "5")
    assert r.returncode == 0 and r.stdout.strip() == "3"
    r = cli("call", "simpleguest", "Add", "1", "2", "--timeout", "-1")
    assert r.returncode == 2 and "must be positive" in r.stderr


def test_call_heap_and_stack_size():
    r = cli("call", "--heap-size", "8Mi", "--stack-size", "512Ki", "simpleguest", "Add", "1", "2")
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr
    r = cli("call", "--heap-size", "8MB", "simpleguest", "Add", "1", "2")
    assert r.returncode == 1 and "InvalidConfiguration" in r.stderr and "write Mi" in r.stderr


def test_functions_lists_every_signature():
    r = cli("functions", "simpleguest")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Add(i32, i32) -> i32" in lines and "Echo(str) -> str" in lines
    with _sandbox() as sb:
        assert sorted(lines) == sorted(str(s) for s in sb.functions.values())


def _sandbox():
    from hlsandbox.cli import _sandbox as make
    return make("simpleguest")
