"""Hot mode (MultiUseSandbox.hot): what only a hot sandbox does. Every call, error,
snapshot and cancellation test also runs hot (tests/conftest.py, HOT_MODULES)."""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm

HOSTILE = hl.guests.path("hostileguest")
LONG_STRESS = os.environ.get("HLSANDBOX_LONG_FUZZ") == "1"


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _vcpu_thread(before: set[str]) -> set[str]:
    """The one thread started since `before` (the vCPU thread). Only it is checked later:
    a thread of an earlier test (an executor's, a server's) may come and go meanwhile."""
    new = _threads() - before
    assert len(new) == 1, new
    return new


def test_hot_calls_take_no_exit():
    with make_sandbox() as sb:
        with sb.hot(spin=1.0):
            assert sb.is_hot
            for i in range(200):
                assert sb.call("Echo", f"x{i}") == f"x{i}"
                assert sb.call("CallHostAdd", i, 1) == i + 1
            hot = sb._hot
            assert hot.wakes == 1  # the one KVM_RUN that entered hot mode
            assert hot.posts >= 600  # 200 HALTs, 200 host calls and their HALTs
        assert not sb.is_hot
        assert sb.call("Echo", "cold again") == "cold again"


def test_leaving_the_block_ends_the_vcpu_thread():
    with make_sandbox() as sb:
        before = _threads()
        with sb.hot(spin=0.5):
            sb.call("Echo", "a")
            vcpu = _vcpu_thread(before)
        assert not _threads() & vcpu
        with sb.hot(spin=0.5):  # again, after a cold call in between
            sb.call("Echo", "b")
            vcpu = _vcpu_thread(before)
        assert not _threads() & vcpu
        sb.call("Echo", "c")
        with sb.hot(spin=0.5):
            sb.call("Echo", "d")
            vcpu = _vcpu_thread(before)
        # close() inside the block ends it too
    assert not _threads() & vcpu


def test_an_idle_hot_sandbox_parks_and_burns_no_cpu():
    with make_sandbox() as sb, sb.hot(spin=0.01):
        sb.call("Echo", "warm")
        time.sleep(0.05)  # past the spin period: the guest parked with an exit
        cpu = time.process_time()
        time.sleep(0.3)
        used = time.process_time() - cpu
        assert used < 0.1, f"an idle hot sandbox used {used:.3f} s of CPU in 0.3 s"
        wakes = sb._hot.wakes
        assert sb.call("Echo", "wakes it") == "wakes it"
        assert sb._hot.wakes == wakes + 1


def test_a_long_host_function_blocks_instead_of_spinning():
    def slow(a: int, b: int) -> int:
        time.sleep(0.05)
        return a + b
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", slow, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb, sb.hot(spin=0.002):
        for i in range(3):
            assert sb.call("CallHostAdd", i, 2) == i + 2
        assert sb.call("Echo", "then fast") == "then fast"


def test_hot_is_refused_twice_and_after_close():
    sb = make_sandbox()
    with sb.hot():
        with pytest.raises(hl.HyperlightError, match="already hot"):
            sb.hot().__enter__()
    sb.close()
    with pytest.raises(hl.HyperlightError, match="closed"):
        sb.hot().__enter__()


@pytest.mark.parametrize("spin", [0, -1, True, "1", 61])
def test_spin_is_checked(spin):
    with make_sandbox() as sb, pytest.raises(ValueError, match="spin"):
        sb.hot(spin=spin)


def test_close_from_another_thread_during_a_hot_call():
    sb = make_sandbox()
    hot = sb.hot(spin=0.5)
    hot.__enter__()
    errors = []

    def run():
        try:
            sb.call("Spin")
        except hl.HyperlightError as e:
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    while not sb.interrupt_handle().is_running():
        time.sleep(0.001)
    time.sleep(0.02)
    sb.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], hl.ExecutionCanceled)


def test_snapshot_and_restore_while_hot():
    with make_sandbox() as sb, sb.hot(spin=0.5):
        sb.call("SetStatic", 5)
        snap = sb.snapshot()
        sb.call("SetStatic", 9)
        assert sb.call("GetStatic") == 9
        sb.restore(snap)
        assert sb.call("GetStatic") == 5
        sb.restore()
        assert sb.call("GetStatic") == 0
        assert sb.call("SetStatic", 3, restore=True) == 3
        assert sb.call("GetStatic") == 0


