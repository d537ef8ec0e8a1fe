"""amd64 guests link the C library (musl): stdio to the sandbox's writer, the heap,
strings, math, setjmp, errno through the thread block the host points FS at."""
from __future__ import annotations

import io
import math

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def libc_sandbox(built_guest):
    out = io.StringIO()
    sb = hl.UninitializedSandbox(built_guest("libcguest", extra_cflags=["-Werror"]), writer=out).evolve()
    sb.out = out
    with sb:
        yield sb


def test_snprintf_formats_integers_floats_and_strings(libc_sandbox):
    assert libc_sandbox.call("Format", -42, 3.14159, "str") == \
        "-42| 3.14|3.14159|3.141590e+00|str|ff|-1234567890123"


def test_printf_and_stderr_reach_the_writer(libc_sandbox):
    libc_sandbox.out.seek(0)
    libc_sandbox.out.truncate()
    libc_sandbox.call("Print", "hey")
    # stdout is line-buffered (and flushed at the end of each call); stderr unbuffered.
    assert libc_sandbox.out.getvalue() == "printf says hey and 2.500\nto stderr\n"


@pytest.mark.parametrize("text, value", [("1.5e3", 1500.0), ("-0.125", -0.125), ("inf", math.inf),
                                         ("0x1p-3", 0.125)])
def test_strtod(libc_sandbox, text, value):
    assert libc_sandbox.call("ParseDouble", text) == value


@pytest.mark.parametrize("x", [0.5, -2.25, 10.0])
def test_math_library(libc_sandbox, x):
    want = math.sin(x) + math.cos(x) + math.sqrt(abs(x)) + x ** 2 + math.log1p(abs(x)) + math.exp(-x * x)
    assert libc_sandbox.call("Math", x) == pytest.approx(want, rel=1e-15)


def test_malloc_qsort_bsearch_realloc_free(libc_sandbox):
    data = bytes([9, 3, 200, 0, 77, 3])
    for _ in range(50):  # the heap is reused across calls, not exhausted
        assert libc_sandbox.call("SortBytes", data) == bytes(sorted(data))


def test_allocating_string_functions_use_the_guest_heap(libc_sandbox):
    for _ in range(20):
        assert libc_sandbox.call("Allocating", "abcdef") == "abcdef|abc|42"


def test_errno_setjmp_and_ctype(libc_sandbox):
    # errno = ERANGE (34) from strtol through the thread block, longjmp value 7, ctype ok.
    assert libc_sandbox.call("ErrnoAndJumps") == 34 * 1000 + 7 * 10 + 1


def test_libc_guest_restores_like_any_guest(libc_sandbox):
    snap = libc_sandbox.snapshot()
    libc_sandbox.call("Print", "a")
    libc_sandbox.restore(snap)
    assert libc_sandbox.call("Echo", "still here") == "still here"


def test_operating_system_features_fail_with_enosys(libc_sandbox):
    assert libc_sandbox.call("NoOs") == 8


def test_clocks_come_from_the_host(libc_sandbox):
    import time
    before = int(time.time())
    assert before <= libc_sandbox.call("Clocks") <= int(time.time()) + 1


def test_exit_aborts_the_call_with_its_code(built_guest):
    out = io.StringIO()
    with hl.UninitializedSandbox(built_guest("libcguest"), writer=out).evolve() as sb:
        with pytest.raises(hl.GuestAborted) as e:
            sb.call("Exit", 3)
        assert e.value.code == 3 and "exit()" in str(e.value)
        assert out.getvalue() == "unflushed before exit"  # stdout flushed first


def test_abort_aborts_the_call(built_guest):
    with hl.UninitializedSandbox(built_guest("libcguest")).evolve() as sb:
        with pytest.raises(hl.GuestAborted, match="abort"):
            sb.call("Abort")


def test_raw_syscall_is_a_fault_naming_its_number(built_guest):
    with hl.UninitializedSandbox(built_guest("libcguest")).evolve() as sb:
        with pytest.raises(hl.GuestFault, match=r"syscall number 39\b"):
            sb.call("RawSyscall", 39)


def test_stack_protector_guests_link_and_run(built_guest):
    path = built_guest("libcguest", extra_cflags=["-fstack-protector-strong"])
    with hl.UninitializedSandbox(path).evolve() as sb:
        assert sb.call("ProtectedCopy", "x" * 30) == "x" * 30
        assert sb.call("Format", 1, 1.0, "s").startswith("1|")
