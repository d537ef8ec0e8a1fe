"""The package's layers hold (docs/architecture.md, "Layers"): every import and cimport of
every module, read from the source, points down or sideways, never up or across."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hlsandbox"

# layer -> the layers it must not import from. errors and abi are the shared bottom: every
# layer may use them; sandbox/ is the top and builds on the three below it; mem/ may use
# func/'s value types.
FORBIDDEN = {
    "mem": {"sandbox", "hypervisor"},
    "hypervisor": {"sandbox", "mem", "func"},
    "func": {"sandbox", "hypervisor", "mem"},
}

# `import a.b`, `cimport a.b`, `from a.b import c`, `from a.b cimport c`, `from . cimport c`
_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(?P<src>[\w.]+)\s+c?import\s+(?P<names>[^#]*)|c?import\s+(?P<mods>[^#]+))")


def _absolute(module: str, level: int, target: str) -> str:
    """`from ..x import y` in hlsandbox.a.b (level 2, target "x") -> "hlsandbox.x"."""
    if not level:
        return target
    base = module.split(".")[:-level]
    return ".".join(base + ([target] if target else []))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imports_of(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a .py, .pyx or .pxd file, those inside
    functions (lazy imports) included. For `from pkg import name` both pkg and pkg.name
    are listed, since the name may be a module."""
    text = path.read_text() if text is None else text
    module = _module_name(path)
    if path.name == "__init__.py" or path.name == "__init__.pxd":
        module += ".__init__"
    found: list[tuple[int, str]] = []
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(module, node.level, node.module or "")
                found += [(node.lineno, src)] + [(node.lineno, f"{src}.{a.name}") for a in node.names]
        return found
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _CYTHON_IMPORT.match(line)
        if not m:
            continue
        if m["src"]:
            level = len(m["src"]) - len(m["src"].lstrip("."))
            src = _absolute(module, level, m["src"].lstrip("."))
            names = [n.split()[0] for n in m["names"].strip("() \\").split(",") if n.strip()]
            found += [(lineno, src)] + [(lineno, f"{src}.{n}") for n in names]
        else:
            found += [(lineno, n.split()[0]) for n in m["mods"].split(",") if n.strip()]
    return found


def crossings(path: Path, text: str | None = None) -> list[str]:
    """The imports in `path` that cross a layer the wrong way, as "file:line: a -> b"."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) < 2 or parts[0] not in FORBIDDEN:
        return []
    layer = parts[0]
    bad = []
    for lineno, target in imports_of(path, text):
        t = target.split(".")
        if len(t) >= 2 and t[0] == "hlsandbox" and t[1] in FORBIDDEN[layer]:
            bad.append(f"{path.relative_to(ROOT)}:{lineno}: {layer} -> {'.'.join(t[:3])}")
    return sorted(set(bad))


def _sources() -> list[Path]:
    return sorted(p for ext in ("*.py", "*.pyx", "*.pxd") for p in PACKAGE.rglob(ext))


def test_no_import_crosses_a_layer_the_wrong_way() -> None:
    bad = [c for p in _sources() for c in crossings(p)]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_every_layer_has_sources() -> None:
    # The walk reads the files the layers have: an empty walk would pass vacuously.
    for layer in FORBIDDEN:
        kinds = {p.suffix for p in _sources() if p.relative_to(PACKAGE).parts[0] == layer}
        assert ".py" in kinds or ".pyx" in kinds, layer
    assert any(p.suffix == ".pxd" for p in _sources())


@pytest.mark.parametrize("where,source", [
    ("mem/x.py", "from ..sandbox.config import SandboxConfiguration\n"),
    ("mem/x.py", "def f():\n    from ..hypervisor import vcpu_state\n"),  # lazy, inside a function
    ("mem/x.py", "import hlsandbox.hypervisor.vcpu_state\n"),
    ("mem/x.py", "from .. import sandbox\n"),
    ("hypervisor/x.pyx", "from ..mem.shared_memory cimport SharedMemory\n"),
    ("hypervisor/x.pxd", "cimport hlsandbox.func.wire\n"),
    ("hypervisor/x.pyx", "from ..sandbox.watchdog import WATCHDOG  # comment\n"),
    ("func/x.pyx", "from ..hypervisor.kvm cimport (VirtualMachine,\n    hl_vcpu_state)\n"),
    ("func/x.py", "from hlsandbox.mem import layout\n"),
])
def test_a_planted_crossing_is_found(where: str, source: str) -> None:
    assert crossings(PACKAGE / where, source), source


@pytest.mark.parametrize("where,source", [
    ("sandbox/x.py", "from ..mem.layout import PAGE\nfrom ..hypervisor import kvm\n"),  # the top uses all
    ("mem/x.py", "from ..errors import InvalidSnapshot\nfrom ..abi import Port\nfrom .layout import PAGE\n"),
    ("hypervisor/x.pyx", "from ..abi cimport HL_PORT_HALT\nfrom .vcpu_state import STATE_SIZE\n"),
    ("func/x.pyx", "from libc.stdint cimport uint8_t\nimport numbers\n"),
])
def test_imports_along_the_layers_pass(where: str, source: str) -> None:
    assert crossings(PACKAGE / where, source) == []
