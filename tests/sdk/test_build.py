"""hlsandbox.sdk.build and `python3 -m hlsandbox build`: options, errors, results."""
from __future__ import annotations

import importlib.util
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hlsandbox as hl
from hlsandbox import sdk

GUESTS = Path(__file__).resolve().parent / "guests"

OPTIONS_GUEST = r"""
#include <stdio.h>
#include "hlguest.h"
#include "extra.h"
static char buf[64];
static hl_value answer(const hl_value *a) {
  (void)a;
  snprintf(buf, sizeof buf, "%s %d %d", GREETING, EXTRA_VALUE, helper());
  return hl_str(buf);
}
void hyperlight_main(void) { hl_register("Answer", answer, HL_STR, 0, NULL); }
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "extra.h").write_text("#define EXTRA_VALUE 17\nint helper(void);\n")
    (tmp_path / "main.c").write_text(OPTIONS_GUEST)
    (tmp_path / "helper.c").write_text("int helper(void) { return HELPER; }\n")
    return tmp_path


@pytest.mark.kvm
def test_sources_include_dirs_defines_and_optimize(project):
    out = sdk.build([project / "main.c", project / "helper.c"], project / "out" / "g.elf",
                    include_dirs=[project / "inc"], defines=['GREETING="hi"', "HELPER=5"], optimize="s")
    with hl.UninitializedSandbox(out).evolve() as sb:
        assert sb.call("Answer") == "hi 17 5"


@pytest.mark.kvm
def test_command_line_build(project):
    out = project / "cli.elf"
    proc = subprocess.run([sys.executable, "-m", "hlsandbox", "build", str(project / "main.c"),
                           str(project / "helper.c"), "-o", str(out), "-I", str(project / "inc"),
                           "-D", 'GREETING="cli"', "-DHELPER=1", "-O", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    with hl.UninitializedSandbox(str(out)).evolve() as sb:
        assert sb.call("Answer") == "cli 17 1"


def test_compile_error_carries_the_compiler_message(tmp_path):
    src = tmp_path / "bad.c"
    src.write_text("int f(void) { return undefined_name; }\n")
    with pytest.raises(hl.GuestBuildError, match="undefined_name") as e:
        sdk.build([src], tmp_path / "bad.elf")
    assert "bad.c:1" in e.value.output
    assert not (tmp_path / "bad.elf").exists() and not (tmp_path / "bad.elf.tmp").exists()
    again = pickle.loads(pickle.dumps(e.value))
    assert again.output == e.value.output and str(again) == str(e.value)


def test_link_error_is_a_build_error(tmp_path):
    src = tmp_path / "nomain.c"
    src.write_text("int x;\n")  # no hyperlight_main
    with pytest.raises(hl.GuestBuildError, match="hyperlight_main"):
        sdk.build([src], tmp_path / "nomain.elf")


def test_command_line_reports_a_build_error(tmp_path):
    src = tmp_path / "bad.c"
    src.write_text("int main(\n")
    proc = subprocess.run([sys.executable, "-m", "hlsandbox", "build", str(src), "-o", str(tmp_path / "x.elf")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "GuestBuildError" in proc.stderr and "bad.c:1" in proc.stderr


def test_missing_source_and_bad_arguments(tmp_path):
    with pytest.raises(hl.GuestBuildError, match="no such source file"):
        sdk.build([tmp_path / "missing.c"], tmp_path / "x.elf")
    src = GUESTS / "libcguest.c"
    with pytest.raises(ValueError, match="profile"):
        sdk.build([src], tmp_path / "x.elf", profile="arm64")
    with pytest.raises(ValueError, match="optimize"):
        sdk.build([src], tmp_path / "x.elf", optimize="9")
    with pytest.raises(ValueError, match="define"):
        sdk.build([src], tmp_path / "x.elf", defines=["-rf"])


def test_missing_zig_names_the_package(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ziglang" else real(name, *a))
    with pytest.raises(hl.GuestBuildError, match=r"pip install ziglang==\d"):
        sdk.build([GUESTS / "libcguest.c"], tmp_path / "x.elf")


def test_missing_gcc_for_i686_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-hlsandbox")
    with pytest.raises(hl.GuestBuildError, match="apt-get install gcc"):
        sdk.build([GUESTS / "libcguest.c"], tmp_path / "x.elf", profile="i686")


@pytest.mark.kvm
def test_stripped_elf_is_diagnosed_as_stripped(built_guest, tmp_path):
    stripped = tmp_path / "stripped.elf"
    strip = shutil.which("strip")
    cmd = [strip, "-s"] if strip else [sys.executable, "-m", "ziglang", "objcopy", "--strip-all"]
    subprocess.run([*cmd, built_guest("libcguest"), "-o", str(stripped)], check=True)
    with pytest.raises(hl.InvalidGuestBinary, match="stripped"):
        hl.UninitializedSandbox(str(stripped)).evolve()


def test_include_dirs_hold_the_sdk_headers():
    names = {p.name for d in sdk.include_dirs() for p in Path(d).iterdir()}
    assert {"hlguest.h", "hl_abi.h"} <= names
    assert any("i686" in d for d in sdk.include_dirs("i686"))
