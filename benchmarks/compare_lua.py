"""LuaSandbox against lupa (Lua 5.4 in-process, no isolation) and a lua5.4 process per run.

    python3 benchmarks/compare_lua.py [--rounds 8] [--calls 300]

Needs `lupa` (pip install lupa) and, for the subprocess column, Debian's `lua5.4`
(apt-get install lua5.4); neither is needed by the tests. The contenders are
interleaved round by round, so machine noise hits them alike; ratios are the
median over rounds of each round's ratio of medians (for fib(27): of the
quickest of --fib-calls runs). Targets (issue 13):
fresh=True at most 2.5x a fresh lupa runtime, fib(27) at most 1.1x lupa.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hlsandbox as hl  # noqa: E402

TRIVIAL = "return 1+1"
FIB = "local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end return fib(27)"


def min_us(fn, n: int) -> float:
    """The quickest of n runs: for CPU-bound scripts, what the machine's noise (2 cores
    shared) adds is never less than nothing."""
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t)
    return best / 1000


def median_us(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=300, help="runs of the trivial script per contender per round")
    ap.add_argument("--fib-calls", type=int, default=3, help="runs of fib(27) per contender per round")
    args = ap.parse_args()
    try:
        from lupa import lua54
    except ImportError:
        print("needs lupa: pip install lupa", file=sys.stderr)
        return 1
    lua_bin = shutil.which("lua5.4")
    fresh = hl.LuaSandbox(fresh=True)
    warm = hl.LuaSandbox(fresh=False)
    rt = lua54.LuaRuntime()
    assert fresh.run(TRIVIAL).value == warm.run(TRIVIAL).value == rt.execute(TRIVIAL) == 2
    assert fresh.run(FIB).value == rt.execute(FIB) == 196418
    contenders = {
        "hl fresh=True": lambda: fresh.run(TRIVIAL),
        "hl fresh=False": lambda: warm.run(TRIVIAL),
        "lupa, new runtime per run": lambda: lua54.LuaRuntime().execute(TRIVIAL),
        "lupa, one runtime reused": lambda: rt.execute(TRIVIAL),
    }
    if lua_bin:
        contenders["lua5.4 -e, a process per run"] = lambda: subprocess.run([lua_bin, "-e", TRIVIAL], check=True)
    fib = {"hl fresh=True fib(27)": lambda: fresh.run(FIB), "lupa fib(27)": lambda: rt.execute(FIB)}
    rows: dict[str, list[float]] = {k: [] for k in [*contenders, *fib]}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            rows[name].append(median_us(fn, args.calls if "process" not in name else max(10, args.calls // 20)))
        for name, fn in fib.items():
            rows[name].append(min_us(fn, args.fib_calls))
    base = "lupa, new runtime per run"
    title = 'run("return 1+1")'
    print(f"{title:<34} {'median µs':>10} {'x fresh lupa':>13}")
    for name in contenders:
        ratio = statistics.median(a / b for a, b in zip(rows[name], rows[base], strict=True))
        print(f"{name:<34} {statistics.median(rows[name]):>10.1f} {ratio:>13.2f}")
    print()
    fib_pairs = zip(rows["hl fresh=True fib(27)"], rows["lupa fib(27)"], strict=True)
    fib_ratio = statistics.median(a / b for a, b in fib_pairs)
    for name in fib:
        print(f"{name:<34} {statistics.median(rows[name]) / 1000:>10.2f} ms (quickest run per round, median)")
    print(f"{'fib(27) hl / lupa':<34} {fib_ratio:>10.2f}")
    fresh_ratio = statistics.median(a / b for a, b in zip(rows["hl fresh=True"], rows[base], strict=True))
    print(f"\ntargets: fresh=True <= 2.5x fresh lupa: {fresh_ratio:.2f} {'ok' if fresh_ratio <= 2.5 else 'MISSED'}; "
          f"fib(27) <= 1.1x lupa: {fib_ratio:.2f} {'ok' if fib_ratio <= 1.1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
