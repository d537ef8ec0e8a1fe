"""asyncio: MultiUseSandbox.acall() and SandboxPool.acall() under asyncio's and uvloop's
event loops; a cancelled task kills its guest call and the sandbox is restored."""
from __future__ import annotations

import asyncio
import time

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))


def _uvloop_factory():
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a coroutine to its end on a new loop of the kind under test."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else _uvloop_factory

    def runner(coro):
        loop = factory()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    return runner


async def ticks_during(coro, period: float = 0.01) -> tuple[object, int]:
    """Awaits `coro` while counting how often a ticker task got to run."""
    n = 0
    done = False

    async def ticker():
        nonlocal n
        while not done:
            await asyncio.sleep(period)
            n += 1
    t = asyncio.ensure_future(ticker())
    try:
        result = await coro
    finally:
        done = True
        await t
    return result, n


async def until(predicate, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_sandbox_acall_does_not_block_the_loop(run):
    with hl.UninitializedSandbox(SIMPLE).evolve() as sb:
        async def main():
            assert await sb.acall("Add", 2, 3) == 5
            result, n = await ticks_during(_spin_then_time_out(sb))
            assert result == "timed out" and n >= 5  # the ticker ran while the guest spun
            sb.restore()
            assert await sb.acall("Echo", "x") == "x"
        run(main())


async def _spin_then_time_out(sb):
    try:
        await sb.acall("Spin", timeout=0.3)
    except hl.ExecutionTimeout:
        return "timed out"


def test_cancelling_a_sandbox_acall_kills_the_call_and_restores(run):
    with hl.UninitializedSandbox(SIMPLE).evolve() as sb:
        handle = sb.interrupt_handle()

        async def main():
            sb.call("SetStatic", 4)
            task = asyncio.ensure_future(sb.acall("Spin"))
            await until(handle.is_running)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: not handle.is_running() and not sb.poisoned)
            assert await sb.acall("GetStatic") == 0  # restored to the state after init
        run(main())


def test_pool_acall_concurrently(run):
    with hl.SandboxPool(SIMPLE, size=2) as pool:
        async def main():
            results = await asyncio.gather(*(pool.acall("Add", i, 1) for i in range(200)))
            assert results == [i + 1 for i in range(200)]
            with pytest.raises(hl.GuestAborted):
                await pool.acall("Abort", 2, "no")
        run(main())
        s = pool.stats()
        assert s.calls == 201 and s.errors == {"GuestAborted": 1} and s.free == 2


def test_cancelling_pool_acalls_running_and_queued(run):
    with hl.SandboxPool(SIMPLE, size=1) as pool:
        async def main():
            running = asyncio.ensure_future(pool.acall("Spin"))
            queued = asyncio.ensure_future(pool.acall("SetStatic", 1))
            await until(lambda: pool.stats().lent == 1)
            await asyncio.sleep(0.05)  # Spin is in the guest
            queued.cancel()
            running.cancel()
            for t in (running, queued):
                with pytest.raises(asyncio.CancelledError):
                    await t
            # The spinning call was killed and its sandbox restored before the next lend.
            assert await asyncio.wait_for(pool.acall("GetStatic"), 10) == 0
        run(main())
        s = pool.stats()
        assert s.lends == 2 and s.restores == 2 and s.replacements == 0  # the queued call never ran
        assert s.calls == 1


def test_cancel_before_the_worker_starts_the_call(run):
    """Many cancels at random points: no call is left running, no sandbox poisoned."""
    with hl.SandboxPool(SIMPLE, size=2) as pool:
        async def main():
            for i in range(30):
                task = asyncio.ensure_future(pool.acall("Spin"))
                await asyncio.sleep(0.0005 * (i % 7))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await asyncio.wait_for(asyncio.gather(*(pool.acall("GetStatic") for _ in range(8))), 20) \
                == [0] * 8
        run(main())
        end = time.monotonic() + 10  # the last killed call's worker may still be giving back
        while pool.stats().lent and time.monotonic() < end:
            time.sleep(0.01)
        assert pool.stats().lent == 0 and pool.stats().free == 2


def test_closing_the_pool_settles_running_and_queued_acalls(run):
    """close() while acalls run and wait: every task ends (the running one stopped, the
    queued ones refused), none hangs."""
    pool = hl.SandboxPool(SIMPLE, size=1)

    async def main():
        tasks = [asyncio.ensure_future(pool.acall("Spin"))]
        tasks += [asyncio.ensure_future(pool.acall("Add", i, 1)) for i in range(20)]
        await until(lambda: pool.stats().lent == 1)
        await asyncio.sleep(0.05)  # Spin is in the guest
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
        done, pending = await asyncio.wait(tasks, timeout=10)
        assert not pending
        errors = [type(t.exception()) for t in tasks]
        assert errors[0] in (hl.SandboxClosed, hl.ExecutionCanceled)
        assert set(errors[1:]) == {hl.SandboxClosed}
        with pytest.raises(hl.SandboxClosed):
            await pool.acall("Add", 1, 1)
    run(main())


def test_pool_acalls_from_two_event_loops_at_once():
    """Each loop gets its own results, while the other loop's results flow too."""
    import threading
    with hl.SandboxPool(SIMPLE, size=2) as pool:
        out: dict[int, list[int]] = {}

        def on_own_loop(k: int) -> None:
            async def main():
                return await asyncio.gather(*(pool.acall("Add", i, k) for i in range(300)))
            out[k] = asyncio.run(main())

        threads = [threading.Thread(target=on_own_loop, args=(k,)) for k in (1000, 2000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert out == {k: [i + k for i in range(300)] for k in (1000, 2000)}
        assert pool.stats().calls == 600
