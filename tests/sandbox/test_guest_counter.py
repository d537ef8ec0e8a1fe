"""GuestCounter: a host-owned u64 the guest reads from the host page at the top of the scratch
region (docs/abi.md). The host is the only writer and never reads it back from guest memory."""
from __future__ import annotations

import threading

import pytest

import hlsandbox as hl
from hlsandbox.sandbox.guest_counter import MAX, GuestCounter

from helpers import host_add

SIMPLEGUEST = hl.guests.path("simpleguest")
PAGE = 4096


def uninitialized(config=None):
    u = hl.UninitializedSandbox(SIMPLEGUEST, config)
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    return u


def in_memory(sb) -> int:
    """The counter as guest memory holds it."""
    return int.from_bytes(sb.read_memory(sb.layout.counter_gpa, 8), "little")


# -- the counter alone (no KVM) ----------------------------------------------------------------------

def test_one_counter_per_sandbox():
    u = uninitialized()
    c = u.guest_counter()
    assert isinstance(c, GuestCounter)
    with pytest.raises(RuntimeError, match="^this sandbox already has a GuestCounter$"):
        u.guest_counter()
    with pytest.raises(RuntimeError, match="already has a GuestCounter"):
        u.guest_counter()  # still refused, and the first counter is unaffected
    assert c.value() == 0


def test_counters_of_different_sandboxes_are_independent():
    a, b = uninitialized().guest_counter(), uninitialized().guest_counter()
    a.increment()
    a.increment()
    b.increment()
    assert (a.value(), b.value()) == (2, 1)


