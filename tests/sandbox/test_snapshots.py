"""Snapshots with real KVM: restore in memory, files, sandboxes from snapshots."""
from __future__ import annotations

import os
import struct
import zlib

import pytest

import hlsandbox as hl
from hlsandbox.sandbox.snapshot import HEADER

from helpers import host_add, make_sandbox

pytestmark = pytest.mark.kvm
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}


def test_restore_undoes_globals_heap_and_stack(sandbox):
    sandbox.call("SetStatic", 11)
    p1 = sandbox.call("Malloc", 64 << 10)
    snap = sandbox.snapshot()
    sandbox.call("SetStatic", 99)
    p2 = sandbox.call("Malloc", 64 << 10)
    assert p2 != p1 and sandbox.call("GetStatic") == 99
    sandbox.restore(snap)
    assert sandbox.call("GetStatic") == 11
    assert sandbox.call("Malloc", 64 << 10) == p2  # the second allocation never happened
    sandbox.restore(snap)
    assert sandbox.call("Malloc", 64 << 10) == p2


def test_restore_brings_heap_contents_back(sandbox):
    L = sandbox.layout
    p = sandbox.call("Malloc", 3 * 4096)  # Malloc fills its block with a pattern
    snap = sandbox.snapshot()
    before = sandbox.read_memory(L.heap_gpa, L.heap_size)
    sandbox.call("Free", p)
    for _ in range(20):
        sandbox.call("Malloc", 5000)
    assert sandbox.read_memory(L.heap_gpa, L.heap_size) != before
    sandbox.restore(snap)
    assert sandbox.read_memory(L.heap_gpa, L.heap_size) == before


def test_restore_after_every_kind_of_poison(sandbox):
    snap = sandbox.snapshot()
    for name, args, exc in [("DivideByZero", (0,), hl.GuestFault), ("Abort", (1, "x"), hl.GuestAborted),
                            ("StackOverflow", (10**6,), hl.StackOverflow),
                            ("WriteToCode", (), hl.MemoryAccessViolation)]:
        with pytest.raises(exc):
            sandbox.call(name, *args)
        assert sandbox.poisoned
        sandbox.restore(snap)
        assert not sandbox.poisoned
        assert sandbox.call("Add", 2, 3) == 5
        assert sandbox.call("StackOverflow", 50) == 50


def test_restore_after_kill(sandbox):
    import threading
    import time
    snap = sandbox.snapshot()
    h = sandbox.interrupt_handle()

    def killer():
        while not h.is_running():
            time.sleep(0.001)
        h.kill()

    t = threading.Thread(target=killer)
    t.start()
    with pytest.raises(hl.ExecutionCanceled):
        sandbox.call("Spin")
    t.join()
    sandbox.restore(snap)
    assert sandbox.call("Echo", "alive") == "alive"


def test_default_restore_is_the_state_after_init(sandbox):
    sandbox.call("SetStatic", 5)
    sandbox.restore()
    assert sandbox.call("GetStatic") == 0


def test_call_with_restore(sandbox):
    assert sandbox.call("SetStatic", 42, restore=True) == 42
    assert sandbox.call("GetStatic") == 0
    with pytest.raises(hl.GuestFault):
        sandbox.call("DivideByZero", 0, restore=True)
    assert not sandbox.poisoned  # restored after the failure too
    assert sandbox.call("Add", 1, 1, restore=True) == 2


def test_restore_after_call_option():
    with make_sandbox(hl.SandboxConfiguration(restore_after_call=True)) as sb:
        sb.call("SetStatic", 3)
        assert sb.call("GetStatic") == 0
        assert sb.call("SetStatic", 4, restore=False) == 4
        assert sb.call("GetStatic", restore=False) == 4


def test_many_snapshots_and_restores(sandbox):
    snaps = []
    for i in range(5):
        sandbox.call("SetStatic", i)
        sandbox.call("Malloc", 1000 * (i + 1))
        snaps.append(sandbox.snapshot())
    for i in (3, 0, 4, 4, 1, 2):
        sandbox.restore(snaps[i])
        assert sandbox.call("GetStatic") == i


def test_deep_stack_is_restored(sandbox):
    """A guest cannot carry data across a restore in stack memory below the copied top."""
    snap = sandbox.snapshot()
    L = sandbox.layout
    deep = L.stack_top - L.stack_copy_size - 0x2000
    before = sandbox.read_memory(deep, 0x1000)
    sandbox.call("StackOverflow", 60)  # ~60 KiB of stack frames
    assert sandbox.read_memory(deep, 0x1000) != before
    sandbox.restore(snap)
    assert sandbox.read_memory(deep, 0x1000) == before


