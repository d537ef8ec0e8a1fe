#!/usr/bin/env python3
"""1 MiB bytes arguments and results: numpy arrays against bytes, interleaved.

    python3 benchmarks/compare_buffers.py [--rounds 7] [--calls 200]

Per call of simpleguest's EchoBytes (the guest returns its argument):
  - argument a bytes object vs a numpy uint8 array vs a numpy float64 array (same
    1 MiB), result a new bytes object;
  - result decoded into a preallocated numpy array with call(out=...) vs a new bytes
    object (argument bytes in both);
  - for reference, the same with the pre-buffer path: a numpy array turned into bytes
    by the caller (arr.tobytes(), the copy the buffer path avoids).
Each round runs every variant back to back (rotating the order); the ratios quoted
are medians of per-round ratios against the bytes variant.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import hlsandbox as hl

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    config = hl.SandboxConfiguration(input_data_size="4Mi", output_data_size="4Mi")
    data = np.random.default_rng(0).integers(0, 256, MiB, dtype=np.uint8)
    as_bytes = data.tobytes()
    as_f64 = data.view(np.float64)
    out = np.empty(MiB, dtype=np.uint8)
    with hl.UninitializedSandbox(hl.guests.path("simpleguest"), config).evolve() as sb:
        variants = {
            "bytes -> bytes": lambda: sb.call("EchoBytes", as_bytes),
            "numpy u8 -> bytes": lambda: sb.call("EchoBytes", data),
            "numpy f64 -> bytes": lambda: sb.call("EchoBytes", as_f64),
            "numpy via tobytes() -> bytes": lambda: sb.call("EchoBytes", data.tobytes()),
            "bytes -> out= numpy": lambda: sb.call("EchoBytes", as_bytes, out=out),
        }
        assert sb.call("EchoBytes", data) == as_bytes
        assert sb.call("EchoBytes", as_bytes, out=out) == MiB and np.array_equal(out, data)
        names = list(variants)
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                fn = variants[k]
                t = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                times[k].append((time.perf_counter() - t) / args.calls)
    base = times["bytes -> bytes"]
    for k in names:
        ratio = statistics.median(t / b for t, b in zip(times[k], base, strict=True))
        print(f"{k:32s} {statistics.median(times[k]) * 1e6:8.1f} us/call  x{ratio:.2f} of bytes -> bytes")


if __name__ == "__main__":
    main()
