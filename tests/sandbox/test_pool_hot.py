"""SandboxPool(hot=): pooled sandboxes kept hot, restored on the pool's restorer threads."""
from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
import weakref

import pytest
from test_pool import HOST_ADD, SIMPLE, assert_nothing_leaked, fd_thread_map_counts

import hlsandbox as hl
from hlsandbox.sandbox.pool import RESTORER_THREADS

pytestmark = pytest.mark.kvm


def settle(pool: hl.SandboxPool, timeout: float = 10.0) -> hl.PoolStats:
    """The pool's stats once every sandbox given back is restored and free again."""
    deadline = time.monotonic() + timeout
    while (s := pool.stats()).free < pool.size:
        assert time.monotonic() < deadline, f"sandboxes not back after {timeout} s: {s}"
        time.sleep(0.001)
    return s


def killed_spin(sb: hl.MultiUseSandbox) -> None:
    """Calls Spin on `sb` and kills it from another thread once it runs (a kill before
    the call starts does nothing, so it is retried)."""
    handle, done = sb.interrupt_handle(), threading.Event()

    def kill() -> None:
        while not handle.kill() and not done.wait(0.002):
            pass
    killer = threading.Thread(target=kill)
    killer.start()
    try:
        with pytest.raises(hl.ExecutionCanceled) as e:
            sb.call("Spin", timeout=30)
        assert type(e.value) is hl.ExecutionCanceled  # killed, not timed out
    finally:
        done.set()
        killer.join()


def hot_paths(pool: hl.SandboxPool) -> list:
    return [sb._hot for sb in pool._all.values() if sb.is_hot]


def test_every_lend_is_clean_and_answered_without_a_vcpu_wake():
    with hl.SandboxPool(SIMPLE, size=2, host_functions=HOST_ADD, hot=2, spin=1.0) as pool:
        for i in range(1, 51):
            assert pool.call("GetStatic") == 0
            assert pool.call("SetStatic", i) == i
            assert pool.call("CallHostAdd", i, 1) == i + 1
            with pool.sandbox() as sb:
                assert sb.is_hot
                assert sb.call("GetStatic") == 0
                sb.call("SetStatic", 7)
        s = settle(pool)
        assert s.hot == 2 and s.calls == 150 and s.lends == 200 and s.restores == 200
        hots = hot_paths(pool)
        assert sum(h.rearms for h in hots) == 200
        for h in hots:
            # One KVM_RUN entered hot mode; every other one re-armed a restored guest:
            # no call woke the vCPU.
            assert h.wakes == h.rearms + 1


def test_lending_prefers_the_hot_sandboxes():
    with hl.SandboxPool(SIMPLE, size=3, hot=1, spin=1.0) as pool:
        assert pool.stats().hot == 1
        for _ in range(5):
            settle(pool)
            with pool.sandbox() as sb:
                assert sb.is_hot
                with pool.sandbox() as other:
                    assert not other.is_hot
                    assert other.call("Add", 1, 2) == 3
                assert sb.call("Add", 2, 2) == 4


def test_failed_calls_leave_clean_hot_sandboxes():
    with hl.SandboxPool(SIMPLE, size=2, hot=2, spin=0.5) as pool:
        with pytest.raises(hl.GuestAborted):
            pool.call("Abort", 3, "boom")
        with pytest.raises(hl.ExecutionTimeout):
            pool.call("Spin", timeout=0.05)
        with pool.sandbox() as sb:
            sb.call("SetStatic", 9)
            killed_spin(sb)
        s = settle(pool)
        assert s.errors == {"GuestAborted": 1, "ExecutionTimeout": 1}
        assert s.replacements == 0 and s.hot == 2
        for _ in range(4):
            with pool.sandbox() as sb:
                assert not sb.poisoned and sb.is_hot
                assert sb.call("GetStatic") == 0


def test_a_guest_that_keeps_the_vcpu_after_answering_does_not_stall_the_restorer():
    hostile = hl.guests.path("hostileguest")
    with hl.SandboxPool(hostile, size=2, host_functions=HOST_ADD, hot=2, spin=0.5) as pool:
        for _ in range(5):
            with pytest.raises(hl.GuestError, match="answered by hand"):
                pool.call("HaltThenRun", timeout=10)
            # The restore stops the guest when it does not park within RESTORE_PARK_TIMEOUT
            # (20 ms), not PARK_TIMEOUT (1 s); 0.5 s leaves room for a loaded machine.
            settle(pool, timeout=0.5)
            assert pool.call("Echo", "clean") == "clean"
        s = settle(pool)
        assert s.replacements == 0 and s.hot == 2


def test_a_replaced_hot_sandbox_is_replaced_by_a_hot_one():
    with hl.SandboxPool(SIMPLE, size=2, hot=1, spin=0.5) as pool:
        settle(pool)
        with pool.sandbox() as sb:
            assert sb.is_hot
            sb.close()  # its restore fails: the pool replaces it
        s = settle(pool)
        assert s.replacements == 1 and s.hot == 1
        assert pool.call("Add", 1, 1) == 2


