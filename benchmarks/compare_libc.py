"""Does linking the C library cost the call path anything? `call("Echo", "hi")` on a
guest that uses musl (tests/sdk/guests/libcguest.c) against the bundled simpleguest,
interleaved round by round; optionally also against another simpleguest ELF (e.g. one
built by an older SDK with gcc: --baseline PATH).

    python3 benchmarks/compare_libc.py [--rounds 10] [--calls 2000] [--baseline PATH]
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import hlsandbox as hl
from hlsandbox import sdk

HERE = pathlib.Path(__file__).resolve().parent


def _sandbox(path: str):
    u = hl.UninitializedSandbox(path)
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    return u.evolve()


def _median_call_ns(sb, calls: int) -> float:
    call = sb.call
    times = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        call("Echo", "hi")
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--baseline", help="another simpleguest ELF to include")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        libc = sdk.build([HERE.parent / "tests" / "sdk" / "guests" / "libcguest.c"], f"{tmp}/libcguest.elf")
        print(f"built libcguest in {time.perf_counter() - t:.2f} s "
              f"({pathlib.Path(libc).stat().st_size} bytes with debug info)")
        guests = {"simpleguest": hl.guests.path("simpleguest"), "libcguest": libc}
        if a.baseline:
            guests["baseline"] = a.baseline
        sandboxes = {name: _sandbox(path) for name, path in guests.items()}
        for sb in sandboxes.values():
            _median_call_ns(sb, 200)  # warm up
        results: dict[str, list[float]] = {name: [] for name in sandboxes}
        for _ in range(a.rounds):
            for name, sb in sandboxes.items():
                results[name].append(_median_call_ns(sb, a.calls))
        base = statistics.median(results["simpleguest"])
        for name, r in results.items():
            m = statistics.median(r)
            print(f"{name:<12} Echo median of round medians {m / 1000:7.2f} µs   ratio to simpleguest {m / base:.3f}")
        ratios = [x / y for x, y in zip(results["libcguest"], results["simpleguest"], strict=True)]
        print(f"libcguest / simpleguest per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        for sb in sandboxes.values():
            sb.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
