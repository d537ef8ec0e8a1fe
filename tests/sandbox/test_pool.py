"""SandboxPool: lending, restore before reuse, replacement, limits, threads, stats, and
that closing leaves nothing behind."""
from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import time
import weakref

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))
HOST_ADD = {"HostAdd": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32)}


@pytest.fixture
def pool():
    with hl.SandboxPool(SIMPLE, size=2, host_functions=HOST_ADD) as p:
        yield p


def test_call_and_every_source_kind(tmp_path):
    with hl.SandboxPool(hl.guests.path("simpleguest"), size=1, host_functions=HOST_ADD) as p:
        assert p.call("Add", 2, 3) == 5
        assert p.call("CallHostAdd", 4, 5) == 9
        snap = p.snapshot
        path = tmp_path / "s.hlsnap"
        snap.save(path)
        with hl.SandboxPool(snap, size=2, host_functions=HOST_ADD) as q:
            assert q.call("Echo", "x") == "x"
        assert not snap.closed  # the pool above did not own it
    assert snap.closed  # the first pool made it and closed it
    with hl.SandboxPool(str(path), size=1, host_functions=HOST_ADD) as p:
        assert p.call("CallHostAdd", 1, 1) == 2
    with pytest.raises(TypeError):
        hl.SandboxPool(42, size=1)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            hl.SandboxPool(SIMPLE, size=bad)


def test_lent_sandbox_starts_from_the_snapshot(pool):
    for _ in range(3):
        with pool.sandbox() as sb:
            assert sb.call("GetStatic") == 0
            sb.call("SetStatic", 7)
            assert sb.call("GetStatic") == 7
    # call() gives back restored as well
    for _ in range(4):
        assert pool.call("SetStatic", 5) == 5
        assert pool.call("GetStatic") == 0


def test_poisoned_timed_out_and_killed_sandboxes_are_restored(pool):
    with pytest.raises(hl.GuestAborted):
        pool.call("Abort", 3, "boom")
    with pytest.raises(hl.ExecutionTimeout):
        pool.call("Spin", timeout=0.05)
    with pool.sandbox() as sb:
        sb.call("SetStatic", 9)
        handle = sb.interrupt_handle()
        threading.Timer(0.05, handle.kill).start()
        with pytest.raises(hl.ExecutionCanceled):
            sb.call("Spin")
        assert sb.poisoned
    for _ in range(4):
        with pool.sandbox() as sb:
            assert not sb.poisoned
            assert sb.call("GetStatic") == 0
    s = pool.stats()
    assert s.errors == {"GuestAborted": 1, "ExecutionTimeout": 1}
    assert s.replacements == 0 and s.restores == s.lends == 7


def test_a_sandbox_whose_restore_fails_is_replaced(pool):
    with pool.sandbox() as sb:
        sb.close()  # restore() now raises SandboxClosed
    s = pool.stats()
    assert s.replacements == 1
    seen = set()
    for _ in range(4):
        with pool.sandbox() as sb:
            assert sb.call("Add", 1, 1) == 2
            seen.add(id(sb))
    assert pool.stats().free == 2


def test_exhausted_after_the_wait(pool):
    with pool.sandbox(), pool.sandbox():
        t = time.monotonic()
        with pytest.raises(hl.PoolExhausted) as e:
            with pool.sandbox(timeout=0.1):
                pass
        assert time.monotonic() - t >= 0.1
        assert isinstance(e.value, TimeoutError)
        with pytest.raises(hl.PoolExhausted):
            pool.call("Add", 1, 2, wait=0)
    assert pool.stats().exhausted == 2
    assert pool.call("Add", 1, 2, wait=0) == 3
    with pytest.raises(ValueError):
        pool.call("Add", 1, 2, wait=-1)


def test_the_pool_wait_comes_from_the_configuration():
    config = hl.SandboxConfiguration(max_wait_time=0.05)
    with hl.SandboxPool(SIMPLE, size=1, config=config) as p:
        with p.sandbox():
            with pytest.raises(hl.PoolExhausted):
                p.call("Add", 1, 2)


def test_a_waiter_gets_the_sandbox_given_back(pool):
    got = []
    with pool.sandbox(), pool.sandbox():
        t = threading.Thread(target=lambda: got.append(pool.call("Add", 2, 2, wait=10)))
        t.start()
        time.sleep(0.05)
        assert not got
    t.join(10)
    assert got == [4]


