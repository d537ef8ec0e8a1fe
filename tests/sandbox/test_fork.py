"""fork(): what the parent created is refused in the child, typed; new sandboxes work."""
from __future__ import annotations

import os
import sys
import traceback

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


def in_child(fn) -> int:
    """Runs fn() in a forked child; returns its exit status (0: fn returned, 1: it raised,
    anything else: the child died, e.g. -SIGSEGV)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_parent_objects_raise_used_after_fork_in_the_child():
    with make_sandbox() as sb:
        handle = sb.interrupt_handle()
        snap = sb.snapshot()

        def child() -> None:
            for use in (lambda: sb.call("Echo", "x"), lambda: sb.call("Spin", timeout=1.0), sb.restore,
                        lambda: sb.restore(snap), sb.snapshot, lambda: sb.read_memory(0, 8), handle.kill,
                        handle.is_running, sb.interrupt_handle):
                try:
                    use()
                except hl.UsedAfterFork as e:
                    assert "parent" in str(e)
                else:
                    raise AssertionError(f"{use} did not raise UsedAfterFork")
            sb.close()  # closing the child's copy is allowed

        assert in_child(child) == 0
        assert sb.call("Echo", "parent still works") == "parent still works"


def test_new_sandboxes_work_in_the_child():
    with make_sandbox() as parent:
        parent.call("Add", 1, 1, timeout=5)  # the parent's watchdog thread exists
        def child() -> None:
            with make_sandbox() as sb:
                assert sb.call("Add", 2, 3) == 5
                try:  # time limits work in the child (its own watchdog thread)
                    sb.call("Spin", timeout=0.2)
                except hl.ExecutionTimeout:
                    pass
                else:
                    raise AssertionError("Spin was not stopped")
            assert parent.poisoned is False

        assert in_child(child) == 0
        assert parent.call("Add", 1, 1) == 2


def test_a_parents_snapshot_starts_sandboxes_in_the_child():
    """A snapshot is an immutable image (a memfd): unlike a VM it is valid in the child,
    which makes pre-forked workers cheap."""
    from helpers import host_add
    with make_sandbox() as sb:
        sb.call("SetStatic", 9)
        snap = sb.snapshot()

        def child() -> None:
            with hl.MultiUseSandbox.from_snapshot(
                    snap, host_functions={"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}) as s2:
                assert s2.call("GetStatic") == 9
                assert s2.call("CallHostAdd", 2, 2) == 4

        assert in_child(child) == 0
        snap.close()
