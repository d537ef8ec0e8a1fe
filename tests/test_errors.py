"""Every public exception pickles with its message and attributes, and follows Python's
conventions (TimeoutError, FileNotFoundError, OSError, one HyperlightError root)."""
import inspect
import multiprocessing
import pickle

import pytest

import hlsandbox as hl
from hlsandbox import errors

PUBLIC = [getattr(hl, n) for n in hl.__all__
          if inspect.isclass(getattr(hl, n)) and issubclass(getattr(hl, n), BaseException)]

EXAMPLES = [
    hl.GuestAborted(7, "boom"),
    hl.MemoryAccessViolation("bad access", address=0x1234, access="write", vector=14, error_code=6, rip=0x99),
    hl.StackOverflow("overflow", address=0x2000, rip=0x42),
    hl.GuestFault("fault", 6, 0, 0x10),
    hl.GuestEmulationFailure("emulation", 6),
    hl.GuestError("oops", code=9),
    hl.GuestFunctionNotFound("nope"),
    hl.GuestFunctionParameterTypeMismatch("types"),
    hl.HostFunctionError("host"),
    hl.HostFunctionNotFound("missing"),
    hl.ExecutionTimeout("late"),
    hl.OutOfFileDescriptors(24, "out of file descriptors"),
]


def test_every_public_error_derives_from_hyperlight_error():
    assert len(PUBLIC) > 20
    for cls in PUBLIC:
        assert issubclass(cls, hl.HyperlightError), cls
        assert getattr(errors, cls.__name__) is cls


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
def test_examples_round_trip_through_pickle(exc):
    exc.core_dump = "/tmp/core" if isinstance(exc, (hl.GuestFault, hl.GuestAborted)) else None
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args
    assert back.__dict__ == exc.__dict__


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_public_class_round_trips(cls):
    exc = next((e for e in EXAMPLES if type(e) is cls), None)
    if exc is None:
        exc = cls("a message")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)


def _raise_aborted(_):
    raise hl.GuestAborted(3, "from a worker")


def test_pool_worker_raising_guest_aborted_reaches_get():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        r = pool.map_async(_raise_aborted, [0])
        with pytest.raises(hl.GuestAborted) as ei:
            r.get(timeout=30)
    assert ei.value.code == 3 and ei.value.message == "from a worker"


def test_python_conventions():
    assert issubclass(hl.ExecutionTimeout, TimeoutError)
    assert issubclass(hl.ExecutionTimeout, hl.ExecutionCanceled)
    assert issubclass(hl.GuestBinaryNotFound, FileNotFoundError)
    assert issubclass(hl.GuestBinaryNotFound, hl.InvalidGuestBinary)
    assert issubclass(hl.OutOfFileDescriptors, OSError)
    assert issubclass(hl.ArgumentTooLarge, ValueError)


def test_missing_guest_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        hl.UninitializedSandbox(tmp_path / "nope.elf")
    assert isinstance(ei.value, hl.HyperlightError)
    assert "nope.elf" in str(ei.value) and ei.value.filename == str(tmp_path / "nope.elf")