@pytest.mark.parametrize("how", ["restore", "call_restore"])
def test_a_restored_hot_sandbox_waits_in_the_mailbox(how):
    """A hot restore re-arms the guest: its next call is answered through the mailbox,
    with no KVM_RUN (docs/abi.md, "Hot mode": re-arming)."""
    with make_sandbox() as sb, sb.hot(spin=1.0):
        hot = sb._hot
        for i in range(1, 21):
            if how == "restore":
                sb.call("SetStatic", i)
                sb.restore()
            else:
                assert sb.call("SetStatic", i, restore=True) == i
            wakes = hot.wakes
            assert sb.call("GetStatic") == 0
            assert hot.wakes == wakes, "the call after a restore woke the vCPU"
        assert hot.rearms == 20
        # A snapshot of a re-armed guest parks it where it waits; restoring it re-arms again.
        sb.restore()
        snap = sb.snapshot()
        sb.call("SetStatic", 5)
        sb.restore(snap)
        wakes = hot.wakes
        assert sb.call("GetStatic") == 0
        assert hot.wakes == wakes


def test_a_restored_hot_sandbox_parks_when_idle():
    with make_sandbox() as sb, sb.hot(spin=0.01):
        sb.call("SetStatic", 3)
        sb.restore()
        time.sleep(0.05)  # past the spin period: the re-armed guest parked with an exit
        cpu = time.process_time()
        time.sleep(0.3)
        used = time.process_time() - cpu
        assert used < 0.1, f"an idle re-armed sandbox used {used:.3f} s of CPU in 0.3 s"
        wakes = sb._hot.wakes
        assert sb.call("GetStatic") == 0
        assert sb._hot.wakes == wakes + 1
        sb.restore()  # leaving the blocks parks a re-armed guest and closes the sandbox


@pytest.mark.parametrize("what, match", [(0, "state 0xdeadbeef00"), (1, "not an exit"), (2, "not an exit"),
                                         (3, "output buffer")])
def test_a_guest_that_breaks_the_mailbox(what, match):
    u = hl.UninitializedSandbox(HOSTILE)
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb, sb.hot(spin=0.005):
        with pytest.raises(hl.GuestProtocolError, match=match):
            sb.call("HotMailbox", what, timeout=10)  # the timeout only guards the test
        assert sb.poisoned
        sb.restore()
        assert sb.call("Echo", "restored") == "restored"


def test_a_guest_that_answers_and_keeps_running_is_stopped_by_the_restore():
    """HaltThenRun posts its answer by hand and never waits in the mailbox again: the call
    returns its error, and the restore stops the guest (it does not park) and resets it."""
    u = hl.UninitializedSandbox(HOSTILE)
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb, sb.hot(spin=0.5):
        for _ in range(3):
            with pytest.raises(hl.GuestError, match="answered by hand, still running"):
                sb.call("HaltThenRun", timeout=10)  # the timeout only guards the test
            assert not sb.poisoned  # the call itself ended cleanly
            sb.restore()
            assert not sb.poisoned
            assert sb.call("Echo", "reset") == "reset"


def _stress(sb: hl.MultiUseSandbox, n: int, seed: int) -> None:
    rng = random.Random(seed)
    limit = sb.config.input_data_size - 256
    for i in range(n):
        size = rng.choice((0, 1, 7, 8, 9, 63, 64, 65, rng.randrange(limit), rng.randrange(4096)))
        data = rng.randbytes(size)
        kind = i % 3
        if kind == 0:
            assert sb.call("EchoBytes", data) == data
        elif kind == 1:  # the request stays on the input buffer under the response
            data = data[:limit // 2 - 64]
            assert sb.call("CallRawHost", 1, data) == data[::-1]
        else:
            text = data.hex()[:size]
            assert sb.call("Echo", text) == text


@pytest.mark.parametrize("spin", [1.0, 0.00002])  # spinning throughout; parking at almost every exit
def test_stress_byte_for_byte(spin):
    """Thousands of calls and host calls of varying sizes, every byte checked: the records
    written before the flag are the ones read after it (docs/abi.md, "Hot mode")."""
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(input_data_size="64Ki",
                                                                                        output_data_size="64Ki"))
    u.register_raw(1, lambda req: bytes(req)[::-1])
    with u.evolve() as sb, sb.hot(spin=spin):
        _stress(sb, 100_000 if LONG_STRESS else 10_000, seed=int(spin * 1e6))


def test_hot_sandbox_from_snapshot():
    with make_sandbox() as sb:
        sb.call("SetStatic", 4)
        snap = sb.snapshot()
    with hl.MultiUseSandbox.from_snapshot(snap, host_functions={"HostAdd": (lambda a, b: a + b,
                                                                           (hl.i32, hl.i32), hl.i32)}) as sb2:
        with sb2.hot(spin=0.5):
            assert sb2.call("GetStatic") == 4
            assert sb2.call("CallHostAdd", 2, 2) == 4
    snap.close()


def test_i686_cannot_be_hot():
    u = hl.UninitializedSandbox(hl.guests.path("nanvixlike"))
    u.register_raw(1, lambda r: b"pong")
    u.register_raw(2, lambda r: b"")
    with u.evolve() as sb, pytest.raises(hl.InvalidConfiguration, match="amd64"):
        sb.hot().__enter__()


