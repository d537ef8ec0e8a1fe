"""Benchmarks of snapshots, restores and sandbox creation, and of their raw-KVM floor.

`python3 -m pytest benchmarks/test_bench_snapshots.py --benchmark-only` (about half a
minute). They mirror Hyperlight's benchmarks; what each figure times is in
snapbench.py and the README, and `python3 benchmarks/compare_snapshots.py` is the
comparison with the floor to quote (it interleaves both sides).

Each hlsandbox operation is timed on its own (`pedantic`, iterations=1). The untimed
part of a sample runs in pedantic's setup/teardown: the call that dirties pages before
a timed restore, closing the snapshot a timed snapshot() returned, closing a sandbox
whose creation was timed.

The floor benchmarks time whole floor/snapfloor.c process runs; the floor figures
themselves go to `extra_info` (floor_figures, with median/p10/p90 each) and into the
summary printed at the end. HLSANDBOX_BENCH_SNAP_SCALE (default 10) multiplies the
samples per figure (snapbench.Counts).
"""

from __future__ import annotations

import os

import floor
import pytest
import snapbench
from snapbench import DIRTY_COUNTS, HEAPS_COMPARED, SIZES, Counts

SCALE = float(os.environ.get("HLSANDBOX_BENCH_SNAP_SCALE", "10"))
COUNTS = Counts().scaled(SCALE)


def _median_us(benchmark) -> float | None:
    return benchmark.stats.stats.median * 1e6 if benchmark.stats else None


@pytest.fixture(scope="module")
def sbx(kvm):
    s = snapbench.Sandboxes()
    try:
        yield s
    finally:
        s.close()


def _untimed(fn):
    """A pedantic setup that runs fn and passes no arguments to the target."""
    def setup():
        fn()
    return setup


def _pedantic(benchmark, record, name, target, rounds, **kw):
    result = benchmark.pedantic(target, rounds=rounds, warmup_rounds=kw.pop("warmup_rounds", 2), iterations=1, **kw)
    record(name, _median_us(benchmark))
    return result


# ---- snapshot create / restore by sandbox size -------------------------------------------------

@pytest.mark.benchmark(group="snapshot create (by heap size)")
@pytest.mark.parametrize("size", [n for n, _ in SIZES])
def test_snapshot(benchmark, sbx, record, size):
    """snapshot() right after a call (the call is untimed); the snapshot is closed untimed."""
    sb = sbx.by_size[size]
    held = []
    _pedantic(benchmark, record, f"snapshot[{size}]", lambda: held.append(sb.snapshot()), COUNTS.snapshot,
              setup=_untimed(lambda: sb.call("Echo", "hi")), teardown=lambda: held.pop().close())
    benchmark.extra_info["resident_pages"] = snapbench.resident_pages(sb)


@pytest.mark.benchmark(group="snapshot restore (by heap size)")
@pytest.mark.parametrize("size", [n for n, _ in SIZES])
def test_restore_by_size(benchmark, sbx, record, size):
    """restore(snapshot) after an (untimed) Echo call."""
    sb, snap = sbx.by_size[size], sbx.size_snap[size]
    sb.restore(snap)  # re-baseline after test_snapshot
    _pedantic(benchmark, record, f"restore[{size}]", lambda: sb.restore(snap), COUNTS.restore,
              setup=_untimed(lambda: sb.call("Echo", "hi")))


# ---- dirty pages -------------------------------------------------------------------------------

@pytest.mark.benchmark(group=f"restore after N dirty pages ({snapbench.DIRTY_HEAP} heap)")
@pytest.mark.parametrize("count", DIRTY_COUNTS)
def test_restore_dirty(benchmark, sbx, record, count):
    """restore() after an (untimed) WritePages(addr, count)."""
    sb = sbx.dirty
    addr = snapbench.heap_addr(sb)

    def dirty():
        assert sb.call("WritePages", addr, count) == count

    _pedantic(benchmark, record, f"restore_dirty[{count}]", sb.restore, COUNTS.dirty(count), setup=dirty)


@pytest.mark.benchmark(group=f"call + restore, N dirty pages ({snapbench.DIRTY_HEAP} heap)")
@pytest.mark.parametrize("count", DIRTY_COUNTS)
def test_call_restore_dirty(benchmark, sbx, record, count):
    """call("WritePages", addr, count, restore=True), timed as one."""
    sb = sbx.dirty
    addr = snapbench.heap_addr(sb)
    r = _pedantic(benchmark, record, f"call_restore_dirty[{count}]",
                  lambda: sb.call("WritePages", addr, count, restore=True), COUNTS.dirty(count))
    assert r == count


@pytest.mark.benchmark(group=f"restore after N dirty pages ({snapbench.DIRTY_HEAP} heap)")
def test_restore_dirty_bitmap(benchmark, sbx, record):
    """As test_restore_dirty[10], on a VM that uses KVM_GET_DIRTY_LOG instead of the ring."""
    sb = sbx.bitmap
    addr = snapbench.heap_addr(sb)

    def dirty():
        assert sb.call("WritePages", addr, 10) == 10

    _pedantic(benchmark, record, "restore_dirty_bitmap[10]", sb.restore, COUNTS.dirty(10), setup=dirty)


