"""Kill stress: a thousand kills at random moments, and no call may hang or be hit by a
kill meant for another.

Kills land anywhere: before a call starts, while the guest spins, inside a host function,
between two KVM_RUNs of a host-call loop, just after the guest's last exit, and between
calls. The properties:

- every call returns, with its result or ExecutionCanceled (joins have timeouts; a
  thread still alive fails the test);
- a call is canceled only if a kill() returned True while it ran: a kill between calls
  (which returns False) never cancels a later call;
- a canceled call poisons its sandbox, which is then restored (half the time) or
  replaced by a new one; a call that completed leaves the sandbox healthy.

No timing is asserted; sleeps only spread the kills. The random seed is in every
assertion message."""
from __future__ import annotations

import collections
import queue
import random
import threading
import time

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm

HOSTILE = hl.GuestBinary.from_path(hl.guests.path("hostileguest"))
JOIN_TIMEOUT = 30.0  # seconds; only reached if something hangs
KILLS = 1000
LOOP_N = 30  # host calls per HostAddLoop: ~1.5 ms on kvm-pvm, so kills land before, in and after it


def new_sandbox() -> hl.MultiUseSandbox:
    u = hl.UninitializedSandbox(HOSTILE)
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    return u.evolve()


class Worker:
    """A thread that runs the calls it is given, one at a time, and reports each outcome."""

    def __init__(self) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="kill-stress-worker", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.requests.get()
            if item is None:
                return
            sb, name, args, kw = item
            try:
                self.results.put(("ok", sb.call(name, *args, **kw)))
            except BaseException as e:  # reported to the test thread, which judges it
                self.results.put(("error", e))

    def submit(self, sb: hl.MultiUseSandbox, name: str, *args, **kw) -> None:
        self.requests.put((sb, name, args, kw))

    def result(self, context: str):
        try:
            return self.results.get(timeout=JOIN_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"a call did not return within {JOIN_TIMEOUT} s ({context})")

    def stop(self) -> None:
        self.requests.put(None)
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "the worker thread is still alive"


def test_a_thousand_kills_at_random_moments():
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    worker = Worker()
    sb = new_sandbox()
    stats: collections.Counter = collections.Counter()
    kills = 0
    try:
        while kills < KILLS:
            ctx = f"seed {seed}, kill {kills}"
            what = rng.choices(["spin", "host_loop", "idle"], weights=[4, 4, 2])[0]
            kw = {"timeout": 60.0} if rng.random() < 0.3 else {}  # the watchdog's call path too
            handle = sb.interrupt_handle()
            if what == "idle":
                # Between calls: the kill finds no call, and must not cancel the next one.
                time.sleep(rng.uniform(0, 0.002))
                assert handle.kill() is False, ctx
                kills += 1
                worker.submit(sb, "HostAddLoop", 3, **kw)
                assert worker.result(ctx) == ("ok", 6), ctx
                stats["idle kill, next call fine"] += 1
                continue

            spin = what == "spin"
            worker.submit(sb, *(("Spin",) if spin else ("HostAddLoop", LOOP_N)), **kw)
            time.sleep(rng.uniform(0, 0.002))
            landed = handle.kill()
            kills += 1
            deadline = time.monotonic() + JOIN_TIMEOUT
            while spin and not landed:  # Spin never ends by itself: kill until a kill lands
                assert time.monotonic() < deadline, f"Spin never started ({ctx})"
                time.sleep(rng.uniform(0, 0.001))
                landed = handle.kill()
                kills += 1
            status, value = worker.result(ctx)
            if status == "error":
                assert type(value) is hl.ExecutionCanceled, f"{value!r} ({ctx})"
                assert landed, f"a call was canceled though no kill() landed while it ran ({ctx})"
                assert sb.poisoned, ctx
                with pytest.raises(hl.PoisonedSandbox):
                    sb.call("Echo", "x")
                if rng.random() < 0.5:
                    sb.restore()
                    assert not sb.poisoned, ctx
                    stats["restored"] += 1
                else:
                    sb.close()
                    sb = new_sandbox()
                stats[f"{what} canceled"] += 1
            else:
                assert not spin, f"Spin returned {value!r} ({ctx})"
                assert value == LOOP_N * (LOOP_N - 1) // 2 + LOOP_N, ctx
                assert not sb.poisoned, ctx
                # landed: the kill arrived after the guest's last exit; it must not leak
                # into the next call, which the next iteration checks.
                stats["host_loop completed" + (" (late kill)" if landed else "")] += 1
        # The last sandbox still works, and so does a brand-new one.
        worker.submit(sb, "HostAddLoop", 10)
        assert worker.result(f"seed {seed}, final") == ("ok", 55)
    finally:
        worker.stop()
        sb.close()
    print(f"kill stress (seed {seed}): {kills} kills; {dict(stats)}")
    assert stats["spin canceled"] > 0 and stats["idle kill, next call fine"] > 0
    assert stats["host_loop canceled"] + stats["host_loop completed"] + stats[
        "host_loop completed (late kill)"] > 0


