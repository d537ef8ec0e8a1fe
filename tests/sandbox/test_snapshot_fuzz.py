"""Fuzzing snapshot files whose checksums are right but whose contents are crafted.

A snapshot file is input like any other: the metadata (JSON) and the vCPU state sections
are mutated here, field by field and byte by byte, and the header's checksum recomputed,
so every case reaches the checks behind the checksum. The property, for amd64 and i686
snapshots alike: Snapshot.load() and starting a sandbox from the snapshot either raise a
typed error (InvalidSnapshot, SnapshotMismatch) or give a sandbox that works: its calls,
runs and restores raise nothing but HyperlightError subclasses (a guest fault, a time
limit), never OSError from a vCPU ioctl or KVM_RUN, UnicodeEncodeError, or anything else.

By default each property runs a quick 200 examples. The long run (5,000 examples per
profile and section, a few minutes) runs only with HLSANDBOX_LONG_FUZZ=1:

    HLSANDBOX_LONG_FUZZ=1 python3 -m pytest -q tests/mem/test_snapshot_fuzz.py
"""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hlsandbox as hl
from hlsandbox.hypervisor import kvm
from hlsandbox.hypervisor import vcpu_state as vs
from hlsandbox.sandbox.snapshot import HEADER

from helpers import host_add, make_sandbox

pytestmark = pytest.mark.kvm
LONG = os.environ.get("HLSANDBOX_LONG_FUZZ") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long fuzzing run: set HLSANDBOX_LONG_FUZZ=1")
COMMON = dict(deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
QUICK = settings(max_examples=200, **COMMON)
LONG_RUN = settings(max_examples=5_000, **COMMON)
HEADER_ROOM = 256 << 10  # the crafted files' header size: room for grown metadata
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}


class Base:
    """A real snapshot of one profile, written once with a roomy header; cases rewrite
    only the header region (metadata and state), so the memory image stays valid."""

    def __init__(self, profile: str, directory) -> None:
        self.profile = profile
        if profile == "amd64":
            u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
            u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
        else:
            u = self.i686_uninitialized(hl.guests.path("nanvixlike"))
        with u.evolve() as sb:
            if profile == "amd64":
                sb.call("SetStatic", 5)
            snap = sb.snapshot()
            src = directory / f"{profile}.src.hlsnap"
            snap.save(src)
            snap.close()
        data = src.read_bytes()
        _, _, header_size, size, crc, _, meta_size, state_size = HEADER.unpack_from(data, 0)
        self.size, self.crc = size, crc
        self.meta = json.loads(data[HEADER.size:HEADER.size + meta_size])
        self.state = data[HEADER.size + meta_size:HEADER.size + meta_size + state_size]
        self.path = directory / f"{profile}.hlsnap"
        with open(self.path, "wb") as f:
            f.truncate(HEADER_ROOM + size)
            f.seek(HEADER_ROOM)
            f.write(data[header_size:])
        self.write(json.dumps(self.meta).encode(), self.state)

    @staticmethod
    def i686_uninitialized(guest) -> hl.UninitializedSandbox:
        u = hl.UninitializedSandbox(guest, writer=io.StringIO())
        u.register_raw(1, lambda req: b"pong")
        u.register_raw(2, lambda req: b"")
        return u

    def write(self, meta: bytes, state: bytes) -> bool:
        """Rewrites the header region; False if the case does not fit it."""
        if HEADER.size + len(meta) + len(state) > HEADER_ROOM:
            return False
        head = HEADER.pack(b"HLSNAP\0\0", 3, HEADER_ROOM, self.size, self.crc, zlib.crc32(meta + state),
                           len(meta), len(state))
        with open(self.path, "r+b") as f:
            f.write((head + meta + state).ljust(HEADER_ROOM, b"\0"))
        return True


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("snapfuzz")
    return {p: Base(p, d) for p in ("amd64", "i686")}


def exercise(base: Base) -> str:
    """Loads the crafted file and uses what it gives; returns what happened (for events).
    Any exception but the typed ones fails the case."""
    try:
        snap = hl.Snapshot.load(base.path)
    except (hl.InvalidSnapshot, hl.SnapshotMismatch) as e:
        return f"load refused: {type(e).__name__}"
    with snap:
        try:
            if base.profile == "amd64":
                sb = hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST)
            else:
                sb = Base.i686_uninitialized(snap).evolve()
        except (hl.InvalidSnapshot, hl.SnapshotMismatch) as e:
            # KVM refusing a state the checks let through is a missing check, not another host.
            assert not isinstance(e.__cause__, OSError), f"KVM refused a state the checks passed: {e.__cause__}"
            return f"start refused: {type(e).__name__}"
        with sb:
            outcome = "ran"
            try:
                run(sb)
            except hl.HyperlightError as e:
                outcome = f"ran: {type(e).__name__}"
            try:
                sb.restore()
                run(sb)
            except hl.HyperlightError:
                pass
            return outcome


