"""The package is typed for its users: mypy --strict on a user's script sees its mistakes,
and the .pyi stubs of the Cython modules match the built modules (mypy's stubtest)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hlsandbox"

# Names stubtest sees at run time that are no part of a module's interface.
STUBTEST_ALLOWLIST = """\
.*\\.__reduce_cython__
.*\\.__setstate_cython__
.*\\.__pyx_unpickle_.*
.*\\.__test__
.*\\.__pyx_capi__
# Python < 3.12 has no __buffer__ attribute; the stubs declare the buffer protocol so that
# memoryview(shm) type-checks.
.*\\.__buffer__
.*\\.__release_buffer__
"""

PRELUDE = """\
from __future__ import annotations
import hlsandbox as hl
from hlsandbox import MultiUseSandbox, SandboxConfiguration, UninitializedSandbox

"""

CLEAN = PRELUDE + """\
def add(a: int, b: int) -> int:
    return a + b

def run(path: str) -> str:
    u = UninitializedSandbox(path, SandboxConfiguration(heap_size="8Mi", stack_size=65536))
    sig: hl.Signature = u.register("HostAdd", add, params=(hl.i32, hl.i32), returns=hl.i32)
    sb: MultiUseSandbox = u.evolve()
    snap = sb.snapshot()
    sb.restore(snap)
    again: MultiUseSandbox = MultiUseSandbox.from_snapshot(snap, host_functions={"HostAdd": add})
    again.close()
    result = sb.call("Echo", "hi")
    sb.close()
    return str(result) + repr(sig)
"""

# (name, script body with the mistake on the line marked `# <-`, the error code mypy gives)
MISTAKES = [
    ("guest_type", "u = UninitializedSandbox(42)  # <-\n", "arg-type"),
    ("config_type", "u = UninitializedSandbox('g', config='8Mi')  # <-\n", "arg-type"),
    ("size_type", "c = SandboxConfiguration(heap_size=1.5)  # <-\n", "arg-type"),
    ("time_limit_type", "c = SandboxConfiguration(max_execution_time='1s')  # <-\n", "arg-type"),
    ("register_name", "u = UninitializedSandbox('g')\nu.register(7, lambda: None)  # <-\n", "arg-type"),
    ("register_fn", "u = UninitializedSandbox('g')\nu.register('F', 'not a function')  # <-\n", "arg-type"),
    ("from_snapshot_type", "sb = MultiUseSandbox.from_snapshot(1234)  # <-\n", "arg-type"),
    # evolve() must be known to return MultiUseSandbox, or neither of these is seen.
    ("evolve_result_attr", "sb = UninitializedSandbox('g').evolve()\nsb.no_such_method()  # <-\n", "attr-defined"),
    ("evolve_result_type", "n: int = UninitializedSandbox('g').evolve()  # <-\n", "assignment"),
]


def _mypy(script: Path) -> subprocess.CompletedProcess[str]:
    """mypy --strict on a user's script; errors inside hlsandbox are not the user's
    (follow-imports=silent, as for an installed package), and the project's own mypy
    settings in pyproject.toml are not the user's either (an empty config file)."""
    config = script.parent / "mypy.ini"
    config.write_text("[mypy]\n")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--config-file", str(config), "--python-version", "3.10", str(script)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def _errors(result: subprocess.CompletedProcess[str], script: Path) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"{script}:") and ": error:" in line]


def test_clean_user_script_passes(tmp_path: Path) -> None:
    script = tmp_path / "clean.py"
    script.write_text(CLEAN)
    result = _mypy(script)
    assert result.returncode == 0 and not _errors(result, script), result.stdout + result.stderr


@pytest.mark.parametrize("name,body,code", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_user_mistake_is_reported(tmp_path: Path, name: str, body: str, code: str) -> None:
    text = PRELUDE + "def script() -> None:\n" + textwrap.indent(body, "    ")
    lines = text.splitlines()
    marked = [i + 1 for i, line in enumerate(lines) if line.endswith("# <-")]
    assert len(marked) == 1
    script = tmp_path / f"{name}.py"
    script.write_text(text)
    result = _mypy(script)
    errors = _errors(result, script)
    assert [e for e in errors if e.startswith(f"{script}:{marked[0]}:") and e.endswith(f"[{code}]")], \
        result.stdout + result.stderr
    # The planted mistake is the script's only one.
    assert all(e.startswith(f"{script}:{marked[0]}:") for e in errors), result.stdout


def test_config_sizes_read_as_bytes(tmp_path: Path) -> None:
    script = tmp_path / "sizes.py"
    script.write_text(PRELUDE + "def heap_pages(c: SandboxConfiguration) -> int:\n    return c.heap_size // 4096\n")
    result = _mypy(script)
    assert result.returncode == 0 and not _errors(result, script), result.stdout + result.stderr


def _cython_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in PACKAGE.rglob("*.pyx"))


@pytest.mark.parametrize("module", _cython_modules())
def test_cython_module_has_a_stub(module: str) -> None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".pyi")
    assert path.is_file(), f"{module} has no stub {path.relative_to(ROOT)}"


@pytest.mark.parametrize("module", _cython_modules())
def test_stub_matches_the_built_module(module: str, tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text(STUBTEST_ALLOWLIST)
    # Only the stub's own errors count: the rest of the package is typed by `mypy` in CI.
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\n[mypy-hlsandbox]\nignore_errors = True\n[mypy-hlsandbox.*]\nignore_errors = True\n"
                      f"[mypy-{module}]\nignore_errors = False\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config), "--allowlist", str(allowlist),
         "--ignore-unused-allowlist", module],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
