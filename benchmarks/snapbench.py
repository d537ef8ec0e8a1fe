"""What the snapshot benchmarks measure, shared by test_bench_snapshots.py (pytest)
and compare_snapshots.py (interleaved with the floor): the sandboxes, the timed
operations, the floor specs (floor/snapfloor.c) and which figure compares with which.

Every hlsandbox figure is a list of per-operation times in microseconds, each
operation timed on its own with time.perf_counter_ns and the GC off. The untimed
part of a sample (the call that dirties pages before a timed restore, closing a
snapshot after a timed snapshot()) runs right before or after it, outside the
window. Every result is checked (outside the window too).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Hyperlight's sandbox sizes (its benches: default, small, medium, large heaps).
SIZES = (("default", "1Mi"), ("small", "8Mi"), ("medium", "64Mi"), ("large", "256Mi"))
DIRTY_HEAP = "16Mi"  # the dirty-page series: 1000 pages need more than the default 1 MiB
DIRTY_COUNTS = (1, 10, 100, 1000)
HEAPS_COMPARED = ("1Mi", "1Gi")  # restore after 10 dirty pages: should not depend on the heap size
HEAP_RATIO_TARGET = 1.2
ADDR_OFFSET = 64 * 1024  # WritePages starts this far into the heap: clear of the allocator's metadata
FIRST_CALL = ("GetStatic",)  # the first call after evolve() / from_snapshot()

_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def size_bytes(s: str) -> int:
    return int(s[:-2]) * _UNITS[s[-2:]]


def floor_size(s: str) -> str:
    """'16Mi' -> '16M' (snapfloor's suffixes)."""
    return s[:-1]


# ---- sandboxes -------------------------------------------------------------------------------

HOST_FUNCTIONS = None  # filled lazily: {"HostAdd": (fn, params, returns)}


def host_functions() -> dict:
    global HOST_FUNCTIONS
    if HOST_FUNCTIONS is None:
        import hlsandbox as hl
        HOST_FUNCTIONS = {"HostAdd": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32)}
    return HOST_FUNCTIONS


def uninitialized(heap: str = "1Mi"):
    import hlsandbox as hl
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(heap_size=heap))
    for name, spec in host_functions().items():
        u.register(name, *spec)
    return u


def new_sandbox(heap: str = "1Mi", bitmap: bool = False):
    """A simpleguest sandbox with `heap`; bitmap=True makes its VM find dirty pages with
    KVM_GET_DIRTY_LOG instead of the dirty ring (HLSANDBOX_DIRTY_BITMAP=1 during evolve)."""
    u = uninitialized(heap)
    if not bitmap:
        return u.evolve()
    old = os.environ.get("HLSANDBOX_DIRTY_BITMAP")
    os.environ["HLSANDBOX_DIRTY_BITMAP"] = "1"
    try:
        return u.evolve()
    finally:
        if old is None:
            del os.environ["HLSANDBOX_DIRTY_BITMAP"]
        else:
            os.environ["HLSANDBOX_DIRTY_BITMAP"] = old


def resident_pages(sb) -> int | None:
    """Pages of the sandbox's guest memory that hold data (what a snapshot copies), or
    None if this hlsandbox does not expose it (the floor then uses its own count)."""
    try:
        return sum(sb._memory.resident_pages())
    except Exception:
        return None


def copy_bytes(sb) -> int | None:
    """Bytes every restore of the sandbox copies whole (globals, I/O buffers, stack top),
    or None if this hlsandbox does not expose it (the floor then copies 56 KiB)."""
    try:
        n = sum(sb._restore_ranges[1::2])
    except Exception:
        return None
    return n if n % 4096 == 0 and 40 << 10 <= n <= 296 << 10 else None


def heap_addr(sb) -> int:
    return sb.layout.heap_gpa + ADDR_OFFSET


# ---- timing ----------------------------------------------------------------------------------

def timed(op: Callable[[], Any], n: int, before: Callable[[], Any] | None = None,
          after: Callable[[Any], Any] | None = None) -> list[float]:
    """n samples (us) of op(); before() runs untimed ahead of each, after(result) untimed
    behind it (checks, cleanup)."""
    out = [0.0] * n
    clock = time.perf_counter_ns
    was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            if before is not None:
                before()
            t0 = clock()
            r = op()
            t1 = clock()
            if after is not None:
                after(r)
            out[i] = (t1 - t0) / 1e3
    finally:
        if was:
            gc.enable()
    return out


def expect(value):
    def check(r):
        if r != value:
            raise AssertionError(f"got {r!r}, expected {value!r}")
    return check


# ---- the hlsandbox side ----------------------------------------------------------------------

