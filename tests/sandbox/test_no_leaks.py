"""Creating, calling and releasing thousands of sandboxes leaves nothing behind: no file
descriptors (/proc/self/fd), no mappings (/proc/self/maps), no threads
(threading.active_count() and /proc/self/task).

Each release path is checked: close(), the `with` block, garbage collection (the last
reference dropped, then gc.collect(): a sandbox sits in a reference cycle through its
call path's bound exit handler), and the unusual ones: a poisoned sandbox, a close()
that has to kill a running call, and an evolve() that fails in the guest's init.

A sandbox holds two KVM file descriptors (VM and vCPU) and two mappings (guest
memory, kvm_run), so a leak of even one sandbox in a thousand shows. Python's own
allocator may keep a few arenas mapped after a burst of allocations: /proc/self/maps is
allowed a small slack, far below one mapping per sandbox."""
from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm

SIMPLE = hl.GuestBinary.from_path(hl.guests.path("simpleguest"))
HOSTILE = hl.GuestBinary.from_path(hl.guests.path("hostileguest"))
MAPS_SLACK = 16  # lines of /proc/self/maps the Python allocator may keep after a burst


def snapshot() -> dict[str, int]:
    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return {"fds": len(os.listdir("/proc/self/fd")), "maps": maps,
            "threads": threading.active_count(), "tasks": len(os.listdir("/proc/self/task"))}


def assert_nothing_left(before: dict[str, int], n: int, how: str) -> None:
    after = snapshot()
    assert after["fds"] == before["fds"], f"{how}: {after['fds'] - before['fds']} fds left after {n} sandboxes"
    assert after["threads"] == before["threads"], f"{how}: threads {before['threads']} -> {after['threads']}"
    assert after["tasks"] == before["tasks"], f"{how}: /proc/self/task {before['tasks']} -> {after['tasks']}"
    assert after["maps"] <= before["maps"] + MAPS_SLACK, (
        f"{how}: /proc/self/maps grew by {after['maps'] - before['maps']} lines after {n} sandboxes")


def simple() -> hl.MultiUseSandbox:
    return hl.UninitializedSandbox(SIMPLE).evolve()


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Everything created once per process (the /dev/kvm fd, the watchdog thread, module
    state) exists before the baselines are taken."""
    with simple() as sb:
        assert sb.call("Add", 1, 2, timeout=10) == 3
    gc.collect()


def test_two_thousand_sandboxes_closed():
    before = snapshot()
    n = 2000
    for i in range(n):
        sb = simple()
        assert sb.call("Add", i, 1) == i + 1
        sb.close()
    del sb
    assert_nothing_left(before, n, "close()")


def test_context_manager():
    before = snapshot()
    n = 500
    for _ in range(n):
        with simple() as sb:
            assert sb.call("Echo", "x", timeout=10) == "x"
    del sb
    assert_nothing_left(before, n, "with block")


def test_garbage_collection():
    before = snapshot()
    n = 500
    for i in range(n):
        sb = simple()
        assert sb.call("Add", i, 2) == i + 2
        h = sb.interrupt_handle()  # handles are dropped with it
        del sb, h
        if i % 50 == 49:
            gc.collect()
    assert_nothing_left(before, n, "garbage collection")


def test_poisoned_sandboxes():
    before = snapshot()
    n = 200
    for i in range(n):
        sb = hl.UninitializedSandbox(HOSTILE).evolve()
        with pytest.raises((hl.GuestFault, hl.GuestProtocolError)):
            sb.call("ReadAddress", 0) if i % 2 else sb.call("CorruptTop", 3)
        assert sb.poisoned
        if i % 4 < 2:
            sb.close()
        del sb
    assert_nothing_left(before, n, "poisoned sandboxes (closed or collected)")


def test_close_that_kills_a_running_call():
    before = snapshot()
    n = 100
    for _ in range(n):
        sb = simple()
        handle = sb.interrupt_handle()
        out = []
        t = threading.Thread(target=lambda out=out, sb=sb: out.append(
            pytest.raises(hl.ExecutionCanceled, sb.call, "Spin")))
        t.start()
        while not handle.is_running() and t.is_alive():
            t.join(0.0005)
        sb.close()
        t.join(30)
        assert not t.is_alive() and len(out) == 1
        del sb, handle, t, out
    assert_nothing_left(before, n, "close() of a running sandbox")


def test_failed_evolve():
    before = snapshot()
    n = 200
    cfg = hl.SandboxConfiguration(heap_size=4096)  # too small for the guest's function table
    for _ in range(n):
        with pytest.raises(hl.GuestAborted, match="out of heap"):
            hl.UninitializedSandbox(HOSTILE, cfg).evolve()
    assert_nothing_left(before, n, "failed evolve()")


def test_closed_sandboxes_that_are_still_referenced_hold_nothing():
    before = snapshot()
    n = 200
    kept = []
    for i in range(n):
        sb = simple()
        assert sb.call("Add", i, 3, timeout=3600) == i + 3
        sb.close()
        kept.append(sb)  # closed, but alive
    del sb
    assert_nothing_left(before, n, "closed sandboxes kept in a list")
    assert all(k.poisoned is False for k in kept)


def test_a_time_limit_does_not_keep_its_sandbox_alive():
    """A disarmed deadline drops its action at once: the watchdog must not keep a sandbox
    (its guest memory, its snapshots) alive until the deadline passes."""
    from hlsandbox.sandbox.watchdog import WATCHDOG
    pending = WATCHDOG.pending()
    sb = simple()
    for _ in range(100):
        assert sb.call("Add", 1, 2, timeout=3600) == 3
    assert WATCHDOG.pending() == pending
    ref = weakref.ref(sb)
    sb.close()
    del sb
    gc.collect()
    assert ref() is None


def test_a_time_limit_that_fired_does_not_keep_its_sandbox_alive():
    sb = simple()
    with pytest.raises(hl.ExecutionTimeout):
        sb.call("Spin", timeout=0.05)
    ref = weakref.ref(sb)
    sb.close()
    del sb
    gc.collect()
    assert ref() is None
