"""`python3 -m hlsandbox lua`, run as a user would (hlsandbox/lua_cli.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "hlsandbox", "lua", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=120)


def test_e_code():
    r = cli("-e", "print('hi') return 1 + 1, nil, 'x'")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n2\tnil\tx\n"


def test_script_file(tmp_path):
    script = tmp_path / "s.lua"
    script.write_text("local t = {} for i = 1, 3 do t[i] = i * i end\nreturn table.concat(t, ' ')\n")
    r = cli(str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1 4 9\n"


def test_errors_exit_1():
    r = cli("-e", "error('boom')")
    assert r.returncode == 1 and "script:1: boom" in r.stderr and "stack traceback" in r.stderr
    r = cli("-e", "while true do end", "--timeout", "0.2")
    assert r.returncode == 1 and "ExecutionTimeout" in r.stderr


def test_interactive_prompt_keeps_globals_and_reads_on():
    r = cli(stdin="x = 20\nfor i = 1, 2 do\nprint(i)\nend\nx * 2 + 2\nerror('e')\nx\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("> ")[-1] == "" and "1\n2\n" in r.stdout and "42\n" in r.stdout and "20\n" in r.stdout
    assert "script:1: e" in r.stderr
