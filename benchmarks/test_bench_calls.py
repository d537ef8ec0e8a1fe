"""Benchmarks of hlsandbox guest calls, and of their raw-KVM floor (floor.c).

`python3 -m pytest benchmarks/ --benchmark-only` (a few seconds). Each call is
timed on its own (`pedantic`, iterations=1) so the statistics are those of
single calls, which is what a user sees; medians are the figures to read, a
few thousand rounds keep them stable to within a few percent.

The floor benchmarks time whole floor.c process runs (VM creation included),
which is not the figure: the floor's own per-round-trip median/p10/p90 go to
`extra_info` (see `--benchmark-json`) and into the summary printed at the end.
"""

from __future__ import annotations

import os
import statistics

import floor
import pytest

SUM_N = floor.SUM_N  # env HLSANDBOX_BENCH_SUM_N, default 10_000_000

# Rounds per call benchmark: ~40-100 us a call on kvm-pvm, so a few thousand
# rounds cost well under a second each and give stable medians.
CALL_ROUNDS = int(os.environ.get("HLSANDBOX_BENCH_CALL_ROUNDS", "3000"))
SUM_ROUNDS = int(os.environ.get("HLSANDBOX_BENCH_SUM_ROUNDS", "15"))  # ~13 ms each at n=1e7
FLOOR_ITERATIONS = CALL_ROUNDS
FLOOR_RUNS = 3  # floor processes per figure; the median of their medians is reported


def _median_us(benchmark) -> float | None:
    # None under --benchmark-disable (the target then runs once, untimed).
    return benchmark.stats.stats.median * 1e6 if benchmark.stats else None


@pytest.mark.benchmark(group="call")
def test_echo(benchmark, sandbox, record):
    """One guest call, no host call: its floor is one exit round trip."""
    result = benchmark.pedantic(
        sandbox.call, args=("Echo", "hi"), rounds=CALL_ROUNDS, warmup_rounds=100, iterations=1
    )
    assert result == "hi"
    record("Echo", _median_us(benchmark))


@pytest.mark.benchmark(group="call")
def test_call_host_add(benchmark, sandbox, record):
    """A guest call making one host call: its floor is two exit round trips."""
    result = benchmark.pedantic(
        sandbox.call, args=("CallHostAdd", 1, 2), rounds=CALL_ROUNDS, warmup_rounds=100, iterations=1
    )
    assert result == 3
    record("CallHostAdd", _median_us(benchmark))


@pytest.mark.benchmark(group="hot call")
@pytest.mark.parametrize("name, args, expected", [("Echo", ("hi",), "hi"), ("CallHostAdd", (1, 2), 3)])
def test_hot(benchmark, sandbox, record, name, args, expected):
    """The same calls in hot mode (sb.hot()): no exit; compare side by side with
    benchmarks/report.py, which interleaves them with the cold ones."""
    with sandbox.hot(spin=0.05):
        result = benchmark.pedantic(sandbox.call, args=(name, *args), rounds=CALL_ROUNDS * 10, warmup_rounds=100,
                                    iterations=1)
    assert result == expected
    record(f"{name} hot", _median_us(benchmark))


@pytest.mark.benchmark(group="sum")
def test_sum(benchmark, sandbox, sum_expected, record):
    """CPU-bound guest code: CPL3 runs natively, so this should match sum_c."""
    result = benchmark.pedantic(
        sandbox.call, args=("Sum", SUM_N), rounds=SUM_ROUNDS, warmup_rounds=2, iterations=1
    )
    assert result == sum_expected
    benchmark.extra_info["n"] = SUM_N
    record(f"Sum({SUM_N})", _median_us(benchmark))


def _bench_floor(benchmark, floor_exe, record, figure: str, **run_kwargs) -> None:
    runs: list[floor.Figure] = []

    def once():
        runs.append(floor.run(figures=[figure], exe=floor_exe, **run_kwargs)[figure])

    benchmark.pedantic(once, rounds=FLOOR_RUNS, iterations=1)
    med = statistics.median(r.median_us for r in runs)
    benchmark.extra_info.update(
        figure=figure,
        floor_median_us=med,
        floor_p10_us=statistics.median(r.p10_us for r in runs),
        floor_p90_us=statistics.median(r.p90_us for r in runs),
        floor_iterations_per_run=runs[0].iterations,
        floor_runs=len(runs),
        note="timing columns are whole floor.c process runs; the figure is floor_median_us",
    )
    record(figure, med)


@pytest.mark.benchmark(group="floor (process runs; figure in extra_info)")
@pytest.mark.parametrize("figure", ["exit_roundtrip", "host_call_roundtrip"])
def test_floor_exits(benchmark, floor_exe, record, figure):
    _bench_floor(benchmark, floor_exe, record, figure, iterations=FLOOR_ITERATIONS, sum_n=0, sum_reps=1)


@pytest.mark.benchmark(group="floor (process runs; figure in extra_info)")
def test_floor_sum_c(benchmark, floor_exe, record):
    _bench_floor(benchmark, floor_exe, record, "sum_c", iterations=1, sum_n=SUM_N, sum_reps=SUM_ROUNDS)