def test_buffers_are_restored(sandbox):
    snap = sandbox.snapshot()
    L = sandbox.layout
    before = sandbox.read_memory(L.input_gpa, L.input_size + L.output_size)
    sandbox.call("Echo", "secret" * 100)
    sandbox.restore(snap)
    assert sandbox.read_memory(L.input_gpa, L.input_size + L.output_size) == before


def test_snapshot_of_poisoned_sandbox_is_refused(sandbox):
    with pytest.raises(hl.GuestFault):
        sandbox.call("DivideByZero", 0)
    with pytest.raises(hl.PoisonedSandbox):
        sandbox.snapshot()


def test_restore_requires_a_snapshot(sandbox):
    with pytest.raises(TypeError):
        sandbox.restore("not a snapshot")


# -- across sandboxes ------------------------------------------------------------------------

def test_restore_snapshot_from_another_sandbox():
    with make_sandbox() as a, make_sandbox() as b:
        a.call("SetStatic", 77)
        a.call("Malloc", 20000)
        snap = a.snapshot()
        b.call("SetStatic", 1)
        b.restore(snap)
        assert b.call("GetStatic") == 77
        assert b.call("Malloc", 20000) == a.call("Malloc", 20000)
        assert b.call("CallHostAdd", 2, 2) == 4


def test_restore_across_different_layout_is_refused():
    with make_sandbox() as a, make_sandbox(hl.SandboxConfiguration(heap_size="2Mi")) as b:
        with pytest.raises(hl.SnapshotMismatch, match="layout"):
            b.restore(a.snapshot())


def test_restore_across_missing_host_function_is_refused():
    with make_sandbox() as a, hl.UninitializedSandbox(hl.guests.path("simpleguest")).evolve() as b:
        with pytest.raises(hl.SnapshotMismatch, match=r"HostAdd\(i32, i32\) -> i32 is not registered"):
            b.restore(a.snapshot())


def test_restore_across_different_host_signature_is_refused():
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i64, hl.i64), returns=hl.i64)
    with make_sandbox() as a, u.evolve() as b:
        with pytest.raises(hl.SnapshotMismatch, match="registered as HostAdd"):
            b.restore(a.snapshot())


# -- files and sandboxes from snapshots ----------------------------------------------------------

def test_file_round_trip(tmp_path, sandbox):
    sandbox.call("SetStatic", 1234)
    sandbox.call("Malloc", 12345)
    snap = sandbox.snapshot()
    path = tmp_path / "warm.hlsnap"
    snap.save(path)
    loaded = hl.Snapshot.load(path)
    assert loaded.layout.describe() == sandbox.layout.describe()
    assert loaded.host_functions == snap.host_functions
    assert [g.name for g in loaded.guest_functions] == list(sandbox.functions)
    assert loaded.vcpu_state == snap.vcpu_state
    with hl.MultiUseSandbox.from_snapshot(loaded, host_functions=HOST) as sb2:
        assert sb2.call("GetStatic") == 1234
        assert sb2.call("CallHostAdd", 40, 2) == 42
        assert sb2.functions == sandbox.functions
        # restore within a sandbox created from a file
        sb2.call("SetStatic", 1)
        sb2.restore()
        assert sb2.call("GetStatic") == 1234
    with hl.MultiUseSandbox.from_snapshot(str(path), host_functions=HOST) as sb3:
        assert sb3.call("GetStatic") == 1234
    # the saved file is sparse: far smaller on disk than the memory it describes
    st = os.stat(path)
    assert st.st_blocks * 512 < st.st_size


def test_from_snapshot_in_memory_and_sharing(sandbox):
    sandbox.call("SetStatic", 8)
    snap = sandbox.snapshot()
    sbs = [hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) for _ in range(3)]
    try:
        sbs[0].call("SetStatic", 100)
        assert [sb.call("GetStatic") for sb in sbs] == [100, 8, 8]  # copy-on-write: no sharing of writes
        assert sandbox.call("GetStatic") == 8
    finally:
        for sb in sbs:
            sb.close()