class Sandboxes:
    """Every sandbox the figures use, created once (creation is not what they time).

    - by_size[name]: one per Hyperlight size, for snapshot() and restore(snapshot). Its
      restore snapshot is taken once; snapshot() makes each new snapshot the baseline,
      so the restore series starts with one untimed restore that re-baselines.
    - dirty: 16 MiB heap; restores go back to its initialisation snapshot (restore()).
    - bitmap: the same with KVM_GET_DIRTY_LOG instead of the dirty ring.
    - heaps[h]: 1 MiB and 1 GiB heaps, restore after 10 dirty pages; the 1 MiB one
      also runs the call(..., restore=True) figures.
    - source: a snapshot of a fresh default sandbox, for from_snapshot().
    """

    def __init__(self, bitmap: bool = True) -> None:
        self.all = []
        try:
            self.by_size = {name: self._add(new_sandbox(heap)) for name, heap in SIZES}
            self.size_snap = {}
            for name, sb in self.by_size.items():
                sb.call("Echo", "hi")
                self.size_snap[name] = sb.snapshot()
            self.dirty = self._add(new_sandbox(DIRTY_HEAP))
            self.bitmap = self._add(new_sandbox(DIRTY_HEAP, bitmap=True)) if bitmap else None
            self.heaps = {h: self._add(new_sandbox(h)) for h in HEAPS_COMPARED}
            self._src_sb = self._add(new_sandbox("1Mi"))
            self.source = self._src_sb.snapshot()
        except BaseException:
            self.close()
            raise

    def _add(self, sb):
        self.all.append(sb)
        return sb

    def resident(self, name: str) -> int | None:
        return resident_pages(self.by_size[name])

    def copied(self) -> int | None:
        return copy_bytes(self.heaps["1Mi"])

    def close(self) -> None:
        for sb in self.all:
            sb.close()
        self.all.clear()

    # Each method returns n samples in microseconds.

    def snapshot(self, name: str, n: int) -> list[float]:
        """snapshot() of a sandbox that has just made a call (the call is untimed); the
        snapshot is closed after, untimed."""
        sb = self.by_size[name]
        return timed(sb.snapshot, n, before=lambda: sb.call("Echo", "hi"), after=lambda s: s.close())

    def restore_by_size(self, name: str, n: int) -> list[float]:
        """restore(snapshot) after one (untimed) Echo call: the restore of a call that
        wrote no heap page."""
        sb, snap = self.by_size[name], self.size_snap[name]
        sb.restore(snap)  # re-baseline (snapshot() made another snapshot the baseline)
        return timed(lambda: sb.restore(snap), n, before=lambda: sb.call("Echo", "hi"))

    def restore_dirty(self, count: int, n: int, bitmap: bool = False) -> list[float]:
        """restore() after an (untimed) call that wrote one word in each of `count` heap pages."""
        sb = self.bitmap if bitmap else self.dirty
        addr = heap_addr(sb)
        check = expect(count)
        return timed(sb.restore, n, before=lambda: check(sb.call("WritePages", addr, count)))

    def call_restore_dirty(self, count: int, n: int) -> list[float]:
        """call("WritePages", addr, count, restore=True): the call and its restore, timed together."""
        sb = self.dirty
        addr = heap_addr(sb)
        return timed(lambda: sb.call("WritePages", addr, count, restore=True), n, after=expect(count))

    def restore_dirty_heap(self, heap: str, n: int, count: int = 10) -> list[float]:
        sb = self.heaps[heap]
        addr = heap_addr(sb)
        check = expect(count)
        return timed(sb.restore, n, before=lambda: check(sb.call("WritePages", addr, count)))

    def call_restore_static(self, n: int) -> list[float]:
        """call("GetStatic", restore=True): writes only stack, buffers and globals."""
        sb = self.heaps["1Mi"]
        return timed(lambda: sb.call("GetStatic", restore=True), n, after=expect(0))

    def call_restore_pages(self, n: int, count: int = 10) -> list[float]:
        sb = self.heaps["1Mi"]
        addr = heap_addr(sb)
        return timed(lambda: sb.call("WritePages", addr, count, restore=True), n, after=expect(count))

    def creation(self, n: int, cold: bool) -> dict[str, list[float]]:
        """n sandboxes created one after the other: cold (UninitializedSandbox(...).evolve(),
        which loads the ELF and runs the guest's initialisation) or from the source snapshot
        (MultiUseSandbox.from_snapshot). Per sandbox: the creation, the creation plus the
        first call, and close()."""
        import hlsandbox as hl
        clock = time.perf_counter_ns
        create, with_call, close = [], [], []
        src = self.source
        hf = host_functions()
        was = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for _ in range(n):
                t0 = clock()
                if cold:
                    sb = uninitialized("1Mi").evolve()
                else:
                    sb = hl.MultiUseSandbox.from_snapshot(src, host_functions=hf)
                t1 = clock()
                r = sb.call(*FIRST_CALL)
                t2 = clock()
                sb.close()
                t3 = clock()
                if r != 0:
                    raise AssertionError(f"first call returned {r!r}")
                create.append((t1 - t0) / 1e3)
                with_call.append((t2 - t0) / 1e3)
                close.append((t3 - t2) / 1e3)
        finally:
            if was:
                gc.enable()
        return {"create": create, "create+call": with_call, "close": close}


