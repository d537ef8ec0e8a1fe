"""Guests built and shipped with the package (from csrc/guests/amd64 and csrc/guests/i686)."""
from __future__ import annotations

from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin"


def path(name: str) -> str:
    """The path of a bundled guest ELF, e.g. path("simpleguest")."""
    p = BIN / f"{name}.elf"
    if not p.is_file():
        have = ", ".join(available()) or "none; reinstall hlsandbox so the guests are built"
        raise FileNotFoundError(f"no bundled guest {name!r} (available: {have})")
    return str(p)


def available() -> list[str]:
    """Names of the bundled guests."""
    return sorted(q.stem for q in BIN.glob("*.elf"))
