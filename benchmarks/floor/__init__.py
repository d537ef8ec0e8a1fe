"""Build and run floor.c, the raw-KVM cost floor of a guest call.

floor.c measures, with nothing but KVM ioctls, what one hlsandbox call can
never be cheaper than (see its header comment and ../README.md). This module
compiles it once per source version with the system gcc into a cache
directory and runs it, returning the figures it prints::

    import floor
    figs = floor.run(iterations=2000, sum_n=10_000_000)
    figs["exit_roundtrip"].median_us      # e.g. 31.6
    figs.info["sum_c_result"]             # what the guest's Sum(n) must return

snapfloor.c, the floor of the snapshot operations (call + restore by dirty
pages, snapshot capture, VM creation), is built the same way and run with
`floor.run_snap(["call_restore:n=10:heap=16M:label=dirty10", ...])`.

No third-party dependencies; usable from pytest, compare.py and
compare_snapshots.py alike.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "floor.c"
# The snapshot floors (call + restore, snapshot capture, VM creation): see its
# header comment, run_snap() and ../README.md.
SNAP_SOURCE = Path(__file__).resolve().parent / "snapfloor.c"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-pthread")
FIGURES = ("exit_roundtrip", "host_call_roundtrip", "sum_c")

# n for the guest's Sum and for sum_c in the benchmarks (pytest and
# compare.py); the Sum target is stated for 10_000_000.
SUM_N = int(os.environ.get("HLSANDBOX_BENCH_SUM_N", "10000000"))


class FloorError(RuntimeError):
    """floor.c failed to build or reported an error (its stderr is included)."""


@dataclass(frozen=True)
class Figure:
    """One line of floor output; times in microseconds."""

    name: str
    median_us: float
    p10_us: float
    p90_us: float
    iterations: int


class FloorRun(dict):
    """figure name -> Figure, plus `info`: the `#info key value` lines (str values)."""

    def __init__(self, figures: dict[str, Figure], info: dict[str, str]):
        super().__init__(figures)
        self.info = info


def _cache_dir() -> Path:
    """A writable directory that survives between runs, so we compile once:
    $HLSANDBOX_BENCH_CACHE, else $XDG_CACHE_HOME or ~/.cache, else the temp dir."""
    explicit = os.environ.get("HLSANDBOX_BENCH_CACHE")
    if explicit:
        candidates = [Path(explicit)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        candidates = [Path(xdg) / "hlsandbox-bench", Path(tempfile.gettempdir()) / "hlsandbox-bench"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise FloorError(f"no writable cache directory among {[str(d) for d in candidates]}")


def _compiler() -> str:
    cc = os.environ.get("CC", "gcc")
    path = shutil.which(cc)
    if path is None:
        raise FloorError(f"C compiler {cc!r} not found (floor.c needs gcc)")
    return path


def available() -> str | None:
    """None if the floor can run here, else the reason it cannot."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    try:
        _compiler()
    except FloorError as e:
        return str(e)
    return None


def build(force: bool = False, source: Path | None = None) -> Path:
    """Compiles floor.c (or `source`, e.g. SNAP_SOURCE) if needed and returns the
    executable's path.

    The binary's name carries a hash of the source, the flags and the compiler
    version, so an edit of floor.c or a new gcc rebuilds, and concurrent
    builders (pytest-xdist) each write a private temp file then rename it
    atomically into place.
    """
    source = SOURCE if source is None else Path(source)
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    h.update(source.read_bytes())
    h.update((source.parent / "floor_common.h").read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(version.encode())
    cache = _cache_dir()
    exe = cache / f"{source.stem}-{h.hexdigest()[:16]}"
    if exe.exists() and not force:
        return exe
    fd, tmp = tempfile.mkstemp(prefix=f"{source.stem}-", dir=cache)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp, str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FloorError(f"compiling {source} failed:\n{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


def parse(output: str) -> FloorRun:
    """Parses floor's stdout (see floor.c): figure lines and `#info` lines."""
    figures: dict[str, Figure] = {}
    info: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "#info":
            if len(parts) != 3:
                raise FloorError(f"malformed info line from floor: {line!r}")
            info[parts[1]] = parts[2]
            continue
        if parts[0].startswith("#"):
            continue
        if len(parts) != 5:
            raise FloorError(f"malformed figure line from floor: {line!r}")
        name, med, p10, p90, n = parts
        figures[name] = Figure(name, float(med), float(p10), float(p90), int(n))
    return FloorRun(figures, info)


def run(
    iterations: int = 2000,
    sum_n: int = 10_000_000,
    sum_reps: int = 11,
    figures: tuple[str, ...] | list[str] | None = None,
    exe: Path | None = None,
    timeout: float = 300.0,
) -> FloorRun:
    """Runs the floor (building it first if `exe` is not given).

    `figures` selects a subset of FIGURES (default all); sum_c is skipped when
    sum_n is 0. Raises FloorError on a non-zero exit (floor exits 2 with a
    message on any KVM error or unexpected guest exit) or if a requested
    figure is missing from the output.
    """
    if figures is not None:
        unknown = set(figures) - set(FIGURES)
        if unknown:
            raise ValueError(f"unknown floor figures {sorted(unknown)}; known: {FIGURES}")
    exe = exe or build()
    argv = [str(exe), str(iterations), str(sum_n), str(sum_reps)]
    if figures is not None:
        argv.append(",".join(figures))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise FloorError(
            f"{' '.join(argv)} exited with status {proc.returncode}:\n{proc.stderr.strip()}"
        )
    result = parse(proc.stdout)
    wanted = list(figures) if figures is not None else list(FIGURES)
    if sum_n == 0 and "sum_c" in wanted:
        wanted.remove("sum_c")
    missing = [f for f in wanted if f not in result]
    if missing:
        raise FloorError(f"floor printed no {missing}; output was:\n{proc.stdout}")
    return result



def build_snap(force: bool = False) -> Path:
    """Compiles snapfloor.c (if needed) and returns the executable's path."""
    return build(force, SNAP_SOURCE)


def run_snap(specs: list[str] | tuple[str, ...], iterations: int = 1000, exe: Path | None = None,
             timeout: float = 600.0) -> FloorRun:
    """Runs snapfloor.c on `specs` (`kind[:key=value]...`, see its header comment)
    and returns its figures: per spec LABEL plus LABEL.run and LABEL.restore
    (call_restore), or LABEL.teardown (vm_create). `#info` facts include
    LABEL.memory_bytes and, for snapshot_create, LABEL.resident_pages.

    Raises FloorError on a non-zero exit (any KVM error, unexpected exit, or a
    wrong guest or restore result) or when a spec's figure is missing."""
    if not specs:
        raise ValueError("run_snap needs at least one spec")
    exe = exe or build_snap()
    argv = [str(exe), str(iterations), *specs]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise FloorError(f"{' '.join(argv)} exited with status {proc.returncode}:\n{proc.stderr.strip()}")
    result = parse(proc.stdout)
    for spec in specs:
        label = spec.split(":", 1)[0]
        for kv in spec.split(":")[1:]:
            if kv.startswith("label="):
                label = kv[len("label="):]
        if label not in result:
            raise FloorError(f"snapfloor printed no {label!r}; output was:\n{proc.stdout}")
    return result