def test_uninitialized_sandbox_from_snapshot(tmp_path, sandbox):
    sandbox.call("SetStatic", 21)
    path = tmp_path / "s.hlsnap"
    sandbox.snapshot().save(path)
    u = hl.UninitializedSandbox(str(path))
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    with u.evolve() as sb:
        assert sb.call("GetStatic") == 21
        assert sb.call("CallHostAdd", 1, 1) == 2


def test_from_snapshot_missing_host_function(sandbox):
    with pytest.raises(hl.SnapshotMismatch, match="HostAdd"):
        hl.MultiUseSandbox.from_snapshot(sandbox.snapshot())


def test_from_snapshot_config_must_match(sandbox):
    snap = sandbox.snapshot()
    with pytest.raises(hl.SnapshotMismatch, match="heap_size"):
        hl.MultiUseSandbox.from_snapshot(snap, hl.SandboxConfiguration(heap_size="2Mi"), host_functions=HOST)
    cfg = hl.SandboxConfiguration(max_execution_time=0.2)
    with hl.MultiUseSandbox.from_snapshot(snap, cfg, host_functions=HOST) as sb:
        with pytest.raises(hl.ExecutionTimeout):
            sb.call("Spin")


def test_from_snapshot_file_with_any_name(tmp_path, sandbox):
    sandbox.call("SetStatic", 31)
    path = tmp_path / "warm.snapshot"  # from_snapshot() takes any path as a snapshot file
    sandbox.snapshot().save(path)
    with hl.MultiUseSandbox.from_snapshot(path, host_functions=HOST) as sb:
        assert sb.call("GetStatic") == 31
    with pytest.raises(hl.InvalidSnapshot, match="cannot open snapshot"):
        hl.MultiUseSandbox.from_snapshot(tmp_path / "missing.snapshot", host_functions=HOST)


def test_from_snapshot_rejects_bad_arguments(sandbox):
    snap = sandbox.snapshot()
    with pytest.raises(TypeError, match="config must be a SandboxConfiguration"):
        hl.MultiUseSandbox.from_snapshot(snap, {"heap_size": "1Mi"}, host_functions=HOST)
    closed = sandbox.snapshot()
    closed.close()
    assert closed.closed and not snap.closed
    with pytest.raises(ValueError, match="the snapshot is closed"):
        hl.MultiUseSandbox.from_snapshot(closed, host_functions=HOST)


def test_from_snapshot_config_is_the_snapshots(sandbox):
    with hl.MultiUseSandbox.from_snapshot(sandbox.snapshot(), host_functions=HOST) as sb:
        c, L = sb.config, sandbox.layout
        assert (c.heap_size, c.stack_size, c.input_data_size, c.output_data_size, c.scratch_base_gpa, c.profile) == \
            (L.heap_size, L.stack_size, L.input_size, L.output_size, L.scratch_gpa, "amd64")
        assert c.max_execution_time is None and not c.restore_after_call


def test_from_snapshot_host_functions_are_the_ones_given(sandbox):
    # Sandboxes from one snapshot share the checked registry while the host functions stay
    # the same; different ones are registered and checked afresh.
    snap = sandbox.snapshot()
    mul = {"HostAdd": (lambda a, b: a * b, (hl.i32, hl.i32), hl.i32)}
    with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as a, \
            hl.MultiUseSandbox.from_snapshot(snap, host_functions=dict(HOST)) as b, \
            hl.MultiUseSandbox.from_snapshot(snap, host_functions=mul) as c:
        assert a.call("CallHostAdd", 3, 4) == b.call("CallHostAdd", 3, 4) == 7
        assert a._host_functions is b._host_functions
        assert c.call("CallHostAdd", 3, 4) == 12
        with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as d:
            assert d.call("CallHostAdd", 3, 4) == 7
    wrong = {"HostAdd": (lambda a, b: a + b, (hl.i64, hl.i64), hl.i64)}
    for _ in range(2):  # a mismatch is not remembered as checked
        with pytest.raises(hl.SnapshotMismatch, match="HostAdd is registered as HostAdd"):
            hl.MultiUseSandbox.from_snapshot(snap, host_functions=wrong)
    with pytest.raises(hl.SnapshotMismatch, match="is not registered"):
        hl.MultiUseSandbox.from_snapshot(snap)


def test_file_is_never_modified(tmp_path, sandbox):
    path = tmp_path / "ro.hlsnap"
    sandbox.snapshot().save(path)
    data = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    with hl.MultiUseSandbox.from_snapshot(path, host_functions=HOST) as sb:
        for i in range(50):
            sb.call("Malloc", 4096 * (i % 7 + 1))
            sb.call("SetStatic", i)
        sb.restore()
    assert path.read_bytes() == data and os.stat(path).st_mtime_ns == mtime


