#!/usr/bin/env python3
"""What clearing ZMM16-31 and k0-k7 in the restore trampoline costs, side by side.

    python3 benchmarks/compare_avx512_reset.py [--rounds 16] [--calls 2000]

On kvm-pvm a CPL3 guest can use AVX-512 where the host has it, and the FXSAVE image a
fast restore loads does not cover ZMM16-31 or the mask registers, so the trampoline
clears them (mem/trampoline.py). This times the per-request clean guest,
call("GetStatic", restore=True), and a plain restore() after a call, in two sandboxes
that differ only in their trampoline (with and without the AVX-512 clearing), ABBA
interleaved round by round. Reports the median over rounds of each side's median and
of the per-round ratio (with its range). Never asserts a time.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hlsandbox as hl  # noqa: E402
from hlsandbox.hypervisor import device  # noqa: E402
from hlsandbox.mem.trampoline import trampoline_code  # noqa: E402


def make(clear_avx512: bool) -> hl.MultiUseSandbox:
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    L = sb.layout
    sb._memory.write(L.host(L.trampoline_gpa), trampoline_code(True, clear_avx512))  # benchmark-only
    return sb


def timed(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) / 1000


def figures(sb: hl.MultiUseSandbox, n: int) -> dict[str, float]:
    def call_then_restore() -> None:
        sb.call("GetStatic")
        sb.restore()

    out = {"GetStatic(restore=True)": timed(lambda: sb.call("GetStatic", restore=True), n)}
    samples = []
    for _ in range(n):
        sb.call("SetStatic", 1)
        t = time.perf_counter_ns()
        sb.restore()
        samples.append(time.perf_counter_ns() - t)
    out["restore() alone"] = statistics.median(samples) / 1000
    # the restore's own time does not show the trampoline (it runs at the next KVM_RUN):
    out["call + restore()"] = timed(call_then_restore, n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    if not (device.is_kvm_pvm() and device.host_has_avx512()):
        print("not kvm-pvm with an AVX-512 host: the trampoline clears no AVX-512 state here")
        return 0
    with make(True) as strict, make(False) as plain:
        for sb in (strict, plain):
            sb.call("SetAvx512", 1)
            sb.restore()
            assert sb.call("GetAvx512") == (0 if sb is strict else 1)
            sb.restore()
        rounds: list[tuple[dict, dict]] = []
        gc.disable()
        for r in range(args.rounds):
            if r % 2:
                b = figures(plain, args.calls)
                a = figures(strict, args.calls)
            else:
                a = figures(strict, args.calls)
                b = figures(plain, args.calls)
            rounds.append((a, b))
        gc.enable()
    print(f"{'figure (us, median of round medians)':40} {'clears AVX-512':>15} {'does not':>10} "
          f"{'ratio (range)':>22}")
    for key in rounds[0][0]:
        a = statistics.median(x[key] for x, _ in rounds)
        b = statistics.median(y[key] for _, y in rounds)
        ratios = sorted(x[key] / y[key] for x, y in rounds)
        print(f"{key:40} {a:15.2f} {b:10.2f} {statistics.median(ratios):8.3f} "
              f"({ratios[0]:.3f}-{ratios[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
