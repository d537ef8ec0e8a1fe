"""Ctrl-C, long time limits and the process's file limit."""
from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hlsandbox as hl
from hlsandbox.sandbox.watchdog import WATCHDOG

from helpers import make_sandbox

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parents[2]

SIGINT_CHILD = textwrap.dedent("""
    import sys, threading, time
    import hlsandbox as hl
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    h = sb.interrupt_handle()

    def announce():
        while not h.is_running():
            time.sleep(0.001)
        print("running", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        sb.call("Spin")
    except KeyboardInterrupt:
        assert sb.poisoned
        sb.restore()
        print("interrupted", sb.call("Add", 1, 2), flush=True)
""")


def test_ctrl_c_interrupts_a_running_call_and_leaves_it_restorable():
    p = subprocess.Popen([sys.executable, "-c", SIGINT_CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "running"
        start = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert time.monotonic() - start < 5
    assert out.strip() == "interrupted 3"
    assert p.returncode == 0


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 2.0 ** 63])
def test_huge_timeouts_never_kill_the_watchdog(sandbox, timeout):
    try:
        assert sandbox.call("Add", 1, 2, timeout=timeout) == 3
    except ValueError as e:
        assert "timeout" in str(e)
    # The shared watchdog still stops calls.
    with pytest.raises(hl.ExecutionTimeout):
        sandbox.call("Spin", timeout=0.2)
    assert WATCHDOG._thread is None or WATCHDOG._thread.is_alive()


def test_infinite_timeout_means_no_limit(sandbox):
    assert sandbox.call("Echo", "x", timeout=float("inf")) == "x"
    with pytest.raises(ValueError, match="timeout"):
        sandbox.call("Echo", "x", timeout=1e300)
    with pytest.raises(ValueError):
        WATCHDOG.arm(math.inf, lambda: None)


def test_configured_infinite_limit_is_no_limit():
    with make_sandbox(hl.SandboxConfiguration(max_execution_time=math.inf, max_wait_time=math.inf)) as sb:
        assert sb.call("Add", 1, 2) == 3
    with pytest.raises(hl.InvalidConfiguration, match="max_execution_time"):
        hl.SandboxConfiguration(max_execution_time=1e300)


def test_timeout_error_is_caught_as_timeout_error(sandbox):
    with pytest.raises(TimeoutError):
        sandbox.call("Spin", timeout=0.1)


def test_running_out_of_file_descriptors_names_the_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sandboxes = []
    held = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with pytest.raises(OSError) as ei:
            while True:  # hold descriptors until a sandbox cannot be made
                held.append(os.open(os.devnull, os.O_RDONLY))
                if len(held) % 16 == 0:
                    sandboxes.append(make_sandbox())
        # os.open itself may be the one to fail; then a sandbox is tried with no fd left.
        if not isinstance(ei.value, hl.HyperlightError):
            os.close(held.pop())
            with pytest.raises(OSError) as ei:
                sandboxes.append(make_sandbox())
    finally:
        for s in sandboxes:
            s.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(ei.value, hl.OutOfFileDescriptors), repr(ei.value)
    assert "ulimit -n" in str(ei.value) and "256" in str(ei.value)


SIGINT_WAITING_CHILD = textwrap.dedent("""
    import threading, time
    import hlsandbox as hl
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    h = sb.interrupt_handle()

    def spin():
        try:
            sb.call("Spin")
        except hl.ExecutionCanceled:
            pass

    t = threading.Thread(target=spin)
    t.start()
    while not h.is_running():
        time.sleep(0.001)
    print("waiting", flush=True)
    try:
        sb.call("Add", 1, 2)  # waits for Spin, on the main thread
    except KeyboardInterrupt:
        print("interrupted while waiting", flush=True)
    h.kill()
    t.join()
""")


def test_ctrl_c_interrupts_a_call_waiting_for_the_sandbox():
    p = subprocess.Popen([sys.executable, "-c", SIGINT_WAITING_CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "waiting"
        time.sleep(0.2)  # let the call reach its wait
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert out.strip() == "interrupted while waiting"
    assert p.returncode == 0