# -- corrupt and mismatched files ------------------------------------------------------------

@pytest.fixture
def saved(tmp_path, sandbox):
    sandbox.call("SetStatic", 3)
    path = tmp_path / "c.hlsnap"
    sandbox.snapshot().save(path)
    return path


def rewrite_header(path, **fields):
    data = bytearray(path.read_bytes())
    names = ["magic", "version", "header_size", "memory_size", "memory_crc", "meta_crc", "meta_size", "state_size"]
    values = dict(zip(names, HEADER.unpack_from(data, 0), strict=True))
    values.update(fields)
    HEADER.pack_into(data, 0, *[values[n] for n in names])
    path.write_bytes(bytes(data))
    return values


def load_error(path):
    with pytest.raises((hl.InvalidSnapshot, hl.SnapshotMismatch)) as ei:
        hl.Snapshot.load(path)
    return ei.value


@pytest.mark.parametrize("field,value,match", [
    ("magic", b"NOTSNAP!", "bad magic"),
    ("version", 1, "format version 1, this hlsandbox reads 3"),
    ("version", 2, "format version 2, this hlsandbox reads 3"),  # before the debug registers were saved
    ("version", 4, "format version 4, this hlsandbox reads 3"),
    ("header_size", 4097, "header size"),
    ("header_size", 0, "header size"),
    ("memory_size", 12345, "memory size"),
    ("memory_size", 4096, "file is .* bytes"),
    ("memory_crc", 0xDEADBEEF, "memory checksum"),
    ("meta_crc", 1, "metadata checksum"),
    ("meta_size", 3, "metadata checksum"),
    ("state_size", 10, "metadata checksum"),
])
def test_corrupt_header_field(saved, field, value, match):
    rewrite_header(saved, **{field: value})
    assert isinstance(load_error(saved), hl.InvalidSnapshot)
    with pytest.raises(hl.InvalidSnapshot, match=match):
        hl.Snapshot.load(saved)


def rewrite_metadata(path, edit):
    import json
    data = bytearray(path.read_bytes())
    magic, version, header_size, size, crc, meta_crc, meta_size, state_size = HEADER.unpack_from(data, 0)
    meta = json.loads(data[HEADER.size:HEADER.size + meta_size])
    state = bytes(data[HEADER.size + meta_size:HEADER.size + meta_size + state_size])
    edit(meta)
    blob = json.dumps(meta).encode()
    assert HEADER.size + len(blob) + len(state) <= header_size
    head = HEADER.pack(magic, version, header_size, size, crc, zlib.crc32(blob + state), len(blob), len(state))
    data[:header_size] = (head + blob + state).ljust(header_size, b"\0")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("edit,exc,match", [
    (lambda m: m.update(arch="aarch64"), hl.SnapshotMismatch, "architecture 'aarch64'"),
    (lambda m: m.update(profile="sparc"), hl.SnapshotMismatch, "profile 'sparc'"),
    (lambda m: m.update(profile="i686"), hl.InvalidSnapshot, "profile 'i686' does not match the layout"),
    (lambda m: m["layout"].update(heap_gpa=m["layout"]["heap_gpa"] + 4096), hl.InvalidSnapshot,
     "layout is inconsistent"),
    (lambda m: m["layout"].pop("heap_size"), hl.InvalidSnapshot, "layout fields"),
    (lambda m: m.update(host_functions=[["HostAdd", [99], 1]]), hl.InvalidSnapshot, "host functions"),
    (lambda m: m.update(guest_functions="nope"), hl.InvalidSnapshot, "guest functions"),
    # an empty name is only the fallback's entry (void, no parameters), once, among guest functions
    (lambda m: m["guest_functions"].append(["", [1], 0]), hl.InvalidSnapshot, "guest functions: malformed"),
    (lambda m: m["guest_functions"].append(["", [], 1]), hl.InvalidSnapshot, "guest functions: malformed"),
    (lambda m: m["guest_functions"].extend([["", [], 0], ["", [], 0]]), hl.InvalidSnapshot, "appears twice"),
    (lambda m: m["host_functions"].append(["", [], 0]), hl.InvalidSnapshot, "host functions: malformed"),
    (lambda m: m.update(copy_ranges=[[0, 1 << 40]]), hl.InvalidSnapshot, "copy ranges"),
])
def test_corrupt_metadata(saved, edit, exc, match):
    rewrite_metadata(saved, edit)
    with pytest.raises(exc, match=match):
        hl.Snapshot.load(saved)


