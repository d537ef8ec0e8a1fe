"""pytest fixtures for the hlsandbox benchmarks (see README.md).

Run with `python3 -m pytest benchmarks/ --benchmark-only`. This directory is
not in the project's `testpaths`, so the normal test run never collects it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make `import floor` work whatever pytest's import mode (prepend/importlib)
# and whatever the current directory.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import floor  # noqa: E402
import snapbench  # noqa: E402

SUM_N = floor.SUM_N  # n for Sum / sum_c (env HLSANDBOX_BENCH_SUM_N)

# Medians recorded during the session, printed side by side at the end.
_RESULTS = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_RESULTS] = {}


@pytest.fixture(scope="session")
def kvm():
    """Skips the benchmark when this machine cannot run KVM guests."""
    reason = floor.available()
    if reason:
        pytest.skip(f"no KVM benchmark possible: {reason}")


@pytest.fixture(scope="session")
def floor_exe(kvm) -> Path:
    """floor.c compiled once (cached across sessions by source hash)."""
    return floor.build()


@pytest.fixture(scope="session")
def sum_expected(floor_exe) -> int:
    """Sum(SUM_N) computed natively by floor.c: what the guest must return."""
    res = floor.run(iterations=1, sum_n=SUM_N, sum_reps=1, figures=["sum_c"], exe=floor_exe)
    return int(res.info["sum_c_result"])


@pytest.fixture(scope="module")
def sandbox(kvm):
    """A simpleguest MultiUseSandbox with the HostAdd host function."""
    import hlsandbox as hl  # imported here so a missing build fails the benchmark, not collection

    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration())
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    try:
        # Check the functions answer correctly before timing them.
        assert sb.call("Echo", "hi") == "hi"
        assert sb.call("CallHostAdd", 1, 2) == 3
        yield sb
    finally:
        sb.close()


@pytest.fixture
def record(request):
    """record(name, median_us): keeps a median for the end-of-session summary."""

    def _record(name: str, median_us: float | None) -> None:
        if median_us is not None:
            request.config.stash[_RESULTS][name] = median_us

    return _record


# (hlsandbox figure, floor figure, target ratio or None): as in compare.py.
_PAIRS = (
    ("Echo", "exit_roundtrip", 1.25),
    ("CallHostAdd", "host_call_roundtrip", None),
    (f"Sum({SUM_N})", "sum_c", None),
) + tuple((h, f, t) for _group, h, f, t, _what in snapbench.ROWS)  # test_bench_snapshots.py


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config.stash.get(_RESULTS, {})
    rows = [(h, f, t) for h, f, t in _PAIRS if h in results and f in results]
    if not rows:
        return
    tr = terminalreporter
    tr.section("hlsandbox vs floor (medians, us)")
    tr.write_line(
        "measured minutes apart on a noisy machine: indicative only; "
        "`python3 benchmarks/compare.py` interleaves them"
    )
    tr.write_line(f"{'hlsandbox':<28}{'median':>12}  {'floor':<30}{'median':>12}{'ratio':>9}  target")
    for h, f, target in rows:
        ratio = results[h] / results[f]
        tgt = f"<= {target:.2f}x ({'met' if ratio <= target else 'missed'})" if target else "-"
        tr.write_line(f"{h:<28}{results[h]:>12.2f}  {f:<30}{results[f]:>12.2f}{ratio:>8.2f}x  {tgt}")
