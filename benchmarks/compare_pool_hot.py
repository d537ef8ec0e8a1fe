#!/usr/bin/env python3
"""A pool that keeps its sandboxes hot against one that does not (issue 14, item 4):

    python3 benchmarks/compare_pool_hot.py [--rounds 5] [--calls 1000] [--spin 0.01]

One thread calls pool.call("Echo", "x") on a pool of one sandbox, hot
(SandboxPool(hot=1)) or cold, and between calls sleeps `gap` (a server waiting for
its next request: the GIL and the core are free meanwhile). Reported per gap: the
median and p99 of a call's latency, and the CPU time the process used per call
(the hot pool's restore still takes an exit per call, on its restorer thread, and
its guest spins up to `spin` seconds after each restore). Each round runs both
pools back to back, alternating which goes first; ratios are of medians over all
rounds. Nothing is asserted."""
from __future__ import annotations

import argparse
import statistics
import time

import hlsandbox as hl

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))
GAPS = (0.0, 0.0002, 0.001)


def run(pool: hl.SandboxPool, n: int, gap: float) -> tuple[list[float], float]:
    """Latencies of n calls `gap` seconds apart, and process CPU seconds per call."""
    lat = []
    cpu = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        pool.call("Echo", "x")
        lat.append(time.perf_counter() - t)
        if gap:
            time.sleep(gap)
    return lat, (time.process_time() - cpu) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--spin", type=float, default=0.01)
    args = ap.parse_args()
    with hl.SandboxPool(SIMPLE, size=1) as cold, hl.SandboxPool(SIMPLE, size=1, hot=1, spin=args.spin) as hot:
        pools = {"cold": cold, "hot": hot}
        for p in pools.values():
            run(p, 200, 0.0)  # warm
        print(f"pool of 1, one thread, pool.call('Echo', 'x'); hot spin {args.spin:g} s; "
              f"{args.rounds} rounds x {args.calls} calls")
        print(f"{'gap':>8} {'pool':>5} {'median us':>10} {'p99 us':>8} {'cpu us/call':>12}")
        for gap in GAPS:
            lat: dict[str, list[float]] = {"cold": [], "hot": []}
            cpu: dict[str, list[float]] = {"cold": [], "hot": []}
            for r in range(args.rounds):
                order = ("cold", "hot") if r % 2 == 0 else ("hot", "cold")
                for name in order:
                    got, c = run(pools[name], args.calls, gap)
                    lat[name] += got
                    cpu[name].append(c)
            med = {k: statistics.median(v) for k, v in lat.items()}
            for name in ("cold", "hot"):
                ordered = sorted(lat[name])
                print(f"{gap * 1e6:7.0f}u {name:>5} {med[name] * 1e6:10.1f} "
                      f"{ordered[int(0.99 * len(ordered))] * 1e6:8.1f} {statistics.median(cpu[name]) * 1e6:12.1f}")
            print(f"{'':8} hot/cold median latency: {med['hot'] / med['cold']:.3f}")


if __name__ == "__main__":
    main()