def test_corrupt_vcpu_state(saved):
    data = bytearray(saved.read_bytes())
    _, _, header_size, size, crc, _, meta_size, state_size = HEADER.unpack_from(data, 0)
    state_at = HEADER.size + meta_size
    struct.pack_into("<Q", data, state_at + 16 * 8, 0)  # rip = 0
    blob = bytes(data[HEADER.size:state_at + state_size])
    struct.pack_into("<I", data, 28, zlib.crc32(blob))
    saved.write_bytes(bytes(data))
    with pytest.raises(hl.InvalidSnapshot, match="rip 0x0 is outside the guest code"):
        hl.Snapshot.load(saved)


def test_corrupt_memory_byte(saved, sandbox):
    data = bytearray(saved.read_bytes())
    header_size = HEADER.unpack_from(data, 0)[2]
    peb = sandbox.layout.peb_gpa
    data[header_size + peb] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(hl.InvalidSnapshot, match="memory checksum"):
        hl.Snapshot.load(saved)


@pytest.mark.parametrize("keep", [0, 10, HEADER.size, 4096, 8192])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    with pytest.raises(hl.InvalidSnapshot):
        hl.Snapshot.load(saved)


def test_missing_file(tmp_path):
    with pytest.raises(hl.InvalidSnapshot, match="cannot open"):
        hl.Snapshot.load(tmp_path / "nope.hlsnap")


def test_trailing_data(saved):
    with open(saved, "ab") as f:
        f.write(b"x")
    with pytest.raises(hl.InvalidSnapshot, match="trailing data"):
        hl.Snapshot.load(saved)


def test_a_saved_file_starts_with_its_magic(saved):
    # The file's first 8 bytes name its format (tools tell a snapshot file by them); one
    # byte off and load() refuses the file.
    data = saved.read_bytes()
    assert data[:8] == b"HLSNAP\x00\x00"
    saved.write_bytes(data[:7] + b"\x01" + data[8:])
    with pytest.raises(hl.InvalidSnapshot, match="bad magic"):
        hl.Snapshot.load(saved)


# -- vCPU state ------------------------------------------------------------------------------

def test_fpu_state_is_restored(sandbox):
    default = sandbox.call("GetMxcsr")
    snap = sandbox.snapshot()
    changed = default ^ 0x6000  # another rounding mode
    sandbox.call("SetMxcsr", changed)
    assert sandbox.call("GetMxcsr") == changed
    sandbox.restore(snap)  # the fast path: the restore trampoline reloads the FPU image
    assert sandbox.call("GetMxcsr") == default
    sandbox.call("SetMxcsr", changed)
    with make_sandbox() as other:
        other.restore(snap)  # another VM: KVM_SET_XSAVE
        assert other.call("GetMxcsr") == default


def test_snapshot_right_after_restore_has_the_restored_state(sandbox):
    sandbox.call("SetStatic", 1)
    a = sandbox.snapshot()
    sandbox.call("SetStatic", 2)
    sandbox.call("SetMxcsr", sandbox.call("GetMxcsr") ^ 0x6000)
    sandbox.restore(a)
    b = sandbox.snapshot()  # the vCPU has not run since the restore
    assert b.vcpu_state == a.vcpu_state
    sandbox.call("SetStatic", 3)
    sandbox.restore(b)
    assert sandbox.call("GetStatic") == 1


def test_trampoline_is_not_writable_by_the_guest(sandbox):
    t = sandbox.layout.trampoline_gpa
    assert sandbox.call("ReadAddress", t) != 0  # readable and executable: it holds the code
    with pytest.raises(hl.MemoryAccessViolation, match="write of .* .protection violation.") as ei:
        sandbox.call("WriteAddress", t + 0x100, 0x1234)
    assert ei.value.address == t + 0x100


# -- snapshot files that are not snapshots, places a snapshot cannot go --------------------------

