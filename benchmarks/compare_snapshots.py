#!/usr/bin/env python3
"""hlsandbox snapshot, restore and sandbox-creation costs side by side with their raw-KVM floor.

    python3 benchmarks/compare_snapshots.py [--rounds 16] [--scale 2.0] [--only GROUPS] [-v] [--json PATH]

The figures mirror Hyperlight's benchmarks (snapshot create/restore by sandbox size,
restore after N dirty pages, calls with restore, sandbox creation); what each one
times is in snapbench.py and the README. Their floors are floor/snapfloor.c (the same
work with bare KVM ioctls) and, for the call with restore, floor.c's exit_roundtrip.

As compare.py: rounds alternate which side runs first (ABBA), each side reports per
round median, p10 and p90 of every figure, and the table shows the median over rounds
of each, the median over rounds of the per-round ratio of medians (with its range) and
the ratio of the p10s (the quiet-machine ends; the more stable one when the machine is
noisy). Targets are reported, never asserted: the exit status is 0 unless something
fails (a KVM error, a wrong guest or restore result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor  # noqa: E402
import snapbench  # noqa: E402
from snapbench import HEAP_RATIO_ROW, HEAP_RATIO_TARGET, ROWS, Counts  # noqa: E402


def quantile(s: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as floor.c computes them."""
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return quantile(s, 0.5), quantile(s, 0.1), quantile(s, 0.9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=16, help="interleaved rounds (default 16)")
    ap.add_argument("--scale", type=float, default=2.0,
                    help="multiplies every figure's samples per round (default 2.0; see snapbench.Counts)")
    ap.add_argument("--no-bitmap", action="store_true", help="skip the KVM_GET_DIRTY_LOG comparison")
    ap.add_argument("--only", metavar="GROUPS",
                    help="comma-separated groups to measure (default all): " + ", ".join(snapbench.GROUP_KEYS))
    ap.add_argument("--json", metavar="PATH", help="also write all per-round figures as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="print progress and each round's time")
    args = ap.parse_args()
    if args.rounds < 1 or args.scale <= 0:
        ap.error("--rounds and --scale must be positive")
    groups = None
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        unknown = [k for k in keys if k not in snapbench.GROUP_KEYS]
        if unknown:
            ap.error(f"--only: unknown group(s) {', '.join(unknown)}; use {', '.join(snapbench.GROUP_KEYS)}")
        groups = {snapbench.GROUP_KEYS[k] for k in keys}

    reason = floor.available()
    if reason:
        print(f"compare_snapshots.py: cannot run: {reason}", file=sys.stderr)
        return 1
    floor_exe, snap_exe = floor.build(), floor.build_snap()
    counts = Counts().scaled(args.scale)
    started = time.monotonic()

    sbx = snapbench.Sandboxes(bitmap=not args.no_bitmap)
    try:
        # Warm up every figure (first calls pay page faults; restores re-baseline).
        snapbench.measure_hl(sbx, Counts().scaled(0.05), groups)
        resident = {name: sbx.resident(name) for name, _ in snapbench.SIZES}
        specs = snapbench.specs_of(snapbench.floor_specs(counts, resident, sbx.copied()), groups)
        if args.no_bitmap:
            specs = [s for s in specs if "log=bitmap" not in s]

        info: dict[str, str] = {}

        def run_floor() -> dict[str, tuple[float, float, float]]:
            snap_run = floor.run_snap(specs, exe=snap_exe)
            info.update(snap_run.info)
            res = dict(snap_run)
            if groups is None or "call with restore" in groups:
                res.update(floor.run(iterations=counts.call, sum_n=0, sum_reps=1, figures=["exit_roundtrip"],
                                     exe=floor_exe))
            return {k: (f.median_us, f.p10_us, f.p90_us) for k, f in res.items()}

        def run_hl() -> dict[str, tuple[float, float, float]]:
            return {k: summarize(v) for k, v in snapbench.measure_hl(sbx, counts, groups).items()}

        hl_rounds: list[dict] = []
        floor_rounds: list[dict] = []
        for r in range(args.rounds):
            t0 = time.monotonic()
            if r % 2 == 0:
                floor_rounds.append(run_floor())
                hl_rounds.append(run_hl())
            else:
                hl_rounds.append(run_hl())
                floor_rounds.append(run_floor())
            if args.verbose:
                h, f = hl_rounds[-1], floor_rounds[-1]
                shown = [(a, b) for a, b in (("GetStatic(restore=True)", "exit_roundtrip"),
                                             ("from_snapshot+call", "vm_create")) if a in h and b in f]
                print(f"round {r + 1}/{args.rounds} ({time.monotonic() - t0:.1f} s): "
                      + ", ".join(f"{a} {h[a][0]:.1f} / {b} {f[b][0]:.1f}" for a, b in shown)
                      + " (medians, us)", flush=True)
    finally:
        sbx.close()

    def med(rounds, fig, i):
        return statistics.median(rd[fig][i] for rd in rounds)

    rows = []
    for group, h, f, target, what in ROWS:
        if h not in hl_rounds[0] or f not in floor_rounds[0]:
            continue
        ratios = [hr[h][0] / fr[f][0] for hr, fr in zip(hl_rounds, floor_rounds, strict=True)]
        ratio = statistics.median(ratios)
        rows.append({
            "group": group, "figure": h, "floor_figure": f, "what": what,
            "hl_median_us": med(hl_rounds, h, 0), "hl_p10_us": med(hl_rounds, h, 1), "hl_p90_us": med(hl_rounds, h, 2),
            "floor_median_us": med(floor_rounds, f, 0), "floor_p10_us": med(floor_rounds, f, 1),
            "floor_p90_us": med(floor_rounds, f, 2),
            "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_p10": med(hl_rounds, h, 1) / med(floor_rounds, f, 1),
            "target": target, "met": None if target is None else ratio <= target,
        })
    # The heap-size row: hlsandbox 1 GiB / 1 MiB (per round), the floor's likewise.
    big, small = HEAP_RATIO_ROW
    heap_row = None
    if big in hl_rounds[0]:
        fbig, fsmall = (f"dirty10[{h}].restore" for h in reversed(snapbench.HEAPS_COMPARED))
        hl_ratios = [hr[big][0] / hr[small][0] for hr in hl_rounds]
        fl_ratios = [fr[fbig][0] / fr[fsmall][0] for fr in floor_rounds]
        heap_row = {
            "figure": f"{big} / {small}", "ratio": statistics.median(hl_ratios), "ratio_min": min(hl_ratios),
            "ratio_max": max(hl_ratios), "ratio_p10": med(hl_rounds, big, 1) / med(hl_rounds, small, 1),
            "floor_ratio": statistics.median(fl_ratios),
            "floor_ratio_p10": med(floor_rounds, fbig, 1) / med(floor_rounds, fsmall, 1),
            "target": HEAP_RATIO_TARGET, "met": statistics.median(hl_ratios) <= HEAP_RATIO_TARGET,
        }

    elapsed = time.monotonic() - started
    print(f"\nhlsandbox snapshots vs floor: {args.rounds} interleaved rounds in {elapsed:.0f} s"
          f"{'; KVM is kvm-pvm' if info.get('kvm_pvm') == '1' else ''}")
    copied = info.get("call_restore_plain.copied_bytes")
    if groups is None or groups & {"snapshot by size", "call with restore"}:
        print("snapshot() copies " + ", ".join(f"{n} {resident[n]} pages" for n, _ in snapbench.SIZES
                                               if resident.get(n))
              + f" (the floor the same); every restore copies {copied} bytes whole (the floor the same)")
    print("times in us: median over rounds of each round's median (p10 likewise); ratio = median over rounds of "
          "hlsandbox/floor medians [min-max over rounds]; ratio@p10 compares the quiet-machine ends\n")
    head = (f"{'hlsandbox figure':<28} {'median':>9} {'p10':>9}  {'floor figure':<28} {'median':>9} {'p10':>9}"
            f"  {'ratio':>19}  {'ratio@p10':>9}  target")
    group = None
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            print(f"\n-- {group} --")
            print(head)
        ratio = f"{row['ratio']:.2f}x [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"
        target = ("reported" if row["target"] is None
                  else f"<= {row['target']:.2f}x: {'met' if row['met'] else 'MISSED'}")
        print(f"{row['figure']:<28} {row['hl_median_us']:>9.2f} {row['hl_p10_us']:>9.2f}  {row['floor_figure']:<28}"
              f" {row['floor_median_us']:>9.2f} {row['floor_p10_us']:>9.2f}  {ratio:>19}  {row['ratio_p10']:>8.2f}x"
              f"  {target}")
    if heap_row is not None:
        print(f"\n-- heap size independence: restore after 10 dirty pages, {snapbench.HEAPS_COMPARED[1]} vs "
              f"{snapbench.HEAPS_COMPARED[0]} heap --")
        print(f"hlsandbox {heap_row['figure']}: {heap_row['ratio']:.2f}x [{heap_row['ratio_min']:.2f}-"
              f"{heap_row['ratio_max']:.2f}], @p10 {heap_row['ratio_p10']:.2f}x; floor "
              f"{heap_row['floor_ratio']:.2f}x, @p10 {heap_row['floor_ratio_p10']:.2f}x; target <= "
              f"{HEAP_RATIO_TARGET:.2f}x: {'met' if heap_row['met'] else 'MISSED'}")
    if "evolve+call" in hl_rounds[0]:
        speedup = [hr["evolve+call"][0] / hr["from_snapshot+call"][0] for hr in hl_rounds]
        print("\n-- cold evolve() against from_snapshot(), each with its first call --")
        print(f"evolve+call / from_snapshot+call: {statistics.median(speedup):.2f}x [{min(speedup):.2f}-"
              f"{max(speedup):.2f}] (median {med(hl_rounds, 'evolve+call', 0):.0f} us against "
              f"{med(hl_rounds, 'from_snapshot+call', 0):.0f} us)")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "counts": vars(counts), "floor_specs": specs, "info": info,
                       "summary": rows, "heap_ratio": heap_row,
                       "rounds": {"hlsandbox": hl_rounds, "floor": floor_rounds}}, fh, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
