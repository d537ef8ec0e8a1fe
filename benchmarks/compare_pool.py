#!/usr/bin/env python3
"""SandboxPool costs side by side, interleaved round by round (issue 12's Measure):

    python3 benchmarks/compare_pool.py [--rounds 7] [--calls 2000]

1. lend + call + give back with restore (pool.call on a warm pool, one thread)
   against call(restore=True) on one sandbox: target <= 1.2x (time per call);
2. a pool of 2 driven by 2 threads against 1 thread: target >= 1.7x (throughput);
3. 200 concurrent pool.acall()s on a pool of 2 against 2 threads calling pool.call():
   target >= 0.9x (throughput), on asyncio's loop and on uvloop's.

Figure 2 is also measured without the pool (two sandboxes, one thread each): the
machine's own ceiling for two threads, which a pool cannot beat.

Every call is "Echo" of a short string on simpleguest (one exit each), or with --work N
"Sum(N)", a call with guest work to overlap. Each round
runs both sides of a figure back to back, alternating which goes first; the ratio
quoted is the median of the per-round ratios. Targets are reported, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import hlsandbox as hl

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))
CALL: tuple = ("Echo", "x")  # --work N: ("Sum", N), a call that works N steps in the guest


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def single_restoring(sb: hl.MultiUseSandbox, n: int) -> None:
    for _ in range(n):
        sb.call(*CALL, restore=True)


def sandboxes_threads(sbs: list, n: int) -> None:
    """The ceiling without a pool: one thread per sandbox."""
    per = n // len(sbs)
    ts = [threading.Thread(target=single_restoring, args=(sb, per)) for sb in sbs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pool_one_thread(pool: hl.SandboxPool, n: int) -> None:
    for _ in range(n):
        pool.call(*CALL)


def pool_threads(pool: hl.SandboxPool, n: int, threads: int) -> None:
    per = n // threads
    ts = [threading.Thread(target=pool_one_thread, args=(pool, per)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pool_acalls(pool: hl.SandboxPool, n: int, concurrency: int, loop: asyncio.AbstractEventLoop) -> None:
    async def worker(k: int) -> None:
        for _ in range(k):
            await pool.acall(*CALL)

    async def main() -> None:
        per, extra = divmod(n, concurrency)
        await asyncio.gather(*(worker(per + (i < extra)) for i in range(concurrency)))
    loop.run_until_complete(main())


def ratio_rounds(rounds: int, a, b) -> tuple[list[float], list[float]]:
    """Runs a() and b() back to back `rounds` times (ABBA order): their seconds."""
    ta, tb = [], []
    for r in range(rounds):
        if r % 2:
            tb.append(timed(b))
            ta.append(timed(a))
        else:
            ta.append(timed(a))
            tb.append(timed(b))
    return ta, tb


def report(name: str, ta: list[float], tb: list[float], n: int, invert: bool, target: str) -> None:
    ratios = [(b / a if invert else a / b) for a, b in zip(ta, tb, strict=True)]
    ma, mb = statistics.median(ta) / n * 1e6, statistics.median(tb) / n * 1e6
    print(f"{name}: {ma:.1f} us/call vs {mb:.1f} us/call -> ratio {statistics.median(ratios):.2f} "
          f"(rounds {min(ratios):.2f}..{max(ratios):.2f}; target {target})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--work", type=int, default=0, metavar="N",
                    help="call Sum(N) instead of Echo: guest work per call, which two threads overlap "
                         "(KVM_RUN runs without the GIL) while Python's share per call stays the same")
    args = ap.parse_args()
    n = args.calls
    global CALL
    if args.work:
        CALL = ("Sum", args.work)
    print(f"each call: {CALL[0]}({CALL[1]!r})")
    loop = asyncio.new_event_loop()
    try:
        uvloop = __import__("uvloop")
        uv = uvloop.new_event_loop()
    except ImportError:
        uv = None
    with hl.UninitializedSandbox(SIMPLE).evolve() as sb, hl.SandboxPool(SIMPLE, size=2) as pool:
        for warm in (lambda: single_restoring(sb, 200), lambda: pool_one_thread(pool, 200),
                     lambda: pool_threads(pool, 200, 2), lambda: pool_acalls(pool, 200, 200, loop)):
            warm()
        ta, tb = ratio_rounds(args.rounds, lambda: pool_one_thread(pool, n), lambda: single_restoring(sb, n))
        report("pool.call (lend+call+restore) vs sb.call(restore=True)", ta, tb, n, False, "<= 1.2")
        ta, tb = ratio_rounds(args.rounds, lambda: pool_threads(pool, n, 2), lambda: pool_one_thread(pool, n))
        report("pool of 2: 2 threads vs 1 thread, throughput", ta, tb, n, True, ">= 1.7")
        with hl.UninitializedSandbox(SIMPLE).evolve() as sb2:
            ta, tb = ratio_rounds(args.rounds, lambda: sandboxes_threads([sb, sb2], n),
                                  lambda: single_restoring(sb, n))
        report("  (ceiling, no pool: 2 sandboxes on 2 threads vs 1 thread)", ta, tb, n, True, "-")
        ta, tb = ratio_rounds(args.rounds, lambda: pool_acalls(pool, n, 200, loop), lambda: pool_threads(pool, n, 2))
        report("pool of 2: 200 concurrent acalls (asyncio) vs 2 threads, throughput", ta, tb, n, True, ">= 0.9")
        if uv is not None:
            pool_acalls(pool, 200, 200, uv)
            ta, tb = ratio_rounds(args.rounds, lambda: pool_acalls(pool, n, 200, uv),
                                  lambda: pool_threads(pool, n, 2))
            report("pool of 2: 200 concurrent acalls (uvloop) vs 2 threads, throughput", ta, tb, n, True, ">= 0.9")
        print(f"pool stats: {pool.stats()}")
    for lp in (loop, uv):
        if lp is not None:
            lp.close()


if __name__ == "__main__":
    main()
