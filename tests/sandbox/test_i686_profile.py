"""The i686 (32-bit, non-paging) profile with real KVM: the nanvixlike guest runs once
during evolve(), writes its own snapshot region, reads the GuestCounter and calls raw
host functions."""
from __future__ import annotations

import io
import struct

import pytest
from elftools.elf.elffile import ELFFile

import hlsandbox as hl

pytestmark = pytest.mark.kvm
GUEST = hl.guests.path("nanvixlike")


def symbol(name: str) -> int:
    with open(GUEST, "rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


class Recorder:
    """Raw host functions 1 (answers) and 2 (collects reports)."""

    def __init__(self, answer: bytes = b"pong") -> None:
        self.requests: list[bytes] = []
        self.reports: list[bytes] = []
        self.answer = answer

    def one(self, req: memoryview) -> bytes:
        assert req.readonly
        self.requests.append(bytes(req))
        return self.answer

    def two(self, req: memoryview) -> bytes:
        self.reports.append(bytes(req))
        return b""


def evolve(rec: Recorder, counter: int = 0, config: hl.SandboxConfiguration | None = None, writer=None):
    u = hl.UninitializedSandbox(GUEST, config, writer=writer or io.StringIO())
    c = u.guest_counter()
    for _ in range(counter):
        c.increment()
    u.register_raw(1, rec.one)
    u.register_raw(2, rec.two)
    return u, c, u.evolve()


def test_profile_is_selected_from_the_elf():
    rec = Recorder()
    _, _, sb = evolve(rec)
    with sb:
        L = sb.layout
        assert L.profile == "i686"
        assert L.scratch_gpa + L.scratch_size == 0xFEE00000  # the default: right below the APIC page
        assert L.code_gpa == 0x100000 and L.pt_size == 0
        assert sb.functions == {}
        with pytest.raises(hl.GuestFunctionNotFound):
            sb.call("Echo", "x")


def test_runs_once_with_counter_raw_calls_and_print():
    rec = Recorder(b"pong")
    out = io.StringIO()
    _, _, sb = evolve(rec, counter=5, writer=out)
    with sb:
        assert len(rec.requests) == 1
        counter, marker = struct.unpack_from("<QI", rec.requests[0])
        assert counter == 5 and marker == 0x1686 and rec.requests[0][12:] == b"N686"
        assert rec.reports == [b"ACK:pong", b"status99=1"]  # id 99 is not registered: status 1
        assert out.getvalue() == "nanvixlike: done\n"


def test_guest_writes_its_snapshot_region():
    rec = Recorder()
    _, _, sb = evolve(rec)
    with sb:
        marker = symbol("data_marker")
        assert struct.unpack("<I", sb.read_memory(marker, 4))[0] == 0x1686
        patched = symbol("patch_target")
        assert sb.read_memory(patched, 6) == b"\xb8" + struct.pack("<I", 0x1686C0DE) + b"\xc3"
        peb = sb.read_memory(sb.layout.peb_gpa, 136)
        magic, version = struct.unpack_from("<QQ", peb)
        assert (magic, version) == (0x0142455050424C48, 2)
        assert struct.unpack_from("<QQQQ", peb, 104) == (sb.layout.scratch_gpa, sb.layout.scratch_size,
                                                          sb.layout.counter_gpa, 1)


def test_failing_raw_host_function_aborts_the_guest():
    def broken(req: memoryview) -> bytes:
        raise RuntimeError("no service")

    u = hl.UninitializedSandbox(GUEST, writer=io.StringIO())
    u.register_raw(1, broken)
    u.register_raw(2, lambda req: b"")
    with pytest.raises(hl.GuestAborted, match="raw host call 1 failed with status 2: no service"):
        u.evolve()


def test_unregistered_raw_function_reaches_the_guest_as_status_1():
    u = hl.UninitializedSandbox(GUEST, writer=io.StringIO())
    u.register_raw(2, lambda req: b"")
    with pytest.raises(hl.GuestAborted, match="raw host call 1 failed with status 1"):
        u.evolve()


def test_response_too_large_is_status_3():
    cfg = hl.SandboxConfiguration(input_data_size="4Ki")
    rec = Recorder(b"x" * 8000)
    with pytest.raises(hl.GuestAborted, match="raw host call 1 failed with status 3"):
        evolve(rec, config=cfg)


def test_snapshot_restore_file_and_from_snapshot(tmp_path):
    rec = Recorder()
    u, counter, sb = evolve(rec, counter=1)
    with sb:
        snap = sb.snapshot()
        assert snap.profile == "i686"
        marker = symbol("data_marker")
        # another snapshot's image, restored whole, brings the region back exactly
        before = sb.read_memory(marker, 4)
        sb._memory.write(sb.layout.host(marker), b"\0\0\0\0")
        sb.restore(hl.Snapshot.load(_saved(snap, tmp_path)))
        assert sb.read_memory(marker, 4) == before
        sb.restore(snap)
        assert not sb.poisoned
        counter.increment()
        assert struct.unpack("<Q", sb.read_memory(sb.layout.counter_gpa, 8))[0] == 2
    path = _saved(snap, tmp_path)
    rec2 = Recorder()
    u2 = hl.UninitializedSandbox(path, writer=io.StringIO())
    u2.register_raw(1, rec2.one)
    u2.register_raw(2, rec2.two)
    with u2.evolve() as sb2:
        assert rec2.requests == []  # init is not run again
        assert sb2.layout.profile == "i686"
        assert struct.unpack("<I", sb2.read_memory(symbol("data_marker"), 4))[0] == 0x1686


def test_snapshot_missing_raw_function_is_a_mismatch(tmp_path):
    rec = Recorder()
    _, _, sb = evolve(rec)
    with sb:
        path = _saved(sb.snapshot(), tmp_path)
    u = hl.UninitializedSandbox(path)
    u.register_raw(1, rec.one)
    with pytest.raises(hl.SnapshotMismatch, match="raw host function 2 is not registered"):
        u.evolve()


def test_profile_must_match_the_elf():
    with pytest.raises(hl.InvalidConfiguration, match="profile='amd64' but the guest binary is an i686 ELF"):
        hl.UninitializedSandbox(GUEST, hl.SandboxConfiguration(profile="amd64"))
    with pytest.raises(hl.InvalidConfiguration, match="profile='i686' but the guest binary is an amd64 ELF"):
        hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(profile="i686"))
    with pytest.raises(hl.InvalidConfiguration, match="profile='sparc'"):
        hl.SandboxConfiguration(profile="sparc")


@pytest.mark.parametrize("base,match", [
    (0xFEE00000 - 0x14A000 + 0x800, "not page aligned"),
    (0xFFFF0000, "beyond the i686 profile's reach"),
    (0x80000, "overlaps the snapshot region"),
    (0xFEE00000 - 0x1000, "overlaps the APIC page"),
])
def test_rejected_scratch_bases(base, match):
    with pytest.raises(hl.InvalidConfiguration, match=match):
        hl.UninitializedSandbox(GUEST, hl.SandboxConfiguration(scratch_base_gpa=base))


def test_custom_scratch_base_below_4g():
    rec = Recorder()
    _, _, sb = evolve(rec, config=hl.SandboxConfiguration(scratch_base_gpa=0x40000000))
    with sb:
        assert sb.layout.scratch_gpa == 0x40000000
        assert rec.reports == [b"ACK:pong", b"status99=1"]


def _saved(snap: hl.Snapshot, tmp_path) -> str:
    path = tmp_path / f"i686-{id(snap)}.hlsnap"
    snap.save(path)
    return str(path)
