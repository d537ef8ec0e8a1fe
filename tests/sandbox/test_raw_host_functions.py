"""Raw host functions: register_raw(fn_id, fn) and the guest's CallRawHost(fn_id, request)
(docs/abi.md, "Raw host calls"). fn receives a read-only view of the request, valid only during
the call, and returns bytes; failures reach the guest as a status (1 unknown id, 2 fn raised,
3 response too large), which simpleguest turns into a GuestError naming the status."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

import hlsandbox as hl

from helpers import host_add

SIMPLEGUEST = hl.guests.path("simpleguest")
HOST = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}
KiB = 1 << 10


def uninitialized(config=None):
    u = hl.UninitializedSandbox(SIMPLEGUEST, config)
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    return u


def sandbox_with(raw: dict, config=None):
    u = uninitialized(config)
    for fn_id, fn in raw.items():
        u.register_raw(fn_id, fn)
    return u.evolve()


def failed(sb, fn_id, request, status, detail=None):
    """Calls CallRawHost expecting a failure with `status` (and `detail` after it, if given)."""
    msg = rf"^raw host call {fn_id} failed with status {status}"
    msg += "$" if detail is None else ": " + detail
    with pytest.raises(hl.GuestError, match=msg) as ei:
        sb.call("CallRawHost", fn_id, request)
    assert type(ei.value) is hl.GuestError and ei.value.code == 1
    assert not sb.poisoned  # a failed raw call is an ordinary guest error
    return ei.value


# -- registration (no KVM) ----------------------------------------------------------------------------

@pytest.mark.parametrize("fn_id", [0, 1, 7, 0xFFFF, 0xFFFFFFFF])
def test_register_valid_ids(fn_id):
    u = uninitialized()
    u.register_raw(fn_id, bytes)
    assert u.host_functions.get_raw(fn_id) is bytes
    assert u.host_functions.raw_ids() == [fn_id]


@pytest.mark.parametrize("fn_id", [-1, 1 << 32, 2**64, True, False, 1.0, "7", None, b"\x07"])
def test_register_bad_ids(fn_id):
    u = uninitialized()
    with pytest.raises(ValueError, match="^" + re.escape(f"a raw host function id is a u32, got {fn_id!r}") + "$"):
        u.register_raw(fn_id, bytes)
    assert u.host_functions.raw_ids() == []


def test_register_duplicate_id():
    u = uninitialized()
    u.register_raw(7, bytes)
    with pytest.raises(ValueError, match=r"^raw host function 7 is already registered$"):
        u.register_raw(7, lambda v: b"")
    assert u.host_functions.get_raw(7) is bytes  # the first stays
    u.register_raw(8, bytes)
    assert u.host_functions.raw_ids() == [7, 8]


@pytest.mark.parametrize("fn", [None, 5, b"bytes", "text"])
def test_register_non_callable(fn):
    u = uninitialized()
    with pytest.raises(TypeError, match=r"^raw host function 3: .* is not callable$"):
        u.register_raw(3, fn)
    assert u.host_functions.raw_ids() == []


def test_raw_ids_and_typed_names_are_separate():
    u = uninitialized()
    u.register_raw(0, bytes)
    u.register("Other", lambda: 1, params=(), returns=hl.i32)
    assert u.host_functions.raw_ids() == [0]
    assert u.host_functions.get("Other") is not None


@pytest.mark.kvm
def test_register_after_evolve():
    u = uninitialized()
    u.register_raw(1, bytes)
    with u.evolve():
        with pytest.raises(RuntimeError, match=r"^cannot register host functions after evolve\(\)$"):
            u.register_raw(2, bytes)


# -- calls ----------------------------------------------------------------------------------------------

@pytest.mark.kvm
def test_round_trip():
    with sandbox_with({7: lambda v: bytes(v)[::-1], 0: lambda v: b"zero", 0xFFFFFFFF: lambda v: b"max"}) as sb:
        assert sb.call("CallRawHost", 7, b"abc") == b"cba"
        assert sb.call("CallRawHost", 7, bytes(range(256))) == bytes(range(255, -1, -1))
        assert sb.call("CallRawHost", 0, b"x") == b"zero"
        assert sb.call("CallRawHost", 0xFFFFFFFF, b"x") == b"max"
        assert sb.call("CallHostAdd", 2, 3) == 5  # typed host calls still work
        assert sb.call("CallRawHost", 7, b"again") == b"niaga"


@pytest.mark.kvm
def test_the_view():
    seen = []

    def fn(v):
        seen.append((type(v), v.readonly, v.format, v.ndim, v.nbytes, v.tobytes()))
        return b"ok"

    with sandbox_with({1: fn}) as sb:
        assert sb.call("CallRawHost", 1, b"hello\x00world") == b"ok"
    assert seen == [(memoryview, True, "B", 1, 11, b"hello\x00world")]


@pytest.mark.kvm
@pytest.mark.parametrize("result", [bytearray(b"ba"), memoryview(b"mv"), memoryview(bytearray(b"mv2"))])
def test_bytes_like_results(result):
    with sandbox_with({1: lambda v: result}) as sb:
        assert sb.call("CallRawHost", 1, b"") == bytes(result)


@pytest.mark.kvm
def test_empty_request_and_response():
    lengths = []

    def fn(v):
        lengths.append(v.nbytes)
        return b""

    with sandbox_with({1: fn, 2: lambda v: b"nonempty"}) as sb:
        assert sb.call("CallRawHost", 1, b"") == b""
        assert sb.call("CallRawHost", 1, b"x") == b""
        assert sb.call("CallRawHost", 2, b"") == b"nonempty"
    assert lengths == [0, 1]


@pytest.mark.kvm
def test_15_kib_request_with_default_buffers():
    got = []

    def fn(v):
        got.append(bytes(v))
        return hashlib.sha256(v).digest()

    request = bytes((i * 7) & 0xFF for i in range(15 * KiB))
    with sandbox_with({1: fn}) as sb:
        assert sb.config.input_data_size == sb.config.output_data_size == 16 * KiB
        assert sb.call("CallRawHost", 1, request) == hashlib.sha256(request).digest()
    assert got == [request]


@pytest.mark.kvm
def test_15_kib_response_with_default_buffers():
    response = bytes((i * 13) & 0xFF for i in range(15 * KiB))
    with sandbox_with({1: lambda v: response}) as sb:
        assert sb.call("CallRawHost", 1, b"give") == response


@pytest.mark.kvm
def test_many_calls():
    calls = []

    def fn(v):
        calls.append(bytes(v))
        return len(calls).to_bytes(4, "little")

    with sandbox_with({5: fn}) as sb:
        for i in range(200):
            assert sb.call("CallRawHost", 5, i.to_bytes(2, "little") * (i + 1)) == (i + 1).to_bytes(4, "little")
    assert calls == [i.to_bytes(2, "little") * (i + 1) for i in range(200)]


# -- failures reach the guest as a status ----------------------------------------------------------------

@pytest.mark.kvm
def test_status_1_unknown_id():
    with sandbox_with({1: bytes}) as sb:
        failed(sb, 2, b"x", 1, r"no raw host function 2$")
        failed(sb, 0xFFFFFFFF, b"", 1, r"no raw host function 4294967295$")
        assert sb.call("CallRawHost", 1, b"ok") == b"ok"
    with uninitialized().evolve() as sb:  # none registered at all
        failed(sb, 0, b"x", 1, r"no raw host function 0$")


@pytest.mark.kvm
@pytest.mark.parametrize("exc, detail", [
    (ValueError("bad thing"), r"bad thing$"),
    (RuntimeError("caf\u00e9 \u2603 \U0001F600"), "caf\u00e9 \u2603 \U0001F600$"),  # UTF-8 carried intact
    (KeyError(), r"KeyError$"),  # no message: the type's name
    (ZeroDivisionError("division by zero"), r"division by zero$"),
])
def test_status_2_the_function_raised(exc, detail):
    def fn(v):
        raise exc

    with sandbox_with({9: fn}) as sb:
        failed(sb, 9, b"abc", 2, detail)
        assert sb.call("Echo", "still usable") == "still usable"


@pytest.mark.kvm
def test_status_2_long_message_is_cut():
    def fn(v):
        raise ValueError("x" * 5000)

    with sandbox_with({9: fn}) as sb:
        e = failed(sb, 9, b"", 2, r"x+$")
        assert 100 < len(e.message) < 600  # simpleguest keeps a bounded message


@pytest.mark.kvm
def test_status_2_writing_the_view():
    errors = []

    def fn(v):
        try:
            v[0] = 1
        except TypeError as e:
            errors.append(e)
            raise
        return b"wrote"

    with sandbox_with({3: fn}) as sb:
        failed(sb, 3, b"abc", 2, r"cannot modify read-only memory$")
    assert len(errors) == 1


@pytest.mark.kvm
@pytest.mark.parametrize("result, name", [("text", "str"), (None, "NoneType"), (42, "int"), ([1, 2], "list"),
                                          (bytearray, "type")])
def test_status_2_result_not_bytes(result, name):
    with sandbox_with({6: lambda v: result}) as sb:
        failed(sb, 6, b"", 2, rf"raw host function 6 returned {name}, not bytes$")


@pytest.mark.kvm
@pytest.mark.parametrize("size", [16 * KiB, 16 * KiB + 1, 64 * KiB])
def test_status_3_response_too_large(size):
    with sandbox_with({4: lambda v: b"y" * size}) as sb:
        failed(sb, 4, b"", 3)
        assert sb.call("Echo", "fine") == "fine"


@pytest.mark.kvm
def test_status_3_depends_on_the_input_buffer_size():
    big = hl.SandboxConfiguration(input_data_size="64Ki", output_data_size="64Ki")  # the guest returns it too
    with sandbox_with({4: lambda v: b"y" * (32 * KiB)}, big) as sb:
        assert sb.call("CallRawHost", 4, b"") == b"y" * (32 * KiB)
    with sandbox_with({4: lambda v: b"y" * (32 * KiB)}) as sb:
        failed(sb, 4, b"", 3)


@pytest.mark.kvm
def test_a_base_exception_is_not_turned_into_a_status():
    class Stop(BaseException):
        pass

    def fn(v):
        raise Stop()

    with sandbox_with({1: fn}) as sb:
        with pytest.raises(Stop):
            sb.call("CallRawHost", 1, b"")
        assert sb.poisoned  # the guest never got an answer
        with pytest.raises(hl.PoisonedSandbox):
            sb.call("Echo", "x")
        sb.restore()
        assert sb.call("Echo", "x") == "x"


# -- the view does not outlive the call -----------------------------------------------------------------

@pytest.mark.kvm
def test_request_view_is_read_only_and_stays_valid():
    kept = []

    def fn(v):
        kept.append(v)
        with pytest.raises(TypeError):
            v[0] = 0
        return b"ok"

    with sandbox_with({1: fn}) as sb:
        assert sb.call("CallRawHost", 1, b"secret") == b"ok"
        assert bytes(kept[0]) == b"secret" and kept[0].readonly


@pytest.mark.kvm
def test_copy_made_during_the_call_stays():
    copies = []

    def fn(v):
        copies.append(bytes(v))
        return b""

    with sandbox_with({1: fn}) as sb:
        sb.call("CallRawHost", 1, b"first")
        sb.call("Echo", "x" * 1000)  # reuses the buffers
    assert copies == [b"first"]


@pytest.mark.kvm
@pytest.mark.parametrize("derive", ["slice", "cast", "numpy", "view"])
def test_views_kept_past_the_call_never_alias_guest_memory(derive):
    """The request is a view of a copy: whatever the function keeps still holds the request,
    not what guest memory holds later."""
    kept = []

    def fn(v):
        kept.append({"slice": lambda: v[:], "cast": lambda: v.cast("B"),
                     "numpy": lambda: np.frombuffer(v, dtype=np.uint8), "view": lambda: v}[derive]())
        return b"ok"

    with sandbox_with({1: fn}) as sb:
        sb.call("CallRawHost", 1, b"secret")
        sb.call("Echo", "later guest data " * 20)
        sb.call("CallRawHost", 1, b"other!")
        assert bytes(kept[0]) == b"secret" and bytes(kept[1]) == b"other!"


# -- snapshots record raw ids ------------------------------------------------------------------------------

@pytest.mark.kvm
def test_snapshot_records_raw_ids(tmp_path):
    with sandbox_with({9: bytes, 3: bytes, 0xFFFFFFFF: bytes}) as sb:
        snap = sb.snapshot()
        assert snap.raw_host_functions == [3, 9, 0xFFFFFFFF]
        path = tmp_path / "raw.hlsnap"
        snap.save(path)
    assert hl.Snapshot.load(path).raw_host_functions == [3, 9, 0xFFFFFFFF]
    with uninitialized().evolve() as sb:
        assert sb.snapshot().raw_host_functions == []


@pytest.mark.kvm
def test_restore_into_a_sandbox_missing_a_raw_id():
    with sandbox_with({7: lambda v: b"seven", 8: bytes}) as a, sandbox_with({8: bytes}) as b:
        snap = a.snapshot()
        with pytest.raises(hl.SnapshotMismatch, match=r"raw host function 7 is not registered"):
            b.restore(snap)
        assert b.call("Echo", "unchanged") == "unchanged"
        with sandbox_with({7: lambda v: b"other seven", 8: bytes, 99: bytes}) as c:  # a superset is fine
            c.restore(snap)
            assert c.call("CallRawHost", 7, b"") == b"other seven"  # this sandbox's function


@pytest.mark.kvm
def test_from_snapshot_missing_a_raw_id(tmp_path):
    with sandbox_with({7: lambda v: b"seven"}) as sb:
        sb.call("SetStatic", 11)
        snap = sb.snapshot()
        path = tmp_path / "raw.hlsnap"
        snap.save(path)
    for source in (snap, str(path)):
        with pytest.raises(hl.SnapshotMismatch, match=r"raw host function 7 is not registered"):
            hl.MultiUseSandbox.from_snapshot(source, host_functions=HOST)
        u = hl.UninitializedSandbox(source)
        u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
        with pytest.raises(hl.SnapshotMismatch, match=r"raw host function 7 is not registered"):
            u.evolve()
        u = hl.UninitializedSandbox(source)
        u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
        u.register_raw(7, lambda v: b"restored " + bytes(v))
        with u.evolve() as sb2:
            assert sb2.call("GetStatic") == 11
            assert sb2.call("CallRawHost", 7, b"x") == b"restored x"