def run(sb: hl.MultiUseSandbox) -> None:
    """One guest run: a call (amd64), or one KVM_RUN of the halted i686 guest."""
    if sb.layout.profile == "amd64":
        fn = sb.functions.get("Echo")
        if fn is not None and fn.params == (hl.ValueType.STR,):
            sb.call("Echo", "fuzz", timeout=2.0)
        elif sb.functions:
            name, sig = next(iter(sb.functions.items()))
            if not sig.params:
                sb.call(name, timeout=2.0)
        return
    vm, path = sb._vm, sb._path
    generation = path.claim()
    timer = threading.Timer(2.0, vm.kill, (generation,))
    timer.start()
    try:
        vm.run()
    finally:
        timer.cancel()
        path.release()


# -- mutations of the vCPU state ---------------------------------------------------------------

def _fields() -> list[tuple[str, int, int]]:
    """(name, offset, size) of every field of hl_vcpu_state hlsandbox loads."""
    out = [(f"regs[{i}]", 8 * i, 8) for i in range(18)]
    seg_fields = [("base", 0, 8), ("limit", 8, 4), ("selector", 12, 2)] + \
        [(n, 14 + i, 1) for i, n in enumerate(("type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"))]
    for i, seg in enumerate(vs.SEGMENTS):
        out += [(f"{seg}.{n}", vs.SREGS_AT + i * vs.SEGMENT.size + o, s) for n, o, s in seg_fields]
    for i, t in enumerate(("gdt", "idt")):
        out += [(f"{t}.base", vs.DTABLES_AT + 16 * i, 8), (f"{t}.limit", vs.DTABLES_AT + 16 * i + 8, 2)]
    for i, n in enumerate(("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "irq0", "irq1", "irq2", "irq3")):
        out.append((n, vs.CONTROL_AT + 8 * i, 8))
    x = vs.XSAVE_AT
    out += [("fcw", x, 2), ("fsw", x + 2, 2), ("ftw", x + 4, 1), ("mxcsr", x + 24, 4), ("mxcsr_mask", x + 28, 4),
            ("xmm0", x + 160, 8), ("st0", x + 32, 8), ("xstate_bv", x + 512, 8), ("xcomp_bv", x + 520, 8),
            ("xsave.reserved", x + 528, 8), ("ymmh0", x + 576, 8), ("xsave.end", x + 4088, 8)]
    out += [("nmsrs", vs.MSRS_AT, 4), ("msrs.pad", vs.MSRS_AT + 4, 4)]
    for i in range(len(vs.MSR_INDICES)):
        at = vs.MSRS_AT + 8 + i * vs.MSR.size
        out += [(f"msr[{i}].index", at, 4), (f"msr[{i}].reserved", at + 4, 4), (f"msr[{i}].data", at + 8, 8)]
    out += [(f"db[{i}]", vs.DEBUG_AT + 8 * i, 8) for i in range(4)]
    out += [("dr6", vs.DEBUG_AT + 32, 8), ("dr7", vs.DEBUG_AT + 40, 8), ("debug.flags", vs.DEBUG_AT + 48, 8),
            ("debug.reserved", vs.DEBUG_AT + 56, 8)]
    return out


FIELDS = _fields()


@st.composite
def state_mutations(draw):
    """A list of edits: (field, new value) or a bit flip at any byte."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 3)):
            name, off, size = draw(st.sampled_from(FIELDS))
            bits = 8 * size
            value = draw(st.one_of(
                st.integers(0, 2 ** bits - 1),
                st.sampled_from([0, 1, 2 ** bits - 1, 2 ** (bits - 1), 0xFEE00000 % 2 ** bits, 0x80000000 % 2 ** bits]),
                st.integers(0, bits - 1).map(lambda b: ("flip", b)),
            ))
            edits.append((name, off, size, value))
        else:
            edits.append(("byte", draw(st.integers(0, vs.STATE_SIZE - 1)), 1, ("flip", draw(st.integers(0, 7)))))
    return edits


def mutate_state(state: bytes, edits) -> bytes:
    out = bytearray(state)
    for _, off, size, value in edits:
        old = int.from_bytes(out[off:off + size], "little")
        new = old ^ (1 << value[1]) if isinstance(value, tuple) else value
        out[off:off + size] = new.to_bytes(size, "little")
    return bytes(out)


# -- mutations of the metadata ------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["\ud800", "\udfff", "", "Echo", "amd64", "i686", "x" * 0x10000]),
    st.sampled_from([0, 1, 4096, 2 ** 36, 2 ** 48, -1, 2 ** 64]))


def _json_containers(inner):
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3))


json_values = st.recursive(json_leaves, _json_containers, max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@st.composite
def meta_mutations(draw, meta):
    """The metadata with 1-3 values replaced, removed or added anywhere in its tree, or
    its JSON text with bytes changed."""
    import copy
    meta = copy.deepcopy(meta)
    if not draw(st.integers(0, 5)):
        text = bytearray(json.dumps(meta).encode())
        for _ in range(draw(st.integers(1, 4))):
            text[draw(st.integers(0, len(text) - 1))] = draw(st.integers(0, 255))
        return bytes(text)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(meta))))
        if not path:
            continue
        parent = meta
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        action = draw(st.integers(0, 4))
        if action == 0:
            del parent[key]
        elif action == 1 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = parent[key] + draw(st.sampled_from([1, -1, 4096, -4096, 2 ** 32, 2 ** 47]))
        elif action == 2 and isinstance(parent, list):
            parent.append(draw(json_values))
        else:
            parent[key] = draw(json_values)
    return json.dumps(meta).encode()


# -- the properties -----------------------------------------------------------------------------

def check_state_case(base: Base, edits) -> None:
    state = mutate_state(base.state, edits)
    assert base.write(json.dumps(base.meta).encode(), state)
    event(f"{base.profile}: {exercise(base)}")


def check_meta_case(base: Base, meta: bytes) -> None:
    if not base.write(meta, base.state):
        return
    event(f"{base.profile}: {exercise(base)}")


PROFILES = st.sampled_from(["amd64", "i686"])


@QUICK
@given(PROFILES, state_mutations())
def test_crafted_vcpu_state(bases, profile, edits):
    check_state_case(bases[profile], edits)


@QUICK
@given(st.data())
def test_crafted_metadata(bases, data):
    base = bases[data.draw(PROFILES)]
    check_meta_case(base, data.draw(meta_mutations(base.meta)))


@pytest.mark.slow
@long_only
@LONG_RUN
@given(st.data())
def test_long_crafted_vcpu_state_amd64(bases, data):
    check_state_case(bases["amd64"], data.draw(state_mutations()))


@pytest.mark.slow
@long_only
@LONG_RUN
@given(st.data())
def test_long_crafted_vcpu_state_i686(bases, data):
    check_state_case(bases["i686"], data.draw(state_mutations()))


@pytest.mark.slow
@long_only
@LONG_RUN
@given(st.data())
def test_long_crafted_metadata(bases, data):
    base = bases[data.draw(PROFILES)]
    check_meta_case(base, data.draw(meta_mutations(base.meta)))


# -- the cases the issue names, and the checks each state field has ----------------------------

def test_unmodified_base_files_work(bases):
    for base in bases.values():
        base.write(json.dumps(base.meta).encode(), base.state)
        assert exercise(base) == "ran"


@pytest.mark.parametrize("name", ["\ud800", "", "a" * 0x10000], ids=["surrogate", "empty", "too-long"])
def test_function_name_that_the_wire_cannot_carry(bases, name):
    base = bases["amd64"]
    meta = dict(base.meta, guest_functions=[[name, [8], 8]] + base.meta["guest_functions"])
    assert base.write(json.dumps(meta).encode(), base.state)
    with pytest.raises(hl.InvalidSnapshot, match="guest functions: malformed entry"):
        hl.Snapshot.load(base.path)
    meta = dict(base.meta, guest_functions=base.meta["guest_functions"] * 2)
    assert base.write(json.dumps(meta).encode(), base.state)
    with pytest.raises(hl.InvalidSnapshot, match="appears twice"):
        hl.Snapshot.load(base.path)


FIELD = {name: (off, size) for name, off, size in FIELDS}


@pytest.mark.parametrize("profile,field,value,match", [
    ("amd64", "cr0", vs.AMD64_CR0 ^ 0x10000, "CR0/CR4/EFER"),
    ("amd64", "cr0", vs.AMD64_CR0 ^ 0x40000000, "CR0/CR4/EFER"),  # CD
    ("amd64", "cr4", vs.AMD64_CR4 ^ 0x20, "CR0/CR4/EFER"),  # PAE off in long mode
    ("amd64", "cr4", vs.AMD64_CR4 | 1 << 30, "CR0/CR4/EFER"),
    ("amd64", "efer", vs.AMD64_EFER | 1, "CR0/CR4/EFER"),  # SCE: syscall would work
    ("amd64", "apic_base", 0xFEE00800, "APIC base"),
    ("amd64", "apic_base", 0xFEE00D00, "APIC base"),  # x2APIC
    ("amd64", "irq1", 1, "interrupt is pending"),
    ("amd64", "xstate_bv", 0x7, "XSAVE header"),
    ("amd64", "ymmh0", 1, "extended state"),
    ("amd64", "xstate_bv", 1 << 63, "XSAVE header"),
    ("amd64", "xcomp_bv", 1 << 63, "XSAVE header"),
    ("amd64", "mxcsr", 0x1F80 | 1 << 20, "MXCSR"),
    ("amd64", "cs.dpl", 0, "CS"),
    ("amd64", "ss.selector", 0x10, "SS"),
    ("amd64", "fs.base", 1 << 60, "FS"),
    ("amd64", "tr.type", 9, "TR"),
    ("amd64", "ldt.present", 0, "LDTR"),
    ("amd64", "gdt.limit", 0xFFFF, "GDTR"),
    ("amd64", "regs[17]", 0x3202, "rflags"),  # IOPL 3, IF
    ("amd64", "regs[17]", 0x20002, "rflags"),  # VM
    ("amd64", "msr[0].data", 0x10, "MSR 0x174"),
    ("amd64", "msr[3].data", 0xFF, "MSR 0x277"),
    ("amd64", "nmsrs", 10, "MSR count"),
    ("amd64", "dr7", 0x401, "debug registers"),
    ("amd64", "debug.flags", 1, "debug registers"),
    ("amd64", "cr2", 1 << 60, "CR2"),
    ("amd64", "cr8", 1, "CR8"),
    ("i686", "cr0", 0x80000011, "CR0"),  # paging
    ("i686", "cr0", 0x20000011, "CR0"),  # NW without CD
    ("i686", "cr4", 0x20, "CR4"),
    ("i686", "cr4", 1 << 20, "CR4"),
    ("i686", "efer", 0x100, "EFER"),  # LME
    ("i686", "apic_base", 0, "APIC base"),
    ("i686", "regs[17]", 0x20002, "rflags"),
    ("i686", "cs.l", 1, "CS"),
    ("i686", "tr.present", 0, "TR"),
    ("i686", "msr[1].data", 1 << 63, "MSR 0x175"),
    ("i686", "msr[3].data", 0x0007040600070402, "PAT"),
    ("i686", "dr7", 1 << 40, "debug registers"),
    ("i686", "xstate_bv", 0x4, "XSAVE header"),
])
def test_each_loaded_field_is_checked(bases, profile, field, value, match):
    base = bases[profile]
    off, size = FIELD[field]
    state = bytearray(base.state)
    state[off:off + size] = value.to_bytes(size, "little")
    assert base.write(json.dumps(base.meta).encode(), bytes(state))
    with pytest.raises(hl.InvalidSnapshot, match=f"vCPU state is invalid: .*{match}"):
        hl.Snapshot.load(base.path)


def test_state_layout_matches_the_c_struct():
    assert vs.STATE_SIZE == kvm.STATE_SIZE
    assert struct.calcsize("<18Q") == vs.SREGS_AT


def test_state_of_a_host_with_other_features_is_a_mismatch(bases):
    # PKRU in the XSAVE image passes the profile's checks (hosts with protection keys save
    # it); a KVM without protection keys refuses it: a SnapshotMismatch, not an OSError.
    base = bases["amd64"]
    state = bytearray(base.state)
    off, size = FIELD["xstate_bv"]
    state[off:off + size] = (3 | 1 << 9).to_bytes(size, "little")
    assert base.write(json.dumps(base.meta).encode(), bytes(state))
    with hl.Snapshot.load(base.path) as snap:
        try:
            sb = hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST)
        except hl.SnapshotMismatch as e:
            assert "saved on a host with other CPU features" in str(e)
            assert "pku" not in open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
        else:
            with sb:
                assert sb.call("Echo", "x") == "x"
        with make_sandbox() as other:
            try:
                other.restore(snap)
            except hl.SnapshotMismatch as e:
                assert "saved on a host with other CPU features" in str(e) and other.poisoned
                other.restore()
            assert other.call("Echo", "y") == "y"