def test_increment_and_decrement_return_the_new_value():
    c = uninitialized().guest_counter()
    assert c.value() == 0
    assert [c.increment() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert c.value() == 5
    assert [c.decrement() for _ in range(3)] == [4, 3, 2]
    assert c.value() == 2
    assert repr(c) == "<GuestCounter 2>"


def test_underflow_at_zero():
    c = uninitialized().guest_counter()
    with pytest.raises(OverflowError, match=r"^GuestCounter underflow: the value is already 0$"):
        c.decrement()
    assert c.value() == 0
    c.increment()
    assert c.decrement() == 0
    with pytest.raises(OverflowError, match="underflow"):
        c.decrement()
    assert c.value() == 0


def test_overflow_at_the_u64_maximum():
    c = uninitialized().guest_counter()
    assert MAX == 2**64 - 1
    c._value = MAX - 1  # 2**64 increments are out of reach: start near the top
    assert c.increment() == MAX
    with pytest.raises(OverflowError, match=r"^GuestCounter overflow: the value is already 2\*\*64 - 1$"):
        c.increment()
    assert c.value() == MAX
    assert c.decrement() == MAX - 1
    assert c.increment() == MAX


def test_thread_safety_without_a_sandbox():
    c = uninitialized().guest_counter()
    run_threads(c, 8, 10_000)


def run_threads(c: GuestCounter, threads: int, n: int) -> None:
    start = threading.Barrier(threads)
    errors = []

    def work(op):
        try:
            start.wait()
            for _ in range(n):
                op()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for op, expected in ((c.increment, threads * n), (c.decrement, 0)):
        ts = [threading.Thread(target=work, args=(op,)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        assert c.value() == expected


# -- with a guest --------------------------------------------------------------------------------------


@pytest.mark.kvm
def test_value_set_before_evolve_lands_in_guest_memory():
    u = uninitialized()
    c = u.guest_counter()
    for _ in range(7):
        c.increment()
    c.decrement()
    with u.evolve() as sb:
        assert sb.layout.counter_gpa == sb.layout.scratch_gpa + sb.layout.scratch_size - 0x1000
        assert in_memory(sb) == 6
        assert sb.call("GetCounter") == 6
        assert sb.call("ReadAddress", sb.layout.counter_gpa) == 6
        assert c.value() == 6


@pytest.mark.kvm
def test_changes_after_evolve_reach_the_guest_at_once():
    u = uninitialized()
    c = u.guest_counter()
    with u.evolve() as sb:
        assert sb.call("GetCounter") == 0
        for expected in range(1, 20):
            c.increment()
            assert sb.call("GetCounter") == expected
            assert in_memory(sb) == expected
        c.decrement()
        assert sb.call("GetCounter") == 18


@pytest.mark.kvm
def test_large_values_reach_the_guest():
    u = uninitialized()
    c = u.guest_counter()
    c._value = MAX - 1
    with u.evolve() as sb:
        assert sb.call("GetCounter") == MAX - 1
        c.increment()
        assert sb.call("GetCounter") == MAX
        with pytest.raises(OverflowError):
            c.increment()
        assert sb.call("GetCounter") == MAX  # a refused increment writes nothing


@pytest.mark.kvm
def test_without_a_counter_the_guest_reads_zero():
    with uninitialized().evolve() as sb:
        assert sb.call("GetCounter") == 0
        assert in_memory(sb) == 0


@pytest.mark.kvm
def test_the_guest_cannot_write_the_counter():
    u = uninitialized()
    c = u.guest_counter()
    c.increment()
    c.increment()
    with u.evolve() as sb:
        addr = sb.layout.counter_gpa
        with pytest.raises(hl.MemoryAccessViolation, match=rf"write of {addr:#x} \(protection violation\)") as ei:
            sb.call("WriteAddress", addr, 99)
        assert ei.value.address == addr and ei.value.access == "write"
        assert sb.poisoned
        assert c.value() == 2
        assert in_memory(sb) == 2
        sb.restore()
        assert sb.call("GetCounter") == 2
        # the rest of the host page is read-only too
        with pytest.raises(hl.MemoryAccessViolation, match="protection violation"):
            sb.call("WriteAddress", addr + 0x800, 1)
        sb.restore()
        assert sb.call("GetCounter") == 2


@pytest.mark.kvm
def test_the_host_never_reads_the_counter_back():
    # Whatever guest memory holds at the counter address (here: written behind the host's
    # back, as a guest with write access could), the host's value stays its own.
    u = uninitialized()
    c = u.guest_counter()
    c.increment()
    with u.evolve() as sb:
        off = sb.layout.host(sb.layout.counter_gpa)
        sb._memory.write_u64(off, 12345)
        assert sb.call("GetCounter") == 12345  # what the guest sees
        assert c.value() == 1  # what the host sees
        assert c.increment() == 2
        assert sb.call("GetCounter") == 2  # the next host write replaces it
        sb._memory.write_u64(off, 0)
        assert c.decrement() == 1
        assert sb.call("GetCounter") == 1


@pytest.mark.kvm
def test_thread_safety_with_a_sandbox():
    u = uninitialized()
    c = u.guest_counter()
    with u.evolve() as sb:
        start = threading.Barrier(8)
        seen = []

        def work(op):
            start.wait()
            for _ in range(10_000):
                op()

        for op, expected in ((c.increment, 80_000), (c.decrement, 0)):
            ts = [threading.Thread(target=work, args=(op,)) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert c.value() == expected
            assert in_memory(sb) == expected  # the last write is the final value
            seen.append(sb.call("GetCounter"))
        assert seen == [80_000, 0]


@pytest.mark.kvm
def test_increments_while_the_guest_runs():
    u = uninitialized()
    c = u.guest_counter()
    with u.evolve() as sb:
        stop = threading.Event()
        reads = []

        def reader():
            while not stop.is_set():
                reads.append(sb.call("GetCounter"))

        t = threading.Thread(target=reader)
        t.start()
        try:
            while not reads:  # the reader is calling the guest
                threading.Event().wait(0.001)
            for _ in range(20_000):
                c.increment()
        finally:
            stop.set()
            t.join()
        assert len(reads) >= 1
        assert reads == sorted(reads)  # the guest never sees the counter go back
        assert all(0 <= r <= 20_000 for r in reads)
        assert sb.call("GetCounter") == 20_000


@pytest.mark.kvm
def test_restore_keeps_the_host_value():
    u = uninitialized()
    c = u.guest_counter()
    with u.evolve() as sb:
        for _ in range(3):
            c.increment()
        snap = sb.snapshot()
        assert int.from_bytes(snap.image.read(sb.layout.host(sb.layout.counter_gpa), 8), "little") == 3
        for _ in range(7):
            c.increment()
        sb.call("SetStatic", 1)
        sb.restore(snap)
        assert sb.call("GetStatic") == 0  # the snapshot's state...
        assert sb.call("GetCounter") == 10  # ...but the host's current counter
        assert in_memory(sb) == 10
        c.decrement()
        sb.restore()  # the state after initialisation, when the counter was 0
        assert sb.call("GetCounter") == 9
        with pytest.raises(hl.StackOverflow):
            sb.call("StackOverflow", 1_000_000)
        c.increment()
        sb.restore(snap)  # a poisoned sandbox
        assert sb.call("GetCounter") == 10


@pytest.mark.kvm
def test_restore_of_another_sandboxes_snapshot_keeps_the_host_value():
    ua, ub = uninitialized(), uninitialized()
    ca, cb = ua.guest_counter(), ub.guest_counter()
    ca._value, cb._value = 100, 5
    with ua.evolve() as a, ub.evolve() as b:
        ca.increment()
        b.restore(a.snapshot())  # a whole copy of a's memory, counter 101 included
        assert b.call("GetCounter") == 5
        assert a.call("GetCounter") == 101
        cb.increment()
        assert b.call("GetCounter") == 6 and a.call("GetCounter") == 101


@pytest.mark.kvm
def test_sandbox_from_snapshot_gets_its_own_counter(tmp_path):
    u = uninitialized()
    c = u.guest_counter()
    for _ in range(7):
        c.increment()
    with u.evolve() as sb:
        sb.call("SetStatic", 42)
        snap = sb.snapshot()
        u2 = hl.UninitializedSandbox(snap)
        u2.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
        c2 = u2.guest_counter()
        assert c2 is not c and c2.value() == 0
        c2.increment()
        c2.increment()
        with pytest.raises(RuntimeError, match="already has a GuestCounter"):
            u2.guest_counter()
        with u2.evolve() as sb2:
            assert sb2.call("GetStatic") == 42  # the snapshot's state
            assert sb2.call("GetCounter") == 2  # its own counter, not the snapshot's 7
            c2.increment()
            c.decrement()
            assert sb2.call("GetCounter") == 3 and sb.call("GetCounter") == 6
            sb2.restore()
            assert sb2.call("GetCounter") == 3
            assert c.value() == 6 and c2.value() == 3
        # a snapshot file works the same way
        path = tmp_path / "c.hlsnap"
        snap.save(path)
        u3 = hl.UninitializedSandbox(str(path))
        u3.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
        c3 = u3.guest_counter()
        c3._value = 1 << 40
        with u3.evolve() as sb3:
            assert sb3.call("GetCounter") == 1 << 40
            assert sb.call("GetCounter") == 6


@pytest.mark.kvm
def test_counter_with_a_custom_scratch_base():
    u = uninitialized(hl.SandboxConfiguration(scratch_base_gpa=1 << 32))
    c = u.guest_counter()
    c.increment()
    with u.evolve() as sb:
        L = sb.layout
        assert L.counter_gpa == (1 << 32) + L.scratch_size - 0x1000
        assert sb.call("GetCounter") == 1
        with pytest.raises(hl.MemoryAccessViolation, match="protection violation"):
            sb.call("WriteAddress", L.counter_gpa, 5)
        assert c.value() == 1


@pytest.mark.kvm
def test_counter_outlives_its_sandbox():
    u = uninitialized()
    c = u.guest_counter()
    sb = u.evolve()
    c.increment()
    sb.close()
    assert c.increment() == 2  # nothing to write to any more, but the value is kept
    assert c.decrement() == 1
    assert c.value() == 1


@pytest.mark.kvm
def test_counter_after_evolve_cannot_be_created_twice():
    u = uninitialized()
    c = u.guest_counter()
    with u.evolve():
        with pytest.raises(RuntimeError, match="after evolve"):
            u.guest_counter()
    assert c.value() == 0


@pytest.mark.kvm
def test_counter_created_after_evolve_is_refused_or_reaches_the_guest():
    u = uninitialized()
    with u.evolve() as sb:
        try:
            c = u.guest_counter()
        except RuntimeError:
            return  # refused, like register() after evolve(): fine
        c.increment()
        assert sb.call("GetCounter") == 1