@pytest.mark.benchmark(group="restore after 10 dirty pages (by heap size)")
@pytest.mark.parametrize("heap", HEAPS_COMPARED)
def test_restore_dirty_heap(benchmark, sbx, record, heap):
    """Restore after 10 dirty pages should not depend on the heap's size."""
    sb = sbx.heaps[heap]
    addr = snapbench.heap_addr(sb)

    def dirty():
        assert sb.call("WritePages", addr, 10) == 10

    _pedantic(benchmark, record, f"restore_dirty10[{heap}]", sb.restore, COUNTS.heap, setup=dirty)


# ---- calls with restore ------------------------------------------------------------------------

@pytest.mark.benchmark(group="call with restore")
def test_call_restore_static(benchmark, sbx, record):
    sb = sbx.heaps["1Mi"]
    r = _pedantic(benchmark, record, "GetStatic(restore=True)", lambda: sb.call("GetStatic", restore=True),
                  COUNTS.call, warmup_rounds=50)
    assert r == 0


@pytest.mark.benchmark(group="call with restore")
def test_call_restore_pages(benchmark, sbx, record):
    sb = sbx.heaps["1Mi"]
    addr = snapbench.heap_addr(sb)
    r = _pedantic(benchmark, record, "WritePages10(restore=True)",
                  lambda: sb.call("WritePages", addr, 10, restore=True), COUNTS.call // 2, warmup_rounds=20)
    assert r == 10


# ---- sandbox creation --------------------------------------------------------------------------

@pytest.mark.benchmark(group="sandbox creation")
def test_evolve(benchmark, sbx, record):
    """UninitializedSandbox(...).evolve(), cold: loads the ELF, builds memory, runs init."""
    held = []
    _pedantic(benchmark, record, "evolve", lambda: held.append(snapbench.uninitialized("1Mi").evolve()),
              COUNTS.evolve, warmup_rounds=1, teardown=lambda: held.pop().close())


@pytest.mark.benchmark(group="sandbox creation")
def test_from_snapshot(benchmark, sbx, record):
    """MultiUseSandbox.from_snapshot(snapshot), the guest not run yet."""
    import hlsandbox as hl
    held = []
    hf = snapbench.host_functions()
    _pedantic(benchmark, record, "from_snapshot",
              lambda: held.append(hl.MultiUseSandbox.from_snapshot(sbx.source, host_functions=hf)),
              COUNTS.from_snapshot, teardown=lambda: held.pop().close())


@pytest.mark.benchmark(group="sandbox creation")
def test_from_snapshot_first_call(benchmark, sbx, record):
    """from_snapshot() plus the first call (GetStatic): target <= 1.3x vm_create."""
    import hlsandbox as hl
    held = []
    hf = snapbench.host_functions()

    def create_and_call():
        sb = hl.MultiUseSandbox.from_snapshot(sbx.source, host_functions=hf)
        held.append(sb)
        return sb.call(*snapbench.FIRST_CALL)

    r = _pedantic(benchmark, record, "from_snapshot+call", create_and_call, COUNTS.from_snapshot,
                  teardown=lambda: held.pop().close())
    assert r == 0


@pytest.mark.benchmark(group="sandbox creation")
def test_close(benchmark, sbx, record):
    """close() of a sandbox made by from_snapshot() that has made one call."""
    import hlsandbox as hl
    hf = snapbench.host_functions()

    def setup():
        sb = hl.MultiUseSandbox.from_snapshot(sbx.source, host_functions=hf)
        sb.call(*snapbench.FIRST_CALL)
        return (sb,), {}

    _pedantic(benchmark, record, "from_snapshot.close", lambda sb: sb.close(), COUNTS.from_snapshot, setup=setup)


# ---- the floor (snapfloor.c), one process per group of figures ---------------------------------

@pytest.fixture(scope="session")
def snap_exe(kvm):
    return floor.build_snap()


@pytest.mark.benchmark(group="floor snapshots (process runs; figures in extra_info)")
@pytest.mark.parametrize("group", list(snapbench.GROUPS))
def test_floor_snapshots(benchmark, sbx, snap_exe, record, group):
    resident = {name: sbx.resident(name) for name, _ in SIZES}
    specs = snapbench.specs_of(snapbench.floor_specs(COUNTS, resident, sbx.copied()), {group})
    runs = []
    benchmark.pedantic(lambda: runs.append(floor.run_snap(specs, exe=snap_exe)), rounds=1, iterations=1)
    res = runs[-1]
    benchmark.extra_info["floor_figures"] = {k: {"median_us": f.median_us, "p10_us": f.p10_us, "p90_us": f.p90_us,
                                                 "iterations": f.iterations} for k, f in res.items()}
    benchmark.extra_info["info"] = dict(res.info)
    benchmark.extra_info["note"] = "timing columns are whole snapfloor runs; the figures are floor_figures"
    for k, f in res.items():
        record(k, f.median_us)


@pytest.mark.benchmark(group="floor snapshots (process runs; figures in extra_info)")
def test_floor_exit_roundtrip_for_restore(benchmark, floor_exe, record):
    """floor.c's exit_roundtrip: the target's floor for GetStatic(restore=True)."""
    runs = []
    benchmark.pedantic(lambda: runs.append(floor.run(iterations=COUNTS.call, sum_n=0, sum_reps=1,
                                                     figures=["exit_roundtrip"], exe=floor_exe)),
                       rounds=1, iterations=1)
    fig = runs[-1]["exit_roundtrip"]
    benchmark.extra_info.update(floor_median_us=fig.median_us, floor_p10_us=fig.p10_us, floor_p90_us=fig.p90_us)
    record("exit_roundtrip", fig.median_us)