# ---- the floor side (floor/snapfloor.c specs) -------------------------------------------------

def floor_specs(counts: Counts, resident: dict[str, int | None], copied: int | None = None) -> list[str]:
    """The snapfloor specs matching the figures; labels are the floor figure names
    used in ROWS (call_restore prints LABEL, LABEL.run, LABEL.restore). `resident`:
    pages per size that snapshot_create copies; `copied`: bytes each restore copies
    whole (see copy_bytes())."""
    specs = []
    cb = f":copy_bytes={copied}" if copied else ""
    for name, heap in SIZES:
        r = resident.get(name)
        specs.append(f"snapshot_create:heap={floor_size(heap)}:iters={counts.snapshot}:label=snapshot_create[{name}]"
                     + (f":resident={r}" if r else ""))
        specs.append(f"call_restore:heap={floor_size(heap)}:iters={counts.restore}{cb}:label=call_restore[{name}]")
    for c in DIRTY_COUNTS:
        specs.append(f"call_restore:heap={floor_size(DIRTY_HEAP)}:n={c}:iters={counts.dirty(c)}{cb}:label=dirty[{c}]")
    specs.append(f"call_restore:heap={floor_size(DIRTY_HEAP)}:n=10:log=bitmap:iters={counts.dirty(10)}{cb}"
                 f":label=dirty_bitmap[10]")
    for h in HEAPS_COMPARED:
        specs.append(f"call_restore:heap={floor_size(h)}:n=10:iters={counts.heap}{cb}:label=dirty10[{h}]")
    specs.append(f"call_restore:log=none:iters={counts.call}{cb}:label=call_restore_plain")
    specs.append(f"vm_create:iters={counts.from_snapshot}:label=vm_create")
    specs.append(f"vm_create:slots=3:ring=1:state=1:iters={counts.from_snapshot}:label=vm_create_hl")
    specs.append(f"vm_create:cpuid=0:iters={counts.from_snapshot}:label=vm_create_nocpuid")
    specs.append(f"vm_create:slots=3:ring=1:state=1:par=1:cpuid=0:iters={counts.from_snapshot}:label=vm_create_hl_par")
    return specs


@dataclass
class Counts:
    """Samples per figure (per round in compare_snapshots.py, per test in pytest)."""
    snapshot: int = 20
    restore: int = 200
    dirty_small: int = 200  # 1 and 10 pages
    dirty_100: int = 100
    dirty_1000: int = 15
    heap: int = 300
    call: int = 1000
    evolve: int = 4
    from_snapshot: int = 20

    def dirty(self, count: int) -> int:
        return self.dirty_small if count <= 10 else self.dirty_100 if count <= 100 else self.dirty_1000

    def scaled(self, f: float) -> Counts:
        return Counts(**{k: max(1, round(v * f)) for k, v in vars(self).items()})


# The figure groups (as in ROWS); each group's floor figures start with these labels.
GROUPS = {
    "snapshot by size": ("snapshot_create[", "call_restore["),
    f"dirty pages ({DIRTY_HEAP} heap)": ("dirty[", "dirty_bitmap["),
    "heap size": ("dirty10[",),
    "call with restore": ("call_restore_plain",),
    "sandbox creation": ("vm_create",),
}
GROUP_KEYS = {"snapshot": "snapshot by size", "dirty": f"dirty pages ({DIRTY_HEAP} heap)", "heap": "heap size",
              "call": "call with restore", "creation": "sandbox creation"}


def spec_label(spec: str) -> str:
    return spec.rsplit(":label=", 1)[1].split(":")[0]


def specs_of(specs: list[str], groups: set[str] | None) -> list[str]:
    """The floor specs of `groups` (all if None)."""
    if groups is None:
        return specs
    prefixes = tuple(p for g in groups for p in GROUPS[g])
    return [s for s in specs if spec_label(s).startswith(prefixes)]


