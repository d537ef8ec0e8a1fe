#!/usr/bin/env python3
"""hlsandbox beside its floors and its peers, in one interleaved run: a Markdown table and
one chart.

    python3 benchmarks/report.py [--rounds 5] [--calls 2000] [--out benchmarks/results]

Figures (medians, microseconds; each hlsandbox figure beside the raw-KVM floor of the same
work where one exists, see floor/):

- calls: `call("Echo", "hi")` cold (one VM exit) and hot (`sb.hot()`: a mailbox, no exit);
- host calls: `call("CallHostAdd", 1, 2)` (guest -> Python -> guest) cold and hot;
- restores: `call("SetStatic", 1, restore=True)` (a call, then back to the init snapshot);
- creation: `MultiUseSandbox.from_snapshot(snap)` (a new VM from a snapshot);
- pooled calls: `pool.call("Echo", "hi")` on a SandboxPool of one, calls 200 µs apart
  (the caller sleeps between them, as a server between requests), cold and hot
  (`SandboxPool(hot=1)`: the restore runs on the pool's thread after the call);
- peers, where installed: a trivial exported function called through wasmtime-py, a Lua
  function through lupa, and a subprocess per call (`/bin/echo hi`);
- the CPU an idle hot sandbox uses after its spin period (its vCPU thread and the process).

Every round runs every figure once, in an order that rotates from round to round, so
slow drift of a shared machine does not favour any; a figure is the median over rounds of
the round's median, and a ratio the median over rounds of the per-round ratio. Writes
report.md and report.png (matplotlib, log scale) into --out, stamped with the date, the CPU
and the KVM kind. matplotlib and wasmtime come with `pip install '.[benchmark]'`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if any((HERE.parent / "hlsandbox" / "sandbox").glob("call_path*.so")):
    sys.path.insert(0, str(HERE.parent))  # a checkout built in place measures itself

import floor  # noqa: E402

import hlsandbox as hl  # noqa: E402


def median_of_batch(fn: Callable[[], object], n: int, expected: object = None) -> float:
    """Times n calls of fn one by one; returns the median in microseconds. Every result
    is checked, outside the timed window, so a broken call cannot look fast."""
    out = [0.0] * n
    pc = time.perf_counter_ns
    for i in range(n):
        t = pc()
        r = fn()
        out[i] = (pc() - t) / 1000
        if expected is not None and r != expected:
            raise RuntimeError(f"wrong result {r!r}, expected {expected!r}")
    return statistics.median(out)


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if os.path.exists("/sys/module/kvm_pvm"):
        kind = "kvm-pvm (paravirtual, nested)"
    elif os.path.exists("/sys/module/kvm_intel"):
        kind = "kvm-intel (VT-x)"
    elif os.path.exists("/sys/module/kvm_amd"):
        kind = "kvm-amd (AMD-V)"
    else:
        kind = "unknown KVM"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "kvm": kind, "cores": str(os.cpu_count())}


# -- peers --------------------------------------------------------------------------------------

def wasmtime_call() -> Callable[[], object] | None:
    try:
        import wasmtime
    except ImportError:
        return None
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, '(module (func (export "f") (param i32) (result i32) local.get 0))')
    f = wasmtime.Instance(store, module, []).exports(store)["f"]
    return lambda: f(store, 7)


def lupa_call() -> Callable[[], object] | None:
    try:
        from lupa import LuaRuntime
    except ImportError:
        return None
    f = LuaRuntime().eval("function(s) return s end")
    return lambda: f("hi")


def subprocess_call() -> Callable[[], object] | None:
    if not os.path.exists("/bin/echo"):
        return None
    return lambda: subprocess.run(["/bin/echo", "hi"], capture_output=True, check=True).stdout.decode().strip()


# -- idle CPU -----------------------------------------------------------------------------------

def _thread_cpu(tid: str) -> float:
    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_hot_cpu(sb: hl.MultiUseSandbox, spin: float = 0.01, idle: float = 1.0) -> tuple[float, float]:
    """CPU seconds a hot sandbox's vCPU thread and the whole process use over `idle`
    seconds, starting after the spin period."""
    before = set(os.listdir("/proc/self/task"))
    with sb.hot(spin=spin):
        sb.call("Echo", "hi")
        (tid,) = set(os.listdir("/proc/self/task")) - before
        time.sleep(spin * 5)
        t0, p0 = _thread_cpu(tid), time.process_time()
        time.sleep(idle)
        return _thread_cpu(tid) - t0, time.process_time() - p0


# -- the run -------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000, help="calls per round for each call figure")
    ap.add_argument("--creations", type=int, default=100, help="sandboxes created per round")
    ap.add_argument("--spawns", type=int, default=30, help="subprocesses per round")
    ap.add_argument("--spin", type=float, default=0.05, help="hot mode spin period, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    n = args.calls

    stamp = machine()
    reason = floor.available()
    floor_exe = snap_exe = None
    if reason is None:
        floor_exe, snap_exe = floor.build(), floor.build_snap()
    else:
        print(f"report.py: no floors: {reason}", file=sys.stderr)

    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    snap = sb.snapshot()
    host_functions = {"HostAdd": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32)}
    peers = {"wasmtime-py f(i32)": wasmtime_call(), "lupa f(s)": lupa_call(),
             "subprocess /bin/echo": subprocess_call()}
    peers = {k: v for k, v in peers.items() if v is not None}

    def hot_batch(fn, expected) -> float:
        with sb.hot(spin=args.spin):
            median_of_batch(fn, 50, expected)  # the first call wakes the vCPU thread
            return median_of_batch(fn, n, expected)

    def creation() -> float:
        times = []
        for _ in range(args.creations):
            t = time.perf_counter_ns()
            s2 = hl.MultiUseSandbox.from_snapshot(snap, host_functions=host_functions)
            times.append((time.perf_counter_ns() - t) / 1000)
            s2.close()
        return statistics.median(times)

    gap = 0.0002
    pools = {kind: hl.SandboxPool(snap, size=1, host_functions=host_functions, hot=int(kind == "hot"),
                                  spin=args.spin) for kind in ("cold", "hot")}

    def pooled(kind: str) -> float:
        pool = pools[kind]
        times = []
        for _ in range(max(n // 4, 200)):
            t = time.perf_counter_ns()
            pool.call("Echo", "hi")
            times.append((time.perf_counter_ns() - t) / 1000)
            time.sleep(gap)
        return statistics.median(times)

    def floors() -> dict[str, float]:
        if floor_exe is None:
            return {}
        f = floor.run(iterations=n, sum_n=0, sum_reps=1, figures=["exit_roundtrip", "host_call_roundtrip"],
                      exe=floor_exe)
        s = floor.run_snap(["call_restore", "vm_create"], iterations=max(50, args.creations), exe=snap_exe)
        return {"floor exit round trip": f["exit_roundtrip"].median_us,
                "floor host call round trip": f["host_call_roundtrip"].median_us,
                "floor call + restore": s["call_restore"].median_us,
                "floor VM creation": s["vm_create"].median_us}

    echo = lambda: sb.call("Echo", "hi")  # noqa: E731
    add = lambda: sb.call("CallHostAdd", 1, 2)  # noqa: E731
    figures: dict[str, Callable[[], object]] = {
        "call Echo cold": lambda: median_of_batch(echo, n, "hi"),
        "call Echo hot": lambda: hot_batch(echo, "hi"),
        "host call cold": lambda: median_of_batch(add, n, 3),
        "host call hot": lambda: hot_batch(add, 3),
        "call + restore": lambda: median_of_batch(lambda: sb.call("SetStatic", 1, restore=True), max(n // 4, 50), 1),
        "creation from snapshot": creation,
        "pool call 200 µs apart, cold": lambda: pooled("cold"),
        "pool call 200 µs apart, hot": lambda: pooled("hot"),
        "floors": floors,
    }
    for name, fn in peers.items():
        calls = args.spawns if name.startswith("subprocess") else n
        figures[name] = (lambda fn=fn, calls=calls: median_of_batch(fn, calls))

    # Warm up once: first calls pay page faults.
    for fn in (echo, add):
        median_of_batch(fn, 100)
    rounds: list[dict[str, float]] = []
    names = list(figures)
    for r in range(args.rounds):
        got: dict[str, float] = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            v = figures[name]()
            if isinstance(v, dict):
                got.update(v)
            else:
                got[name] = v
        rounds.append(got)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), file=sys.stderr)
    for pool in pools.values():
        pool.close()
    thread_cpu, process_cpu = idle_hot_cpu(sb)
    sb.close()
    snap.close()

    def med(key: str) -> float | None:
        vals = [rd[key] for rd in rounds if key in rd]
        return statistics.median(vals) if vals else None

    def ratio(a: str, b: str) -> float | None:
        vals = [rd[a] / rd[b] for rd in rounds if a in rd and b in rd]
        return statistics.median(vals) if vals else None

    wasm = "wasmtime-py f(i32)"
    rows = [  # (figure, its floor, peers to compare with)
        ("call Echo hot", None),
        ("call Echo cold", "floor exit round trip"),
        ("host call hot", None),
        ("host call cold", "floor host call round trip"),
        ("call + restore", "floor call + restore"),
        ("creation from snapshot", "floor VM creation"),
        ("pool call 200 µs apart, hot", None),
        ("pool call 200 µs apart, cold", "floor call + restore"),
    ] + [(p, None) for p in peers]
    ratios = [
        ("cold / hot, Echo on one sandbox", ratio("call Echo cold", "call Echo hot")),
        ("wasmtime-py / hot Echo", ratio(wasm, "call Echo hot")),
        ("cold / hot, guest -> host -> guest", ratio("host call cold", "host call hot")),
        ("cold Echo / its floor", ratio("call Echo cold", "floor exit round trip")),
        ("host call / its floor", ratio("host call cold", "floor host call round trip")),
        ("call + restore / its floor", ratio("call + restore", "floor call + restore")),
        ("creation / its floor", ratio("creation from snapshot", "floor VM creation")),
        ("cold / hot pooled call, 200 µs apart", ratio("pool call 200 µs apart, cold", "pool call 200 µs apart, hot")),
    ]

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# hlsandbox benchmark report",
             "",
             f"{stamp['date']} · {stamp['cpu']} ({stamp['cores']} cores) · {stamp['kvm']} · "
             f"{args.rounds} interleaved rounds, {n} calls a round",
             "",
             "| figure | hlsandbox median (µs) | floor | floor median (µs) |",
             "| --- | ---: | --- | ---: |"]
    for fig, fl in rows:
        v, fv = med(fig), (med(fl) if fl else None)
        lines.append(f"| {fig} | {v:.2f} | {fl or ''} | {'' if fv is None else f'{fv:.2f}'} |")
    lines += ["", "| ratio (median over rounds of the per-round ratio) | |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.1f}× |" for k, v in ratios if v is not None]
    lines += ["", f"An idle hot sandbox after its spin period ({0.01} s), over 1 s: vCPU thread "
              f"{thread_cpu * 1000:.0f} ms of CPU, whole process {process_cpu * 1000:.0f} ms.", ""]
    md = "\n".join(lines)
    (args.out / "report.md").write_text(md)
    print(md)
    chart(rows, med, stamp, args.out / "report.png")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.png'}", file=sys.stderr)
    return 0


def chart(rows, med, stamp, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib is not installed: no chart (pip install '.[benchmark]')", file=sys.stderr)
        return
    labels, values, colors = [], [], []
    for fig, fl in rows:
        peer = fl is None and not fig.startswith(("call", "host", "pool"))
        labels.append(fig)
        values.append(med(fig))
        colors.append("#888888" if peer else "#d62728" if fig.endswith((" hot", ", hot")) else "#1f77b4")
        if fl is not None and med(fl) is not None:
            labels.append(f"  {fl}")
            values.append(med(fl))
            colors.append("#2ca02c")
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(labels) + 1.4))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels)
    ax.set_xscale("log")
    ax.set_xlabel("median, µs (log scale)")
    for yi, v in zip(y, values, strict=True):
        ax.text(v * 1.08, yi, f"{v:.2f}" if v < 100 else f"{v:.0f}", va="center", fontsize=8)
    ax.set_xlim(right=max(values) * 4)
    ax.set_title(f"hlsandbox (blue cold, red hot), raw-KVM floors (green), peers (grey)\n"
                 f"{stamp['date']} · {stamp['cpu']} · {stamp['kvm']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
