"""The README runs as written: every ```python block, in order, in one namespace; and no
document in the repository links outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\b(?:https?|ftp)://|\bwww\.\w", re.I)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


@pytest.mark.kvm
def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # snippets may write files
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README.md python block {i} failed: {type(e).__name__}: {e}\n{code}") from e


def test_block_extraction():
    text = "x\n```python\na = 1\n```\n```sh\nls\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a\n"]


def test_no_document_links_outside_the_repository():
    try:
        files = subprocess.run(["git", "ls-files", "*.md", "*.rst"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = []
    if not files:
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.md")
                 if not {".git", "build", ".pytest_cache"} & set(p.parts)]
    offending = [f"{f}:{n}" for f in files for n, line in
                 enumerate((ROOT / f).read_text(errors="replace").splitlines(), 1) if LINK.search(line)]
    assert offending == []