def measure_hl(sbx: Sandboxes, counts: Counts, groups: set[str] | None = None) -> dict[str, list[float]]:
    """Every hlsandbox figure of `groups` (all if None) once: {figure: samples_us}. Names as in ROWS."""
    out: dict[str, list[float]] = {}
    every = groups is None
    if every or "snapshot by size" in groups:
        for name, _ in SIZES:
            out[f"snapshot[{name}]"] = sbx.snapshot(name, counts.snapshot)
            out[f"restore[{name}]"] = sbx.restore_by_size(name, counts.restore)
    if every or GROUP_KEYS["dirty"] in groups:
        for c in DIRTY_COUNTS:
            out[f"restore_dirty[{c}]"] = sbx.restore_dirty(c, counts.dirty(c))
            out[f"call_restore_dirty[{c}]"] = sbx.call_restore_dirty(c, counts.dirty(c))
        if sbx.bitmap is not None:
            out["restore_dirty_bitmap[10]"] = sbx.restore_dirty(10, counts.dirty(10), bitmap=True)
    if every or "heap size" in groups:
        for h in HEAPS_COMPARED:
            out[f"restore_dirty10[{h}]"] = sbx.restore_dirty_heap(h, counts.heap)
    if every or "call with restore" in groups:
        out["GetStatic(restore=True)"] = sbx.call_restore_static(counts.call)
        out["WritePages10(restore=True)"] = sbx.call_restore_pages(counts.call // 2)
    if every or "sandbox creation" in groups:
        cold = sbx.creation(counts.evolve, cold=True)
        warm = sbx.creation(counts.from_snapshot, cold=False)
        out["evolve"], out["evolve+call"], out["evolve.close"] = cold["create"], cold["create+call"], cold["close"]
        out["from_snapshot"], out["from_snapshot+call"], out["from_snapshot.close"] = (
            warm["create"], warm["create+call"], warm["close"])
    return out


# (group, hlsandbox figure, floor figure, target ratio or None, what)
ROWS: list[tuple[str, str, str, float | None, str]] = []
for _name, _heap in SIZES:
    ROWS.append(("snapshot by size", f"snapshot[{_name}]", f"snapshot_create[{_name}]", None,
                 f"snapshot() of a {_heap} heap sandbox"))
for _name, _heap in SIZES:
    ROWS.append(("snapshot by size", f"restore[{_name}]", f"call_restore[{_name}].restore", None,
                 f"restore(snapshot) after an Echo call, {_heap} heap"))
for _c in DIRTY_COUNTS:
    ROWS.append((f"dirty pages ({DIRTY_HEAP} heap)", f"restore_dirty[{_c}]", f"dirty[{_c}].restore", None,
                 f"restore() after a call that wrote {_c} heap page(s)"))
for _c in DIRTY_COUNTS:
    ROWS.append((f"dirty pages ({DIRTY_HEAP} heap)", f"call_restore_dirty[{_c}]", f"dirty[{_c}]", None,
                 f"call('WritePages', addr, {_c}, restore=True)"))
ROWS.append((f"dirty pages ({DIRTY_HEAP} heap)", "restore_dirty_bitmap[10]", "dirty_bitmap[10].restore", None,
             "restore() after 10 dirty pages, KVM_GET_DIRTY_LOG instead of the ring"))
for _h in HEAPS_COMPARED:
    ROWS.append(("heap size", f"restore_dirty10[{_h}]", f"dirty10[{_h}].restore", None,
                 f"restore() after 10 dirty pages, {_h} heap"))
ROWS += [
    ("call with restore", "GetStatic(restore=True)", "exit_roundtrip", 1.3,
     "call('GetStatic', restore=True) vs a plain call's floor"),
    ("call with restore", "GetStatic(restore=True)", "call_restore_plain", None,
     "the same vs a call + restore of the same bytes"),
    ("call with restore", "WritePages10(restore=True)", "dirty10[1Mi]", 1.3,
     "call('WritePages', addr, 10, restore=True), 1 MiB heap"),
    ("sandbox creation", "evolve", "vm_create", None, "UninitializedSandbox(...).evolve(), cold"),
    ("sandbox creation", "evolve+call", "vm_create", None, "the same plus the first call"),
    ("sandbox creation", "from_snapshot", "vm_create", None, "MultiUseSandbox.from_snapshot(snapshot)"),
    ("sandbox creation", "from_snapshot+call", "vm_create", 1.3, "the same plus the first call"),
    ("sandbox creation", "from_snapshot+call", "vm_create_hl", None,
     "vs a floor with hlsandbox's 3 slots, dirty ring, XSAVE+MSRs"),
    ("sandbox creation", "from_snapshot+call", "vm_create_nocpuid", None,
     "vs vm_create without KVM_SET_CPUID2 on kvm-pvm, as hlsandbox does for amd64"),
    ("sandbox creation", "from_snapshot+call", "vm_create_hl_par", None,
     "vs hlsandbox's set-up in C: 3 slots on a second thread, ring, state, no CPUID on kvm-pvm"),
    ("sandbox creation", "from_snapshot.close", "vm_create.teardown", None, "close() of a from_snapshot sandbox"),
    ("sandbox creation", "evolve.close", "vm_create.teardown", None, "close() of an evolved sandbox"),
]
HEAP_RATIO_ROW = (f"restore_dirty10[{HEAPS_COMPARED[1]}]", f"restore_dirty10[{HEAPS_COMPARED[0]}]")
