"""Stopping calls: kill() from another thread, time limits, and what a kill must not do."""
from __future__ import annotations

import threading
import time

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


def kill_when_running(handle: hl.InterruptHandle, deadline: float = 10.0) -> threading.Thread:
    def loop() -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if handle.is_running() and handle.kill():
                return
            time.sleep(0.001)

    t = threading.Thread(target=loop)
    t.start()
    return t


def test_kill_stops_a_spinning_guest(sandbox):
    t = kill_when_running(sandbox.interrupt_handle())
    with pytest.raises(hl.ExecutionCanceled) as ei:
        sandbox.call("Spin")
    t.join()
    assert not isinstance(ei.value, hl.ExecutionTimeout)
    assert sandbox.poisoned
    with pytest.raises(hl.PoisonedSandbox):
        sandbox.call("Add", 1, 2)


def test_kill_when_idle_does_not_cancel_the_next_call(sandbox):
    h = sandbox.interrupt_handle()
    assert h.kill() is False
    assert not h.is_running()
    assert sandbox.call("Add", 1, 2) == 3
    assert not sandbox.poisoned


def test_timeout_argument():
    with make_sandbox() as sb:
        with pytest.raises(hl.ExecutionTimeout):
            sb.call("Spin", timeout=0.2)
        assert sb.poisoned


def test_max_execution_time_configuration():
    with make_sandbox(hl.SandboxConfiguration(max_execution_time=0.2)) as sb:
        assert sb.call("Add", 1, 2) == 3
        with pytest.raises(hl.ExecutionTimeout):
            sb.call("Spin")


def test_timeout_that_does_not_fire_leaves_no_trace():
    with make_sandbox() as sb:
        for _ in range(50):
            assert sb.call("Add", 1, 2, timeout=0.05) == 3
        time.sleep(0.1)  # every armed deadline has passed: none may hit this call
        assert sb.call("Sum", 1000, timeout=5) > 0


def test_bad_timeout(sandbox):
    with pytest.raises(ValueError, match="timeout"):
        sandbox.call("Add", 1, 2, timeout=0)
    assert sandbox.call("Add", 1, 2) == 3


def test_kill_during_host_call_takes_effect_after_it_returns():
    handle_box = []
    returned = []

    def slow_add(a: hl.i32, b: hl.i32) -> hl.i32:
        assert handle_box[0].kill() is True
        time.sleep(0.05)
        returned.append(True)
        return a + b

    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", slow_add)
    with u.evolve() as sb:
        handle_box.append(sb.interrupt_handle())
        with pytest.raises(hl.ExecutionCanceled):
            sb.call("CallHostAdd", 1, 2)
        assert returned == [True]


def test_concurrent_call_that_asks_not_to_wait_is_refused(sandbox):
    errors = []

    def spin() -> None:
        try:
            sandbox.call("Spin")
        except hl.ExecutionCanceled as e:
            errors.append(e)

    t = threading.Thread(target=spin)
    t.start()
    h = sandbox.interrupt_handle()
    while not h.is_running():
        time.sleep(0.001)
    with pytest.raises(hl.SandboxBusy, match="already running"):
        sandbox.call("Add", 1, 2, wait=False)
    with pytest.raises(hl.SandboxBusy, match="waited 0.05 s"):
        sandbox.call("Add", 1, 2, wait=0.05)
    h.kill()
    t.join()
    assert len(errors) == 1


def test_close_while_another_thread_runs_kills_it():
    sb = make_sandbox()
    result = []

    def spin() -> None:
        try:
            sb.call("Spin")
        except hl.ExecutionCanceled:
            result.append("canceled")

    t = threading.Thread(target=spin)
    t.start()
    while not sb.interrupt_handle().is_running():
        time.sleep(0.001)
    sb.close()
    t.join(10)
    assert result == ["canceled"]
    with pytest.raises(hl.HyperlightError, match="closed"):
        sb.call("Add", 1, 2)


def test_kill_after_close_is_safe():
    sb = make_sandbox()
    h = sb.interrupt_handle()
    sb.close()
    assert h.kill() is False


def test_sandboxes_run_in_parallel_threads():
    sbs = [make_sandbox() for _ in range(2)]
    out = {}

    def work(i: int) -> None:
        out[i] = [sbs[i].call("Add", i, k) for k in range(200)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, sb in enumerate(sbs):
        assert out[i] == [i + k for k in range(200)]
        sb.close()
