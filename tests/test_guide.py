"""docs/guests.md: its example guest, taken from the document, builds and answers."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hlsandbox as hl

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guests.md"

pytestmark = pytest.mark.kvm


def _first_block(lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S).group(1)


def test_readme_links_the_guide():
    readme = (GUIDE.parent.parent / "README.md").read_text()
    assert "docs/guests.md" in readme


def test_the_guides_example_builds_and_answers(tmp_path):
    (tmp_path / "hello.c").write_text(_first_block("c"))
    proc = subprocess.run([sys.executable, "-m", "hlsandbox", "build", "hello.c", "-o", "hello.elf"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(GUIDE.parent.parent), **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr
    out = io.StringIO()
    u = hl.UninitializedSandbox(str(tmp_path / "hello.elf"), writer=out)
    u.register("Scale", lambda x: x * 2.5, params=(hl.f64,), returns=hl.f64)
    with u.evolve() as sb:
        assert sb.call("Greet", "world") == "Hello, world! (5 letters)"
        assert sb.call("Scaled", 4.0) == 10.0
        assert out.getvalue() == "scaled 4 to 10\n"


def test_the_guides_example_reports_a_host_failure(tmp_path):
    from hlsandbox import sdk
    (tmp_path / "hello.c").write_text(_first_block("c"))
    u = hl.UninitializedSandbox(sdk.build([tmp_path / "hello.c"], tmp_path / "hello.elf"))

    def scale(x: float) -> float:
        raise RuntimeError("no scaling today")

    u.register("Scale", scale, params=(hl.f64,), returns=hl.f64)
    with u.evolve() as sb:
        with pytest.raises(hl.HostFunctionError, match="no scaling today"):
            sb.call("Scaled", 1.0)
