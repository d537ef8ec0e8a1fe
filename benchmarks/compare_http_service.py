#!/usr/bin/env python3
"""examples/http_service under load, pool mode against subprocess-per-request mode:

    python3 benchmarks/compare_http_service.py [--rounds 3] [--requests 600] [--concurrency 16]

Both services run as their own server processes (uvicorn, 127.0.0.1, any free port):
"pool" runs each request on a SandboxPool of 2 (restore after every request),
"subprocess" starts a Python process per request that loads the same snapshot file
and makes the call. An httpx.AsyncClient keeps `concurrency` requests in flight
(POST /call/Add {"args": [i, 1]}, every answer checked); `requests` per round for the
pool, a tenth of it for the subprocess service (bounded: it is ~100x slower). Rounds
alternate which service goes first; requests/s is the median over rounds, p50/p99
latency over every request of every round. Loopback only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

import hlsandbox as hl

SERVICE = Path(__file__).resolve().parent.parent / "examples" / "http_service" / "service.py"


def start(mode: str) -> tuple[subprocess.Popen, str]:
    root = str(Path(hl.__file__).resolve().parent.parent)  # the server runs this hlsandbox
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH")] if p))
    proc = subprocess.Popen([sys.executable, str(SERVICE), "--port", "0", "--mode", mode, "--size", "2"],
                            stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"the {mode} service did not start: {line!r}")
    base = f"http://127.0.0.1:{int(line.split()[1])}"
    deadline = time.monotonic() + 30
    while True:  # uvicorn listens once the lifespan (the pool) is ready
        try:
            httpx.get(f"{base}/functions", timeout=5).raise_for_status()
            return proc, base
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"the {mode} service did not answer") from None
            time.sleep(0.1)


async def load(base: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """Wall time of n requests with `concurrency` in flight, and each one's latency."""
    latencies: list[float] = []
    todo = iter(range(n))
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            for i in todo:
                t = time.perf_counter()
                r = await client.post("/call/Add", json={"args": [i, 1]})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or r.json() != {"result": i + 1}:
                    raise RuntimeError(f"bad answer to request {i}: {r.status_code} {r.text}")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    counts = {"pool": a.requests, "subprocess": max(a.concurrency, a.requests // 10)}
    servers = {m: start(m) for m in counts}
    rps: dict[str, list[float]] = {m: [] for m in counts}
    lat: dict[str, list[float]] = {m: [] for m in counts}
    try:
        for _, base in servers.values():  # warm up
            asyncio.run(load(base, a.concurrency, a.concurrency))
        for r in range(a.rounds):
            for m in (list(counts) if r % 2 == 0 else list(counts)[::-1]):
                wall, ls = asyncio.run(load(servers[m][1], counts[m], a.concurrency))
                rps[m].append(counts[m] / wall)
                lat[m].extend(ls)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{a.rounds} rounds, {a.concurrency} requests in flight, POST /call/Add; {os.cpu_count()} CPUs\n")
    print(f"{'service':12} {'requests':>9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for m in counts:
        print(f"{m:12} {counts[m] * a.rounds:9d} {statistics.median(rps[m]):9.1f} "
              f"{pct(lat[m], 0.5) * 1e3:9.2f} {pct(lat[m], 0.99) * 1e3:9.2f}")
    print(f"\npool / subprocess: {statistics.median(rps['pool']) / statistics.median(rps['subprocess']):.0f}x "
          f"the requests/s, p99 {pct(lat['subprocess'], 0.99) / pct(lat['pool'], 0.99):.0f}x lower")


if __name__ == "__main__":
    main()