def test_a_dropped_hot_sandbox_ends_its_thread():
    import gc
    sb = make_sandbox()
    before = _threads()
    sb.hot(0.5).__enter__()  # never left: dropping the sandbox must end the thread
    sb.call("Echo", "spinning now")
    vcpu = _vcpu_thread(before)
    del sb
    gc.collect()
    assert not _threads() & vcpu


def test_a_forked_child_refuses_hot_calls():
    with make_sandbox() as sb, sb.hot(spin=0.5) as hot:
        sb.call("Echo", "parent")
        pid = os.fork()
        if pid == 0:  # the child: a typed error, then leaving the block must not touch the parent's thread
            code = 1
            try:
                sb.call("Echo", "child")
            except hl.HyperlightError as e:
                code = 0 if "forked child" in str(e) else 2
            hot.__exit__(None, None, None)
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sb.call("Echo", "parent again") == "parent again"


@pytest.mark.parametrize("hot", [False, True])
def test_ctrl_c_stops_a_call(hot):
    import signal
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    with make_sandbox() as sb:
        if hot:
            sb.hot(0.002).__enter__()  # left by close()
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                sb.call("Spin", timeout=10)
        finally:
            timer.cancel()
        assert sb.poisoned
        sb.restore()
        assert sb.call("Echo", "after ^C") == "after ^C"


def test_a_call_that_fills_the_dirty_ring():
    """More pages written than the dirty ring holds: KVM exits to harvest it mid-call,
    and the hot path runs the guest on."""
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(heap_size="40Mi"))
    with u.evolve() as sb, sb.hot(spin=0.5):
        addr = sb.call("Malloc", 24 << 20)
        assert addr
        runs = sb._hot.wakes
        assert sb.call("WritePages", addr, 6000) == 6000
        if sb._vm.uses_dirty_ring:
            assert sb._hot.wakes > runs  # KVM_RUN ended with the ring full and was run again
        assert sb.read_memory(addr + 5999 * 4096, 1) != b"\0"
        sb.restore()
        assert sb.read_memory(addr + 5999 * 4096, 1) == b"\0"
        assert sb.call("Echo", "after") == "after"


def test_more_hot_sandboxes_than_cores():
    """Three hot sandboxes called from three threads on a machine with fewer free cores:
    slower, but every call answers correctly and nothing hangs."""
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with make_sandbox() as sb, sb.hot(spin=0.001):
                for i in range(300):
                    assert sb.call("Echo", f"{k}-{i}") == f"{k}-{i}"
                    assert sb.call("CallHostAdd", k, i) == k + i
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_the_caller_blocks_during_a_long_guest_call():
    """After the spin period the calling thread sleeps until the guest answers (the
    guest sees it blocked and parks to wake it): it does not spin through a long call."""
    with make_sandbox() as sb:
        n = 1_500_000_000  # ~0.2-0.5 s natively: well past the spin period on any machine
        expected = sb.call("Sum", n)  # cold
        with sb.hot(spin=0.002):
            cpu = time.thread_time()
            start = time.monotonic()
            assert sb.call("Sum", n) == expected
            wall = time.monotonic() - start
            used = time.thread_time() - cpu
    assert wall > 0.05, "the guest call was too short to show anything"
    assert used < wall / 2, f"the caller used {used:.3f} s of CPU in a {wall:.3f} s call"


def test_a_guest_built_with_the_sdk_and_its_libc_runs_hot(tmp_path):
    from pathlib import Path

    from hlsandbox import sdk
    source = Path(__file__).resolve().parents[1] / "sdk" / "guests" / "libcguest.c"
    try:
        elf = sdk.build([str(source)], str(tmp_path / "libcguest.elf"))
    except hl.GuestBuildError as e:
        pytest.skip(f"cannot build guests here: {e}")
    printed: list[str] = []
    with hl.UninitializedSandbox(str(elf), writer=printed.append).evolve() as sb, sb.hot(spin=0.5):
        assert sb.call("SortBytes", b"zyx") == b"xyz"
        sb.call("Print", "hot\n")
        assert sb._hot.posts > 2 and sb._hot.wakes == 1
    assert "hot" in "".join(printed)


def test_two_threads_close_a_hot_sandbox_at_once():
    for _ in range(20):
        sb = make_sandbox()
        before = _threads()
        sb.hot(spin=0.5).__enter__()
        sb.call("Echo", "x")
        vcpu = _vcpu_thread(before)
        go = threading.Barrier(2)

        def close(sb: hl.MultiUseSandbox, go: threading.Barrier) -> None:
            go.wait()
            sb.close()
        threads = [threading.Thread(target=close, args=(sb, go)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert not _threads() & vcpu