def test_kills_across_parallel_sandboxes():
    """Three sandboxes, each driven by its own thread through spins and host-call loops;
    one killer thread kills a random one at random moments. Each sandbox's cancellations
    never outnumber the kills that landed on it."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    n_workers, n_kills = 3, 300
    stop = threading.Event()
    lock = threading.Lock()
    handles: list[hl.InterruptHandle] = [None] * n_workers  # type: ignore[list-item]
    landed = [0] * n_workers
    canceled = [0] * n_workers
    completed = [0] * n_workers
    errors: list[str] = []

    def work(i: int) -> None:
        wrng = random.Random(seed + i + 1)
        sb = new_sandbox()
        with lock:
            handles[i] = sb.interrupt_handle()
        try:
            while not stop.is_set():
                spin = wrng.random() < 0.3
                try:
                    if spin:
                        sb.call("Spin")
                        errors.append(f"worker {i}: Spin returned")
                        return
                    assert sb.call("HostAddLoop", LOOP_N) == LOOP_N * (LOOP_N + 1) // 2
                    completed[i] += 1
                except hl.ExecutionCanceled:
                    with lock:
                        canceled[i] += 1
                        if canceled[i] > landed[i]:
                            errors.append(f"worker {i}: {canceled[i]} cancellations, {landed[i]} kills landed")
                    if wrng.random() < 0.5:
                        sb.restore()  # the handle stays valid
                    else:
                        with lock:
                            sb.close()
                            sb = new_sandbox()
                            handles[i] = sb.interrupt_handle()
        except BaseException as e:  # reported below
            errors.append(f"worker {i}: {e!r}")
        finally:
            sb.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_workers)]
    for t in threads:
        t.start()
    try:
        kills = 0
        while kills < n_kills and not errors:
            time.sleep(rng.uniform(0, 0.002))
            i = rng.randrange(n_workers)
            with lock:
                h = handles[i]
                if h is not None and h.kill():
                    landed[i] += 1
            kills += 1
    finally:
        stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for i, t in enumerate(threads):
            while t.is_alive() and time.monotonic() < deadline:  # a worker may be spinning
                with lock:
                    if handles[i] is not None and handles[i].kill():
                        landed[i] += 1
                t.join(0.01)
        alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still alive: {alive} (seed {seed})"
    assert not errors, f"{errors} (seed {seed})"
    assert sum(canceled) > 0 and sum(completed) > 0, (canceled, completed, seed)


def test_random_time_limits():
    """The watchdog kills at its deadline: calls end with their result or ExecutionTimeout,
    and a deadline armed for one call never stops a later one."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    sb = new_sandbox()
    outcomes: collections.Counter = collections.Counter()
    try:
        for i in range(150):
            spin = rng.random() < 0.3
            timeout = rng.uniform(0.0005, 0.003)
            try:
                if spin:
                    sb.call("Spin", timeout=timeout)
                    pytest.fail(f"Spin returned (seed {seed}, call {i})")
                assert sb.call("HostAddLoop", LOOP_N, timeout=timeout) == LOOP_N * (LOOP_N + 1) // 2
                outcomes["completed"] += 1
                # Let this call's deadline pass, then call without a limit: it must not be hit.
                time.sleep(timeout)
                assert sb.call("HostAddLoop", 3) == 6
            except hl.ExecutionTimeout:
                assert sb.poisoned
                outcomes["timed out"] += 1
                sb.restore()
    finally:
        sb.close()
    assert outcomes["timed out"] > 0, (outcomes, seed)


def test_interrupt_handle_of_a_closed_sandbox():
    sb = new_sandbox()
    sb.close()
    with pytest.raises(hl.HyperlightError, match="closed"):
        sb.interrupt_handle()


CLOSE_DURING_DECODE = """
import gc, sys, threading, time
import hlsandbox as hl
from hlsandbox.mem.system_tables import PORT_HALT

host_called = threading.Event()

def failing_add(a, b):
    host_called.set()
    raise ValueError("no adding today")

u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
u.register("HostAdd", failing_add, params=(hl.i32, hl.i32), returns=hl.i32)
sb = u.evolve()
vm = sb._vm
started = threading.Event()

def slow_gc(phase, info):
    # A GC pass while the guest's error record is decoded (the guest has halted after the
    # host call, the vCPU is still claimed) lets another thread run in the middle of it.
    if phase == "start" and host_called.is_set() and not started.is_set() and vm.active \
            and vm.io_detail()["port"] == PORT_HALT:
        started.set()
        time.sleep(0.05)

result = []
def call():
    try:
        sb.call("CallHostAdd", 1, 2, timeout=float(sys.argv[1]) if sys.argv[1] != "none" else None)
    except hl.HyperlightError as e:
        result.append(f"{type(e).__name__}: {e}")

gc.callbacks.append(slow_gc)
gc.set_threshold(1)
t = threading.Thread(target=call)
t.start()
started.wait(10)
sb.close()  # must wait for the decoding, not unmap guest memory under it
t.join(10)
print(started.is_set(), result)
"""


@pytest.mark.parametrize("timeout", ["none", "10"])
def test_close_waits_for_the_result_to_be_decoded(timeout):
    """close() from another thread while a call's result is being decoded must not unmap
    guest memory under the decoder (it crashed the process before the decode moved inside
    the claimed-vCPU window). Run in a child process: a regression is a SIGSEGV."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", CLOSE_DURING_DECODE, timeout], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.strip().startswith("True ['HostFunctionError: "), r.stdout
    assert "no adding today" in r.stdout
