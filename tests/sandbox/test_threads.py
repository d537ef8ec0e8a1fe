"""The thread rule: calls on one sandbox from many threads run one at a time."""
from __future__ import annotations

import threading
import time

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


def _start_spin(sb: hl.MultiUseSandbox) -> tuple[threading.Thread, list]:
    out: list = []

    def spin() -> None:
        try:
            sb.call("Spin")
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=spin)
    t.start()
    h = sb.interrupt_handle()
    end = time.monotonic() + 10
    while not h.is_running() and time.monotonic() < end:
        time.sleep(0.001)
    assert h.is_running()
    return t, out


def test_calls_from_many_threads_all_succeed(sandbox):
    results: list = []
    failures: list = []

    def worker(k: int) -> None:
        for i in range(200):
            try:
                results.append(sandbox.call("Add", k, i) == k + i)
            except BaseException as e:
                failures.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(results) == 800 and all(results)


def test_a_waiting_call_runs_after_the_running_one(sandbox):
    t, out = _start_spin(sandbox)
    got: list = []

    def waiter() -> None:
        try:
            got.append(sandbox.call("Echo", "next"))
        except BaseException as e:
            got.append(e)

    w = threading.Thread(target=waiter)
    w.start()
    time.sleep(0.05)
    assert got == []  # still waiting for Spin
    sandbox.interrupt_handle().kill()
    t.join()
    w.join(10)
    assert isinstance(out[0], hl.ExecutionCanceled)
    # Spin was canceled: the guest is mid-call, so the call that waited is refused, typed.
    assert isinstance(got[0], hl.PoisonedSandbox), got
    sandbox.restore()
    assert sandbox.call("Echo", "next") == "next"


def test_the_configured_wait_limit_raises_sandbox_busy():
    with make_sandbox(hl.SandboxConfiguration(max_wait_time=0.05)) as sb:
        t, out = _start_spin(sb)
        start = time.monotonic()
        with pytest.raises(hl.SandboxBusy):
            sb.call("Add", 1, 2)
        assert time.monotonic() - start >= 0.04
        with pytest.raises(hl.SandboxBusy):
            sb.restore()
        sb.interrupt_handle().kill()
        t.join()
        sb.restore()
        assert sb.call("Add", 1, 2) == 3


def test_bad_wait_is_rejected(sandbox):
    with pytest.raises(ValueError):
        sandbox.call("Add", 1, 2, wait=-1)
    with pytest.raises(hl.InvalidConfiguration):
        hl.SandboxConfiguration(max_wait_time=-1)


def test_close_while_a_call_waits_raises_sandbox_closed():
    sb = make_sandbox()
    t, out = _start_spin(sb)
    waited: list = []

    def waiter() -> None:
        try:
            sb.call("Add", 1, 2)
        except BaseException as e:
            waited.append(e)

    w = threading.Thread(target=waiter)
    w.start()
    time.sleep(0.05)
    sb.close()
    t.join()
    w.join(10)
    assert isinstance(out[0], hl.ExecutionCanceled)
    assert isinstance(waited[0], hl.SandboxClosed), waited


def test_close_while_another_thread_restores_is_typed():
    for _ in range(30):
        sb = make_sandbox()
        errors: list = []
        stop = threading.Event()

        def restorer(sb: hl.MultiUseSandbox = sb, stop: threading.Event = stop, errors: list = errors) -> None:
            while not stop.is_set():
                try:
                    sb.call("SetStatic", 5)
                    sb.restore()
                except hl.SandboxClosed:
                    return
                except (hl.ExecutionCanceled, hl.PoisonedSandbox):
                    continue  # close() killed the call it found running
                except BaseException as e:
                    errors.append(e)
                    return

        t = threading.Thread(target=restorer)
        t.start()
        time.sleep(0.002)
        sb.close()
        stop.set()
        t.join()
        assert errors == []


def test_close_refused_inside_a_host_function_leaves_the_sandbox_usable():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    box: list = []
    refused: list = []

    def host_add(a: int, b: int) -> int:
        try:
            box[0].close()
        except hl.HyperlightError as e:
            refused.append(e)
        return a + b

    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        box.append(sb)
        assert sb.call("CallHostAdd", 1, 2) == 3
        assert len(refused) == 1
        assert sb.call("Echo", "still open") == "still open"


def test_a_call_from_its_own_host_function_is_refused_not_deadlocked():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    box: list = []

    def host_add(a: int, b: int) -> int:
        return box[0].call("Add", a, b)

    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        box.append(sb)
        with pytest.raises(hl.HostFunctionError) as ei:
            sb.call("CallHostAdd", 1, 2)
        assert isinstance(ei.value.__cause__, hl.SandboxBusy)


def test_kill_in_a_tight_loop_does_not_starve_the_call(sandbox):
    """A kill while a cancel is pending does nothing: the call it targets ends promptly."""
    h = sandbox.interrupt_handle()
    stop = threading.Event()
    kills = [0]

    def killer() -> None:
        while not stop.is_set():
            h.kill()
            kills[0] += 1

    t = threading.Thread(target=killer)
    t.start()
    try:
        start = time.monotonic()
        for _ in range(5):
            with pytest.raises(hl.ExecutionCanceled):
                sandbox.call("Spin")
            sandbox.restore()
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        t.join()
    assert elapsed < 20, elapsed
    assert kills[0] > 0