@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_load_of_a_file_that_is_not_regular_fails_at_once(tmp_path, kind):
    if kind == "directory":
        path = tmp_path
    elif kind == "fifo":
        path = tmp_path / "pipe.hlsnap"
        os.mkfifo(path)  # no writer: a blocking open would wait forever
    else:
        path = "/dev/zero"
    import threading
    import time
    # Should the open block, a writer appearing after 5 s releases it (and the test fails).
    unblock = threading.Timer(5.0, lambda: open(path, "wb").close()) if kind == "fifo" else None
    if unblock:
        unblock.start()
    start = time.monotonic()
    try:
        with pytest.raises(hl.InvalidSnapshot, match="not a regular file"):
            hl.Snapshot.load(path)
        with pytest.raises(hl.InvalidSnapshot, match="not a regular file"):
            hl.MultiUseSandbox.from_snapshot(path, host_functions=HOST)
        assert time.monotonic() - start < 2.0
    finally:
        if unblock:
            unblock.cancel()


def test_load_of_an_unreadable_file(saved):
    saved.chmod(0)
    # Root reads any file: try as an unprivileged user in a forked child.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only file operations, then _exit
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            try:
                hl.Snapshot.load(saved)
                out = b"loaded"
            except BaseException as e:
                out = f"{type(e).__name__}: {e}".encode()
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    assert out.startswith("InvalidSnapshot: cannot open snapshot") and "Permission denied" in out, out


def test_save_to_a_directory_leaves_nothing_behind(tmp_path, sandbox):
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="cannot save the snapshot to .*dir: it is a directory"):
        sandbox.snapshot().save(target)
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(target) == []


def test_save_to_an_unwritable_place(tmp_path, sandbox):
    snap = sandbox.snapshot()
    with pytest.raises(OSError, match="cannot save the snapshot to /proc/hlsandbox/s.hlsnap"):
        snap.save("/proc/hlsandbox/s.hlsnap")
    with pytest.raises(OSError, match="cannot save the snapshot to /proc/self/s.hlsnap"):
        snap.save("/proc/self/s.hlsnap")  # exists, but no file can be created in it


def test_save_failing_midway_leaves_nothing_behind(tmp_path, sandbox):
    # /dev/full: every write fails with ENOSPC; a symlink to it where the temporary file goes
    # makes the write (not the open) fail.
    snap = sandbox.snapshot()
    target = tmp_path / "s.hlsnap"
    tmp = tmp_path / f".s.hlsnap.{os.getpid()}.tmp"
    os.symlink("/dev/full", tmp)
    with pytest.raises(OSError, match="cannot save the snapshot to .*s.hlsnap: No space left on device"):
        snap.save(target)
    assert os.listdir(tmp_path) == []


def test_uninitialized_sandbox_given_a_snapshot_file_says_so(tmp_path, sandbox):
    path = tmp_path / "warm.snapshot"  # not named *.hlsnap: read as a guest
    sandbox.snapshot().save(path)
    with pytest.raises(hl.InvalidGuestBinary, match=r"is an hlsandbox snapshot file, not a guest ELF.*from_snapshot"):
        hl.UninitializedSandbox(path)
    with pytest.raises(hl.InvalidGuestBinary, match="not an ELF file"):
        hl.UninitializedSandbox(__file__)  # other files keep the ELF message


def test_closed_snapshot_says_it_is_closed(tmp_path, sandbox):
    snap = sandbox.snapshot()
    snap.close()
    assert snap.closed and "closed" in repr(snap)
    for use in (lambda: snap.save(tmp_path / "x.hlsnap"), lambda: sandbox.restore(snap),
                lambda: hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST)):
        with pytest.raises(hl.SnapshotClosed, match="the snapshot is closed"):
            use()
    assert issubclass(hl.SnapshotClosed, hl.HyperlightError)
    assert os.listdir(tmp_path) == []
    sandbox.restore()
    assert sandbox.call("Add", 1, 2) == 3


def test_closing_a_snapshot_keeps_the_sandboxes_started_from_it(sandbox):
    sandbox.call("SetStatic", 6)
    snap = sandbox.snapshot()
    with hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST) as sb:
        snap.close()
        sb.call("SetStatic", 7)
        sb.restore()  # back to the (closed) snapshot it started from
        assert sb.call("GetStatic") == 6
        with pytest.raises(hl.SnapshotClosed):
            sb.restore(snap)  # naming a closed snapshot is refused


def test_snapshot_is_a_context_manager(tmp_path, sandbox):
    with sandbox.snapshot() as snap:
        snap.save(tmp_path / "a.hlsnap")
        assert not snap.closed
    assert snap.closed
    with hl.Snapshot.load(tmp_path / "a.hlsnap") as loaded:
        assert loaded.layout.describe() == sandbox.layout.describe()
    assert loaded.closed