def test_submit_map_and_acall():
    with hl.SandboxPool(SIMPLE, size=2, hot=2, spin=0.5) as pool:
        assert [f.result(10) for f in [pool.submit("Add", i, 1) for i in range(20)]] == list(range(1, 21))
        assert list(pool.map("Add", range(10), range(10))) == [2 * i for i in range(10)]

        async def main() -> list[int]:
            return await asyncio.gather(*(pool.acall("Add", i, i) for i in range(50)))
        assert asyncio.run(main()) == [2 * i for i in range(50)]
        assert settle(pool).calls == 80


def test_close_while_calls_and_restores_run():
    pool = hl.SandboxPool(SIMPLE, size=2, hot=2, spin=0.5)
    errors: list[BaseException] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                assert pool.call("Add", 1, 1) == 2
            except hl.SandboxClosed:
                return
            except BaseException as e:  # reported below
                errors.append(e)
                return
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    pool.close()
    done.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert all(isinstance(e, (hl.SandboxClosed, hl.ExecutionCanceled)) for e in errors), errors
    assert not [t for t in threading.enumerate() if t.name.startswith(RESTORER_THREADS)]


LOAD_SECONDS = 120.0 if os.environ.get("HLSANDBOX_LONG_FUZZ") == "1" else 2.0


def test_mixed_load_every_lend_is_clean():
    """4 threads on a pool of 3 (2 hot) for LOAD_SECONDS: calls that check they start
    from the snapshot, aborts, timeouts and kills mixed at random; nothing hangs, every
    failure is the expected one and no sandbox needs replacing."""
    errors: list[BaseException] = []
    counts = {"clean": 0, "abort": 0, "timeout": 0, "kill": 0}
    lock = threading.Lock()

    def count(what: str) -> None:
        with lock:
            counts[what] += 1

    def worker(pool: hl.SandboxPool, seed: int, stop: float) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                k = rng.random()
                if k < 0.7:
                    with pool.sandbox(timeout=30) as sb:
                        assert sb.call("GetStatic") == 0
                        v = rng.randrange(1, 1000)
                        sb.call("SetStatic", v)
                        text = "x" * rng.randrange(3000)
                        assert sb.call("Echo", text) == text
                        assert sb.call("GetStatic") == v
                    count("clean")
                elif k < 0.8:
                    with pytest.raises(hl.GuestAborted):
                        pool.call("Abort", 3, "boom")
                    count("abort")
                elif k < 0.9:
                    with pytest.raises(hl.ExecutionTimeout):
                        pool.call("Spin", timeout=0.01)
                    count("timeout")
                else:
                    with pool.sandbox(timeout=30) as sb:
                        killed_spin(sb)
                    count("kill")
        except BaseException as e:  # reported below
            errors.append(e)

    with hl.SandboxPool(SIMPLE, size=3, hot=2, spin=0.005) as pool:
        stop = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=worker, args=(pool, seed, stop)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_SECONDS + 60)
            assert not t.is_alive()
        assert not errors, errors[:3]
        s = settle(pool)
        assert s.replacements == 0 and s.hot == 2
        assert min(counts.values()) > 0, counts


def test_nothing_leaks():
    with hl.SandboxPool(SIMPLE, size=1, hot=1) as warm:  # process-wide things exist first
        warm.call("Add", 1, 1)
    before = fd_thread_map_counts()
    for _ in range(10):
        with hl.SandboxPool(SIMPLE, size=2, hot=2) as p:
            assert p.call("Add", 1, 2) == 3
            with pytest.raises(hl.GuestAborted):
                p.call("Abort", 1, "x")
            with p.sandbox() as sb:
                sb.close()  # a replacement
    del p, sb
    assert_nothing_leaked(before)


def test_a_dropped_hot_pool_ends_its_threads():
    before = set(threading.enumerate())
    pool = hl.SandboxPool(SIMPLE, size=2, hot=2, spin=0.5)
    pool.call("Add", 1, 1)
    settle(pool)
    assert [t for t in threading.enumerate() if t.name.startswith(RESTORER_THREADS)]
    tasks = fd_thread_map_counts()["tasks"]
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None, "the restorer thread keeps a dropped pool alive"
    assert set(threading.enumerate()) <= before
    assert fd_thread_map_counts()["tasks"] <= tasks - 3  # a restorer and both vCPU threads


@pytest.mark.parametrize("hot, spin", [(-1, 0.001), (3, 0.001), (True, 0.001), (1.0, 0.001), (1, 0), (1, 61)])
def test_hot_and_spin_are_checked(hot, spin):
    with pytest.raises(ValueError, match="hot|spin"):
        hl.SandboxPool(SIMPLE, size=2, hot=hot, spin=spin)