def test_threads_each_see_a_clean_sandbox():
    errors = []

    def worker(k: int) -> None:
        try:
            for i in range(50):
                with p.sandbox(timeout=30) as sb:
                    assert sb.call("GetStatic") == 0
                    assert sb.call("SetStatic", k * 1000 + i) == k * 1000 + i
                    assert sb.call("GetStatic") == k * 1000 + i
        except BaseException as e:  # reported below
            errors.append(e)

    with hl.SandboxPool(SIMPLE, size=3) as p:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        s = p.stats()
        assert s.lends == 300 and s.restores == 300 and s.lent == 0 and s.free == 3
        assert set(s.wait_seconds) == {"p50", "p90", "p99", "max"}
        assert 0 <= s.wait_seconds["p50"] <= s.wait_seconds["p99"] <= s.wait_seconds["max"]


def test_close_stops_running_calls_and_refuses_new_ones():
    p = hl.SandboxPool(SIMPLE, size=1)
    f = p.submit("Spin")
    time.sleep(0.1)
    p.close()
    with pytest.raises((hl.ExecutionCanceled, hl.SandboxClosed)):
        f.result(10)
    with pytest.raises(hl.SandboxClosed):
        p.call("Add", 1, 2)
    with pytest.raises(hl.SandboxClosed):
        p.submit("Add", 1, 2)
    p.close()  # idempotent
    assert p.closed


def test_waiters_are_woken_by_close():
    p = hl.SandboxPool(SIMPLE, size=1)
    out = []
    with p.sandbox():
        t = threading.Thread(target=lambda: out.append(_raises(lambda: p.call("Add", 1, 1, wait=30))))
        t.start()
        time.sleep(0.05)
        p.close()
        t.join(10)
    assert out and isinstance(out[0], hl.SandboxClosed)


def _raises(fn):
    try:
        fn()
    except BaseException as e:
        return e
    return None


def test_from_factory_pools_sandbox_like_objects():
    made = []

    def factory():
        sb = hl.MultiUseSandbox.from_snapshot(snap)
        made.append(sb)
        return sb

    with hl.UninitializedSandbox(SIMPLE).evolve() as first:
        snap = first.snapshot()
    with hl.SandboxPool.from_factory(factory, size=2, max_wait=1) as p:
        assert p.snapshot is None
        assert p.call("SetStatic", 3) == 3
        assert p.call("GetStatic") == 0  # restored by restore() on return
        assert list(p.map("Add", [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    assert len(made) == 2
    snap.close()


def test_submit_and_map(pool):
    futures = [pool.submit("Add", i, i) for i in range(20)]
    assert [f.result(30) for f in futures] == [2 * i for i in range(20)]
    assert isinstance(futures[0], concurrent.futures.Future)
    assert list(pool.map("Echo", ["a", "b", "c"])) == ["a", "b", "c"]
    results = pool.map("Abort", [1], ["no"])
    with pytest.raises(hl.GuestAborted):
        next(results)
    assert pool.stats().calls == 24


def fd_thread_map_counts() -> dict[str, int]:
    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return {"fds": len(os.listdir("/proc/self/fd")), "maps": maps, "threads": threading.active_count(),
            "tasks": len(os.listdir("/proc/self/task"))}


def assert_nothing_leaked(before: dict[str, int]) -> None:
    """The process has the fds, threads and tasks of `before` (fd_thread_map_counts())
    again, and at most a few more mappings (allocator arenas)."""
    after = fd_thread_map_counts()
    assert after["fds"] == before["fds"]
    assert after["threads"] == before["threads"]
    assert after["tasks"] == before["tasks"]
    assert after["maps"] <= before["maps"] + 16


def test_a_dropped_pool_ends_its_worker_threads():
    before = set(threading.enumerate())
    pool = hl.SandboxPool(SIMPLE, size=2)
    assert pool.submit("Add", 1, 1).result(10) == 2
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None
    assert set(threading.enumerate()) <= before


def test_nothing_leaks():
    with hl.SandboxPool(SIMPLE, size=2) as warm:  # process-wide things exist first
        warm.submit("Add", 1, 1).result(10)
    before = fd_thread_map_counts()
    for _ in range(30):
        with hl.SandboxPool(SIMPLE, size=3) as p:
            assert p.call("Add", 1, 2) == 3
            assert p.submit("Add", 2, 2).result(10) == 4
            with pytest.raises(hl.GuestAborted):
                p.call("Abort", 1, "x")
            with p.sandbox() as sb:
                sb.close()  # a replacement
    del p, sb
    assert_nothing_leaked(before)
