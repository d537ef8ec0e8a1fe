#!/usr/bin/env python3
"""hlsandbox.ray on this machine, interleaved round by round (issue 12's Measure):

    python3 benchmarks/compare_ray.py [--rounds 5] [--calls 400]

1. per-call overhead: RayPool(actors=1).call() one after another (a round trip through
   Ray each: the driver submits an actor task, the actor runs SandboxPool.call, the
   result comes back) against SandboxPool(size=1).call() in this process;
2. throughput: RayPool.map() of `calls` calls with 1 actor and with 2 actors (one
   sandbox each), one Ray task per call and in chunks of 50 calls per task, against a
   local SandboxPool of 2 driven by 2 threads.

Every call is "Echo" of a short string on simpleguest (one exit, restore after each).
Ray runs as one local node (ray.init with 2 CPUs, loopback only); the actors are
separate processes, as on a cluster. Each round runs every side back to back in a
rotating order; the figures quoted are medians over the rounds. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1, not the outward address

import ray  # noqa: E402

import hlsandbox as hl  # noqa: E402
from hlsandbox.ray import RayPool  # noqa: E402

ARG = "x"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def local_serial(pool: hl.SandboxPool, n: int) -> None:
    for _ in range(n):
        pool.call("Echo", ARG)


def local_threads(pool: hl.SandboxPool, n: int) -> None:
    ts = [threading.Thread(target=local_serial, args=(pool, n // 2)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def ray_serial(pool: RayPool, n: int) -> None:
    for _ in range(n):
        pool.call("Echo", ARG)


def ray_map(pool: RayPool, n: int, chunksize: int = 1) -> None:
    for r in pool.map("Echo", [ARG] * n, chunksize=chunksize):
        assert r == ARG


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=400, help="calls per side per round")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(hl.__file__)))
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")  # the actors' hlsandbox
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    guest = hl.guests.path("simpleguest")
    try:
        with hl.SandboxPool(guest, size=1) as local1, hl.SandboxPool(guest, size=2) as local2, \
                RayPool(guest, actors=1, actor_options={"num_cpus": 0.5}) as ray1, \
                RayPool(guest, actors=2, actor_options={"num_cpus": 0.5}) as ray2:
            sides = {
                "local pool.call, serial": lambda: local_serial(local1, a.calls),
                "RayPool(1).call, serial": lambda: ray_serial(ray1, a.calls),
                "local pool of 2, 2 threads": lambda: local_threads(local2, a.calls),
                "RayPool(1 actor).map": lambda: ray_map(ray1, a.calls),
                "RayPool(2 actors).map": lambda: ray_map(ray2, a.calls),
                "RayPool(1 actor).map chunks 50": lambda: ray_map(ray1, a.calls, 50),
                "RayPool(2 actors).map chunks 50": lambda: ray_map(ray2, a.calls, 50),
            }
            for fn in sides.values():  # warm up: workers started, pages touched
                fn()
            times: dict[str, list[float]] = {k: [] for k in sides}
            names = list(sides)
            for r in range(a.rounds):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    times[k].append(timed(sides[k]))
    finally:
        ray.shutdown()
    print(f"{a.rounds} rounds of {a.calls} Echo calls per side, medians; {os.cpu_count()} CPUs\n")
    print(f"{'side':32} {'us/call':>10} {'calls/s':>10}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, t in med.items():
        print(f"{k:32} {t / a.calls * 1e6:10.1f} {a.calls / t:10.0f}")
    over = (med["RayPool(1).call, serial"] - med["local pool.call, serial"]) / a.calls
    print(f"\nper-call overhead of Ray (serial call, 1 actor) over a local pool: {over * 1e6:.0f} us "
          f"({med['RayPool(1).call, serial'] / med['local pool.call, serial']:.1f}x the time)")
    print(f"throughput 2 actors / 1 actor: {med['RayPool(1 actor).map'] / med['RayPool(2 actors).map']:.2f}x")
    print(f"throughput 2 actors / local pool of 2 (2 threads): "
          f"{med['local pool of 2, 2 threads'] / med['RayPool(2 actors).map']:.2f}x")
    print(f"chunks of 50: 2 actors / 1 actor: "
          f"{med['RayPool(1 actor).map chunks 50'] / med['RayPool(2 actors).map chunks 50']:.2f}x, "
          f"2 actors / local pool of 2: "
          f"{med['local pool of 2, 2 threads'] / med['RayPool(2 actors).map chunks 50']:.2f}x")


if __name__ == "__main__":
    main()
