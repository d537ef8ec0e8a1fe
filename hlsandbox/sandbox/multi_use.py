"""MultiUseSandbox: a running guest whose functions Python calls."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import types
from typing import Any, Iterator, Mapping, Optional, Union

from ..errors import (ExecutionCanceled, ExecutionTimeout, GuestAborted, GuestError,
                      GuestFunctionNotFound, GuestFunctionParameterTypeMismatch, GuestProtocolError,
                      HostFunctionError, HyperlightError, PoisonedSandbox, SandboxClosed, SnapshotMismatch,
                      UsedAfterFork, WriterError)
from ..func.host_functions import HostFunctionRegistry
from ..func.types import FALLBACK, Signature, ValueType
from ..func.wire import RecordStack
from ..hypervisor import kvm
from ..abi import ErrorCode, RawStatus, RecordKind
from ..mem.builder import build_guest_memory, thread_pointer
from ..mem.elf import GuestBinary
from ..mem.layout import PAGE, TRAMPOLINE_FXSAVE, TRAMPOLINE_TARGET, TSS_SIZE, SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory, page_runs
from ..mem.snapshot import Snapshot, data_extents
from ..mem.trampoline import host_has_avx512, trampoline_code
from ..mem.system_tables import (GDT_I686_LIMIT, GDT_LIMIT, IDT_I686_LIMIT, IDT_LIMIT, PORT_ABORT, PORT_CALL_FUNCTION, PORT_FAULT,
                                 PORT_HALT, PORT_LOG, PORT_PRINT)
from .config import PY_LEVELS, SandboxConfiguration, guest_level_of_python_level
from .core_dump import attach_core_dump
from .guest_counter import GuestCounter
from .call_path import CallPath
from .call_path import RestorePlan, restore_pages
from .faults import fault_from_exit, fault_from_frame
from .hot_mode import DEFAULT_SPIN, HotMode, check_hot_capable
from .hot_path import HotPath
from .interrupt import InterruptHandle
from .output import output_function
from .watchdog import WATCHDOG

GUEST_LOGGER = logging.getLogger("hlsandbox.guest")
RAW_CALL_KIND = int(RecordKind.RAW_CALL)
ERR_HOST_FUNCTION = int(ErrorCode.HOST_FUNCTION)
ERR_HOST_FUNCTION_NOT_FOUND = int(ErrorCode.HOST_FUNCTION_NOT_FOUND)
TRACE = PY_LEVELS[0]
logging.addLevelName(TRACE, "TRACE")


def guest_level_for(logger: logging.Logger) -> int:
    """The least severe guest level the logger would emit (6: none)."""
    return guest_level_of_python_level(logger.getEffectiveLevel())


class _GuestFunction:
    __slots__ = ("signature", "name_bytes", "param_tags", "return_tag")

    def __init__(self, name: str, params: tuple[int, ...], ret: int) -> None:
        self.signature = Signature(name, tuple(ValueType(p) for p in params), ValueType(ret))
        self.name_bytes = name.encode()
        self.param_tags = tuple(params)
        self.return_tag = ret




def _fallback_call(name: str, args: tuple) -> _GuestFunction:
    """A call of a name the guest did not register, for its fallback: argument types
    from the Python values, any result type."""
    tags = []
    for a in args:
        if isinstance(a, bool):
            tags.append(ValueType.BOOL)
        elif isinstance(a, int):
            tags.append(ValueType.I32 if -2**31 <= a < 2**31 else ValueType.I64 if a < 2**63 else ValueType.U64)
        elif isinstance(a, float):
            tags.append(ValueType.F64)
        elif isinstance(a, str):
            tags.append(ValueType.STR)
        elif isinstance(a, (bytes, bytearray, memoryview)) or _is_buffer(a):
            tags.append(ValueType.BYTES)
        else:
            raise TypeError(f"{name}: cannot pass {type(a).__name__} to a guest's fallback dispatcher")
    fn = _GuestFunction(name, tuple(int(t) for t in tags), int(ValueType.VOID))
    fn.return_tag = -1  # whatever the fallback returns
    return fn


def _is_buffer(v: Any) -> bool:
    try:
        memoryview(v).release()
    except TypeError:
        return False
    return True


def _check_out(fn: _GuestFunction, out: Any) -> None:
    """call(out=...) needs a bytes result and a writable contiguous buffer: checked
    before the guest runs."""
    if fn.return_tag not in (int(ValueType.BYTES), -1):
        raise TypeError(f"out= takes a bytes result; {fn.signature.name} returns {ValueType(fn.return_tag)}")
    try:
        view = memoryview(out)
    except TypeError:
        raise TypeError(f"out must be a writable buffer, not {type(out).__name__}") from None
    with view:
        if view.readonly or not view.c_contiguous:
            raise TypeError("out must be a writable C-contiguous buffer")


class MultiUseSandbox:
    """A guest that has run its initialisation; call its functions with call().

    Created by UninitializedSandbox.evolve(). Close it with close() or a `with` block
    (garbage collection also releases the VM)."""

    def __init__(self) -> None:
        raise TypeError("create a MultiUseSandbox with UninitializedSandbox(...).evolve()")

    @classmethod
    def _new(cls, config: SandboxConfiguration, host_functions: HostFunctionRegistry, writer: Any,
             layout: SandboxMemoryLayout, counter: Optional[GuestCounter]) -> "MultiUseSandbox":
        self = object.__new__(cls)
        self._closed = True  # until fully built, so close() and __del__ are safe
        self._vm = None
        self._memory = None
        self._path = None
        self._hot: Optional[HotPath] = None  # while hot: the call path (self._path is it too)
        self._config = config  # None: the snapshot's own sizes, built when first asked for
        self._host_functions = host_functions
        self._write = output_function(writer)
        self._writer_error: Optional[BaseException] = None
        self._counter = counter
        self._timed_out_generation = -1
        self._last_host_exception: Optional[BaseException] = None
        self._max_time = config.max_execution_time if config is not None else None
        self._restore_after_call = config.restore_after_call if config is not None else False
        self._baseline: Optional[Snapshot] = None  # what the dirty pages are relative to
        self._init_snapshot: Optional[Snapshot] = None
        self._init_plan: Optional[RestorePlan] = None
        self._last_plan: Optional[tuple[Snapshot, RestorePlan]] = None  # see _plan_for()
        self.layout = layout
        return self

    @property
    def config(self) -> SandboxConfiguration:
        """The sandbox's configuration (for a sandbox from a snapshot without one: the
        snapshot's sizes and the defaults)."""
        if self._config is None:
            L = self.layout
            self._config = SandboxConfiguration(heap_size=L.heap_size, stack_size=L.stack_size,
                                                input_data_size=L.input_size, output_data_size=L.output_size,
                                                scratch_base_gpa=L.scratch_gpa, profile=L.profile)
        return self._config

    def _attach(self, memory: SharedMemory, slots: Optional[list] = None, state: Optional[bytes] = None) -> None:
        """Builds the VM over guest memory (its vCPU in `state`, if given): buffers, slots,
        the call path."""
        L = self.layout
        self._memory = memory
        base = memory.address
        self._input = RecordStack(memory, base + L.host(L.input_gpa), L.input_size, "input")
        self._output = RecordStack(memory, base + L.host(L.output_gpa), L.output_size, "output")
        self._vm = kvm.VirtualMachine(memory, base, slots or L.slots(), state,
                                      set_cpuid=kvm.cpuid_needed(cpl3_guest=L.profile == "amd64"))
        max_wait = self._config.max_wait_time if self._config is not None else None
        self._vm.max_wait = -1.0 if max_wait is None else max_wait
        self._path = CallPath(self._vm, self._input, self._output, self._serve)
        self._closed = False
        if self._counter is not None:
            self._counter._bind(memory, L.host(L.counter_gpa))

    def _set_copy_ranges(self, image_ranges: list[tuple[int, int]]) -> None:
        self._copy_ranges = list(image_ranges)
        self._restore_ranges = _u64_pairs(self._copy_ranges + self.layout.copied_ranges())

    def _set_functions(self, table: list[tuple[str, tuple[int, ...], int]]) -> None:
        self._functions = {name: _GuestFunction(name, params, ret) for name, params, ret in table}
        self.functions: Mapping[str, Signature] = types.MappingProxyType(
            {n: f.signature for n, f in self._functions.items() if n != FALLBACK})

    def _set_functions_from(self, derived: "_SnapshotDerived") -> None:
        self._functions, self.functions = derived.functions, derived.function_view

    @classmethod
    def _create(cls, binary: GuestBinary, config: SandboxConfiguration, host_functions: HostFunctionRegistry,
                writer: Any, counter: Optional[GuestCounter] = None,
                layout: Optional[SandboxMemoryLayout] = None) -> "MultiUseSandbox":
        """Loads the ELF into fresh memory and runs the guest's initialisation."""
        image = binary.image
        L = layout or layout_for(image, config)
        self = cls._new(config, host_functions, writer, L, counter)
        self._set_copy_ranges(L.writable_image_ranges(image))
        try:
            clear_avx, clear_avx512 = _trampoline_kind()
            self._attach(build_guest_memory(image, L, binary.name, clear_avx=clear_avx, clear_avx512=clear_avx512))
            level = config.guest_log_level
            if level is None:
                level = guest_level_for(GUEST_LOGGER)
            seed = int.from_bytes(os.urandom(8), "little")
            if L.profile == "i686":
                self._vm.setup_protected_mode(L.gdt_gpa, GDT_I686_LIMIT, L.idt_gpa, IDT_I686_LIMIT, L.tss_gpa)
                self._vm.set_regs(rip=L.code_gpa + image.entry, rsp=L.stack_top, rax=L.peb_gpa,
                                  rbx=seed & 0xFFFFFFFF, rcx=4096, rdx=level, rflags=2)
            else:
                self._vm.setup_long_mode(L.pt_gpa, L.gdt_gpa, GDT_LIMIT, L.idt_gpa, IDT_LIMIT, L.tss_gpa,
                                         TSS_SIZE - 1, thread_pointer(image, L))
                self._vm.set_regs(rip=L.code_gpa + image.entry, rsp=L.initial_rsp, rdi=L.peb_gpa, rsi=seed,
                                  rdx=4096, rcx=level, rflags=2)
            self._input.clear()
            self._output.clear()
            self._run_init(config.max_execution_time)
            if self._writer_error is not None:
                self._raise_writer_error()
            self._set_functions(self._output.pop_function_table())
            self._init_snapshot = self.snapshot()
            self._init_plan = self._plan_for(self._init_snapshot)
        except BaseException as e:
            self.close()
            _raise_fd_limit(e)
            raise
        return self

    @classmethod
    def from_snapshot(cls, snapshot: Union[Snapshot, str, os.PathLike],
                      config: Optional[SandboxConfiguration] = None, *,
                      host_functions: Optional[Mapping[str, Any]] = None, writer: Any = None) -> "MultiUseSandbox":
        """A running sandbox in the state of `snapshot` (a Snapshot or the path of a snapshot
        file), without running the guest's initialisation again.

        Guest memory maps the snapshot copy-on-write, so sandboxes from one snapshot share
        its pages until they write them. `host_functions` maps names to callables (typed by
        their hints) or to (fn, params, returns); every host function the snapshot was taken
        with must be given (raw host functions and a GuestCounter need UninitializedSandbox).
        `config` may change time limits; its sizes must match the snapshot."""
        if config is not None and not isinstance(config, SandboxConfiguration):
            raise TypeError(f"config must be a SandboxConfiguration, not {type(config).__name__}")
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        return cls._restored(snap, config, _SnapshotDerived.of(snap).registry_for(snap, host_functions), writer)

    @classmethod
    def _restored(cls, snap: Snapshot, config: Optional[SandboxConfiguration],
                  host_functions: HostFunctionRegistry, writer: Any,
                  counter: Optional[GuestCounter] = None) -> "MultiUseSandbox":
        if not isinstance(snap, Snapshot):
            raise TypeError(f"expected a Snapshot, not {type(snap).__name__}")
        snap._adopt()  # raises SnapshotClosed
        L = snap.layout
        if config is not None:
            _check_config(config, L)
        derived = _SnapshotDerived.of(snap)
        if host_functions is not derived.checked_registry:
            _check_host_functions(snap, host_functions)
        self = cls._new(config, host_functions, writer, L, counter)
        self._copy_ranges, self._restore_ranges = snap.copy_ranges, derived.restore_ranges
        try:
            try:
                self._attach(snap.map_private(), derived.slots, snap.vcpu_state)
            except OSError as e:
                if "loading the vCPU state" not in str(e):
                    raise
                # The state passed the profile's checks (Snapshot.load, or taken here), so
                # this KVM lacks a feature the saving host had (PKRU, an MSR).
                raise SnapshotMismatch(f"this host's KVM refuses the snapshot's vCPU state ({e.strerror}): "
                                       f"was it saved on a host with other CPU features?") from e
            self._write_trampoline()
            self._path.pending, self._path.pending_generation = snap, self._vm.generation
            self._set_functions_from(derived)
            self._baseline = self._init_snapshot = snap  # memory is the snapshot's, nothing written yet
            self._init_plan = self._plan_for(snap)
        except BaseException as e:
            self.close()
            _raise_fd_limit(e)
            raise
        return self

    # -- calls --------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, timeout: Optional[float] = None, restore: Optional[bool] = None,
             wait: Union[float, bool, None] = None, out: Any = None) -> Any:
        """Calls guest function `name` with `args` and returns its result.

        Checks name, arity and types first (GuestFunctionNotFound,
        GuestFunctionParameterTypeMismatch). `timeout` (seconds, default the
        configuration's max_execution_time) stops a call that runs longer (ExecutionTimeout).
        An abort, fault or cancellation poisons the sandbox (PoisonedSandbox).
        With `restore=True` (default: the configuration's restore_after_call) the sandbox
        is restored to its state after initialisation once the call returns or fails,
        so every such call starts from a clean guest.

        Calls from several threads run one at a time: a call waits while another runs, up
        to `wait` seconds (default the configuration's max_wait_time; True: no limit;
        False or 0: do not wait), then raises SandboxBusy.

        `bytes` arguments take any buffer (bytes, bytearray, memoryview, a numpy array),
        copied from its memory once. With `out` (a writable C-contiguous buffer, e.g. a
        numpy array or a bytearray) a bytes result is written into it instead of a new
        bytes object, and the call returns the number of bytes written (ValueError if
        the result does not fit)."""
        fn = self._functions.get(name)
        if fn is None and FALLBACK in self._functions and name != FALLBACK:
            fn = _fallback_call(name, args)
        if fn is None or self._closed or self._path.poisoned:
            self._refuse(name)
        w = -2.0 if wait is None else _wait_seconds(wait)
        restoring = restore or (restore is None and self._restore_after_call)
        if out is not None:
            _check_out(fn, out)
        try:
            if out is not None:
                return self._timed_call(fn, args, self._max_time if timeout is None else timeout, w, out)
            if timeout is None and self._max_time is None:
                if restoring and self._init_snapshot is self._baseline and self._init_plan is not None:
                    try:  # call and restore in one Cython method: the per-request clean guest
                        return self._path.call_restoring(fn.name_bytes, fn.param_tags, fn.return_tag, args,
                                                         self._init_plan, w)
                    finally:
                        restoring = False
                        if not self._closed:
                            self._after_restore()
                return self._path.call(fn.name_bytes, fn.param_tags, fn.return_tag, args, w)
            return self._timed_call(fn, args, self._max_time if timeout is None else timeout, w)
        except HostFunctionError as e:
            e.__cause__ = self._last_host_exception
            raise
        except GuestProtocolError:
            self._path.poisoned = True
            raise
        finally:
            self._last_host_exception = None
            if restoring:
                self.restore(self._init_snapshot)
            if self._writer_error is not None:
                self._raise_writer_error()

    async def acall(self, name: str, *args: Any, timeout: Optional[float] = None,
                    restore: Optional[bool] = None) -> Any:
        """call() without blocking the event loop: it runs on the loop's default executor.

        Cancelling the awaiting task drops a call that has not started and kills one that
        runs; a sandbox that the kill poisoned is restored (to its state after
        initialisation) before the worker lets it go. A kill retried while this call waits
        for another thread's call on the same sandbox may stop that one."""
        import asyncio
        from .aio import CallGuard, await_cancellable, run_guarded
        guard = CallGuard()

        def work() -> Any:
            try:
                return run_guarded(guard, self, lambda: self.call(name, *args, timeout=timeout, restore=restore))
            finally:
                if guard.cancelled and not self._closed and self._path.poisoned:
                    self.restore()

        return await await_cancellable(asyncio.get_running_loop().run_in_executor(None, work), guard)

    def _raise_writer_error(self) -> None:
        e, self._writer_error = self._writer_error, None
        raise WriterError(f"the writer of the guest's output raised {type(e).__name__}: {e}") from e

    # -- hot mode ----------------------------------------------------------------------------

    def hot(self, spin: float = DEFAULT_SPIN) -> HotMode:
        """A context manager that keeps the sandbox hot: calls without a VM exit, at the
        price of a core spinning while calls come (see HotMode; docs/architecture.md)."""
        return HotMode(self, spin)

    @property
    def is_hot(self) -> bool:
        """True inside `with sb.hot()`."""
        return self._hot is not None

    def _start_hot(self, spin: float) -> None:
        if self._closed:
            self._refuse()
        if self._hot is not None:
            raise HyperlightError("the sandbox is already hot")
        why = check_hot_capable(self.layout.profile)
        if why is not None:
            raise why
        L = self.layout
        mailbox = self._memory.address + L.host(L.hot_mailbox_gpa)
        self._hot = HotPath(self._vm, self._input, self._output, self._serve, self._path, self._memory, mailbox,
                            spin)
        self._cold_path, self._path = self._path, self._hot

    def _stop_hot(self) -> None:
        hot = self._hot
        if hot is None:
            return
        try:
            hot.close()
        finally:
            self._hot = None
            self._path = self._cold_path

    def _refuse(self, name: str = "") -> None:
        if self._vm is not None and self._vm.forked:
            raise UsedAfterFork("this sandbox was created by the parent process before fork(); its VM "
                                "belongs to the parent: create a new sandbox in the child")
        if self._closed:
            raise SandboxClosed("the sandbox is closed")
        if self._path.poisoned:
            raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
        raise GuestFunctionNotFound(f"the guest has no function {name!r}")

    def _timed_call(self, fn: _GuestFunction, args: tuple, timeout: Optional[float], wait: float,
                    out: Any = None) -> Any:
        """A guest call driven from Python: with a time limit (`timeout` seconds; None or inf:
        none), or decoding a bytes result into `out` (call(out=...)), or both."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
            if timeout > WATCHDOG.MAX_SECONDS and timeout != math.inf:
                raise ValueError(f"timeout={timeout!r} is beyond the longest limit the platform can wait "
                                 f"({WATCHDOG.MAX_SECONDS:.3g} s); use None or inf for no limit")
        limited = timeout is not None and timeout != math.inf
        if not limited and out is None:
            return self._path.call(fn.name_bytes, fn.param_tags, fn.return_tag, args, wait)
        path = self._path
        generation = path.begin(wait)
        token = None
        try:
            if path.poisoned:  # by the call this one waited for
                raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
            if limited:
                token = WATCHDOG.arm(timeout, lambda: self._on_timeout(generation))
            try:
                self._input.push_call(fn.name_bytes, fn.param_tags, args)
                self._output.clear()
                path.run_until_halt(generation)
            finally:
                if token is not None:
                    WATCHDOG.disarm(token)
            # Decode before path.end(): once the vCPU is released, close() in another
            # thread may unmap guest memory.
            if out is None:
                return self._output.pop_result(fn.return_tag)
            return self._output.pop_result_into(out)
        finally:
            path.end()

    def _run_init(self, timeout: Optional[float]) -> None:
        path = self._path
        generation = path.begin()
        token = None
        try:
            if timeout and timeout != math.inf:
                token = WATCHDOG.arm(timeout, lambda: self._on_timeout(generation))
            path.run_until_halt(generation)
        finally:
            if token is not None:
                WATCHDOG.disarm(token)
            path.end()

    def _serve(self, rc: int, generation: int) -> None:
        """Serves one exit that is not HALT, or raises the exception that ends the call."""
        if rc == PORT_CALL_FUNCTION:
            self._host_call()
        elif rc == PORT_LOG:
            self._log()
        elif rc == PORT_PRINT:
            self._print()
        else:
            raise attach_core_dump(self, self._stopped(rc, generation), rc)

    def _on_timeout(self, generation: int) -> None:
        self._timed_out_generation = generation
        vm = self._vm
        if vm is not None:
            vm.kill(generation)

    def _stopped(self, rc: int, generation: int) -> HyperlightError:
        """The exception for an exit that ends the call abnormally."""
        if rc == kvm.EXIT_CANCELED:
            if self._timed_out_generation == generation:
                return ExecutionTimeout("the guest call exceeded its time limit and was stopped")
            return ExecutionCanceled("the guest call was canceled")
        if rc == PORT_ABORT:
            try:
                code, message = self._output.pop_error()
            except GuestProtocolError as e:
                return GuestProtocolError(f"the guest aborted, but its abort record is unreadable: {e}")
            return GuestAborted(code, message)
        if rc == PORT_FAULT:
            return fault_from_frame(self._memory, self.layout, self._vm.io_byte(), self._vm)
        return fault_from_exit(rc, self._vm)

    def _host_call(self) -> None:
        if self._output.top_kind() == RAW_CALL_KIND:
            self._raw_host_call()
            return
        name, args, tags = self._output.pop_call()
        hf = self._host_functions.get(name)
        if hf is None:
            self._input.push_error(ERR_HOST_FUNCTION_NOT_FOUND, f"host function {name!r} is not registered")
            return
        if tags != hf.param_tags:
            got = ", ".join(str(ValueType(t)) for t in tags)
            self._input.push_error(ERR_HOST_FUNCTION_NOT_FOUND, f"host function {hf.signature} called with ({got})")
            return
        try:
            result = hf.fn(*args)
        except Exception as e:  # reaches the guest as an error; BaseException propagates
            self._last_host_exception = e
            self._input.push_error(ERR_HOST_FUNCTION, str(e) or type(e).__name__)
            return
        try:
            fits = self._input.push_return(hf.return_tag, result, f"host function {name} result")
        except GuestFunctionParameterTypeMismatch as e:
            self._input.push_error(ERR_HOST_FUNCTION, str(e))
            return
        if not fits:
            self._input.push_error(ERR_HOST_FUNCTION, f"host function {name} result does not fit the input buffer")

    def _raw_host_call(self) -> None:
        """A RAW_CALL: the request is passed as a read-only view of a copy of its bytes; the
        status tells the guest what happened (docs/abi.md, Raw host calls)."""
        fn_id, offset, length = self._output.pop_raw_call()
        fn = self._host_functions.get_raw(fn_id)
        if fn is None:
            self._push_raw(RawStatus.UNKNOWN_ID, f"no raw host function {fn_id}".encode())
            return
        start = self.layout.host(self.layout.output_gpa) + offset
        # A read-only view of a copy: nothing the function keeps can alias guest memory.
        view = memoryview(self._memory.read(start, length))
        try:
            result = fn(view)
            # Any buffer (bytes, bytearray, a numpy array...): copied once, into the input buffer.
            try:
                data = memoryview(result) if not isinstance(result, str) else None
            except TypeError:
                data = None
            if data is None:
                raise TypeError(f"raw host function {fn_id} returned {type(result).__name__}, not bytes")
            if not data.c_contiguous:
                data = data.tobytes()
        except Exception as e:  # reaches the guest as status 2; BaseException propagates
            self._last_host_exception = e
            self._push_raw(RawStatus.RAISED, (str(e) or type(e).__name__).encode("utf-8", "replace"))
            return
        self._push_raw(RawStatus.OK, data)

    def _push_raw(self, status: int, data: bytes) -> None:
        if not self._input.push_raw_result(status, data):
            if not self._input.push_raw_result(RawStatus.TOO_LARGE, b""):
                raise GuestProtocolError("input buffer: no room for a raw host call result")

    def _log(self) -> None:
        level, line, source, message = self._output.pop_log()
        if level >= len(PY_LEVELS):
            raise GuestProtocolError(f"log record with level {level}, expected 0..5")
        py_level = PY_LEVELS[level]
        if GUEST_LOGGER.isEnabledFor(py_level):
            # The record's own location fields name the guest's source line (a format's
            # %(pathname)s:%(lineno)d then points into the guest, not into hlsandbox).
            record = GUEST_LOGGER.makeRecord(GUEST_LOGGER.name, py_level, source or "<guest>", line, "%s",
                                             (message,), None, func=None,
                                             extra={"guest_source": source, "guest_line": line,
                                                    "guest_level": level})
            GUEST_LOGGER.handle(record)

    def _print(self) -> None:
        text = self._output.pop_print()
        try:
            self._write(text)
        except Exception as e:  # the guest goes on; the call raises WriterError at its end
            if self._writer_error is None:
                self._writer_error = e

    # -- snapshots ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _closing_race(self, what: str) -> Iterator[None]:
        """Turns the error of an operation whose memory close() in another thread pulled
        away mid-way into SandboxClosed."""
        try:
            yield
        except HyperlightError:
            raise
        except Exception as e:
            if self._closed:
                raise SandboxClosed(f"the sandbox was closed by another thread during {what}") from e
            raise

    def snapshot(self) -> Snapshot:
        """Captures guest memory and vCPU state; restore() puts the sandbox back to it."""
        if self._closed or self._path.poisoned:
            self._refuse("")
        with self._closing_race("snapshot()"):
            return self._snapshot()

    def _snapshot(self) -> Snapshot:
        vm = self._vm
        path = self._path
        path.begin()
        try:
            if path.poisoned:  # by a call this one waited for
                raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
            if self._hot is not None:
                self._hot.park()  # vCPU state can only be read with the guest out of KVM_RUN
            # After a restore the snapshot's state is staged, not yet in the vCPU.
            staged = path.pending is not None and vm.generation == path.pending_generation + 1
            state = path.pending.vcpu_state if staged else vm.save_state()
            vm.discard_dirty_pages()  # from here, dirty pages are relative to this snapshot
            snap = Snapshot.capture(self._memory, self.layout, state, self._host_functions.signatures(),
                                    [f.signature for f in self._functions.values()], self._copy_ranges,
                                    self._host_functions.raw_ids())
            self._baseline = snap
            return snap
        finally:
            path.end()

    def restore(self, snapshot: Optional[Snapshot] = None) -> None:
        """Puts memory and vCPU state back to `snapshot` (default: the state after
        initialisation) and makes a poisoned sandbox usable again.

        Restoring the snapshot this sandbox took or restored last costs the pages the
        guest wrote since (found by KVM dirty logging) plus the regions every call
        writes; any other snapshot with the same layout is copied whole."""
        if self._closed:
            self._refuse("")
        with self._closing_race("restore()"):
            self._restore(snapshot)

    def _restore(self, snapshot: Optional[Snapshot]) -> None:
        snap = self._init_snapshot if snapshot is None else snapshot
        plan = self._plan_for(snap) if snap is self._baseline else None
        if plan is not None:  # amd64: the fast path, one Cython call
            if snapshot is not None and snap._closed:
                snap._check_open()
            self._path.restore(plan)
            self._after_restore()
            return
        if not isinstance(snap, Snapshot):
            raise TypeError(f"restore() takes a Snapshot, not {type(snap).__name__}")
        if snapshot is not None:
            snap._check_open()
        if snap is not self._baseline:
            if snap.layout.describe() != self.layout.describe():
                raise SnapshotMismatch("the snapshot's memory layout differs from this sandbox's")
            _check_host_functions(snap, self._host_functions)
            if [(g.name, g.params, g.returns) for g in snap.guest_functions] != \
                    [(f.signature.name, f.signature.params, f.signature.returns) for f in self._functions.values()]:
                raise SnapshotMismatch("the snapshot's guest functions differ from this sandbox's")
        vm = self._vm
        path = self._path
        path.begin()
        try:
            if self._hot is not None:
                self._hot.park()
            if snap is self._baseline:  # i686: no trampoline without 64-bit code: KVM_SET_XSAVE
                restore_pages(vm, self._memory, snap.image, self._restore_ranges)
                # A CPL0 guest can write MSRs (IA32_SYSENTER_*) and debug registers: all of it.
                vm.load_state(snap.vcpu_state, kvm.LOAD_ALL)
            else:
                vm.discard_dirty_pages()
                _copy_all(self._memory, snap)
                self._write_trampoline()
                # A CPL3 (amd64) guest cannot set debug registers: its snapshots hold a new
                # vCPU's (checked for files), so that ioctl is skipped.
                try:
                    vm.load_state(snap.vcpu_state, kvm.LOAD_ALL if self.layout.profile == "i686"
                                  else kvm.LOAD_ALL & ~kvm.LOAD_DEBUG)
                except OSError as e:
                    path.poisoned = True  # memory is the snapshot's, the vCPU is not
                    raise SnapshotMismatch(f"this host's KVM refuses the snapshot's vCPU state ({e.strerror}): "
                                           f"was it saved on a host with other CPU features?") from e
                self._baseline = snap
            path.poisoned = False
            path.pending, path.pending_generation = snap, vm.generation
            self._after_restore()
        finally:
            path.end()

    def _write_trampoline(self) -> None:
        """The restore trampoline is this host's code, whatever a snapshot's image holds
        (a file may come from a host with other registers to clear, or be crafted): written
        where it differs (a from_snapshot() sandbox then keeps sharing the page)."""
        L = self.layout
        if L.profile != "amd64":
            return
        code = _trampoline_code()
        at = L.host(L.trampoline_gpa)
        if self._memory.read(at, len(code)) != code:
            self._memory.write(at, code)

    def _after_restore(self) -> None:
        """Bookkeeping after a snapshot's memory and registers are back."""
        if self._counter is not None:
            self._counter._write()  # the host's value, whatever the snapshot holds

    def _plan_for(self, snap: Snapshot) -> Optional[RestorePlan]:
        """The fast-restore plan of an amd64 snapshot (kept for the init snapshot and for
        the last other snapshot asked for, normally the baseline)."""
        if self.layout.profile != "amd64":
            return None
        if snap is self._init_snapshot and self._init_plan is not None:
            return self._init_plan
        cached = self._last_plan
        if cached is not None and cached[0] is snap:
            return cached[1]
        L = self.layout
        plan = RestorePlan(self._memory, snap.image, self._restore_ranges, snap.vcpu_state, L.trampoline_gpa,
                           TRAMPOLINE_TARGET, TRAMPOLINE_FXSAVE)
        plan.snapshot = snap
        self._last_plan = (snap, plan)
        return plan

    # -- state ---------------------------------------------------------------------------------

    @property
    def poisoned(self) -> bool:
        """True after an abort, fault or cancellation until the sandbox is restored."""
        return self._path.poisoned

    def read_memory(self, gpa: int, size: int) -> bytes:
        """A copy of guest memory at guest physical address `gpa` (for inspection and tests);
        the range must lie within the snapshot region or within the scratch region."""
        if self._closed or self._vm.forked:
            self._refuse("")
        L = self.layout
        start = L.host(gpa)
        if size < 0 or (size and L.host(gpa + size - 1) != start + size - 1):
            raise ValueError(f"[{gpa:#x}, +{size:#x}) crosses the end of a guest memory region")
        return self._memory.read(start, size)

    def interrupt_handle(self) -> InterruptHandle:
        """A handle whose kill() stops the running call from any thread."""
        if self._closed or self._vm.forked:
            self._refuse()
        return InterruptHandle(self._vm)

    def close(self) -> None:
        """Destroys the VM and frees guest memory; a call running in another thread is
        killed and waited for (calls waiting for the sandbox raise SandboxClosed). Refused
        from inside one of its own calls (a host function), which leaves it open."""
        if self._vm is not None:
            self._vm.check_closable()
        self._stop_hot()
        if self._vm is not None:
            self._vm.close()
        self._closed = True
        if self._memory is not None:
            self._memory.close()
        # The snapshots this sandbox keeps hold a memfd and a mapping each; a closed
        # sandbox that is still referenced must not keep them (a user's own stay open).
        self._init_snapshot = self._baseline = None
        if self._path is not None:
            self._path.pending = None
        self._init_plan = self._last_plan = None

    def __enter__(self) -> "MultiUseSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self.poisoned else "ready"
        return f"<MultiUseSandbox {state}, {len(getattr(self, '_functions', {}))} guest functions>"


_TRAMPOLINE: Optional[tuple[tuple[bool, bool], bytes]] = None


def _trampoline_kind() -> tuple[bool, bool]:
    """(clear AVX, clear AVX-512) for the restore trampoline (mem/trampoline.py): what a
    CPL3 guest can reach beyond the FXSAVE image, on kvm-pvm only."""
    return _trampoline_state()[0]


def _trampoline_code() -> bytes:
    return _trampoline_state()[1]


def _trampoline_state() -> tuple[tuple[bool, bool], bytes]:
    global _TRAMPOLINE
    if _TRAMPOLINE is None:
        pvm = kvm.is_kvm_pvm()
        kind = (pvm, pvm and host_has_avx512())
        _TRAMPOLINE = (kind, trampoline_code(*kind))
    return _TRAMPOLINE
def _raise_fd_limit(e: BaseException) -> None:
    """Re-raises running out of file descriptors (a memfd, an mmap) as OutOfFileDescriptors."""
    if isinstance(e, OSError) and not isinstance(e, HyperlightError):
        exhausted = kvm.fd_exhausted(e.errno or 0, "creating a sandbox")
        if exhausted is not None:
            raise exhausted from e


def _wait_seconds(wait: Union[float, bool]) -> float:
    """call()'s `wait` as begin()'s seconds: True no limit (-1), False 0."""
    if wait is True:
        return -1.0
    if wait is False:
        return 0.0
    if not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
        raise ValueError(f"wait must be seconds >= 0, True or False, got {wait!r}")
    return -1.0 if math.isinf(wait) else float(wait)


def layout_for(image: Any, config: SandboxConfiguration) -> SandboxMemoryLayout:
    """The layout of a guest image under a configuration (raises InvalidConfiguration)."""
    return SandboxMemoryLayout(image, config.heap_size, config.stack_size, config.input_data_size,
                               config.output_data_size, scratch_base=config.scratch_base_gpa,
                               profile=config.profile)


class _SnapshotDerived:
    """What every sandbox created from one snapshot shares, computed once per snapshot:
    its KVM slots, the ranges a restore copies whole and its guest function table
    (all read-only)."""

    __slots__ = ("slots", "restore_ranges", "functions", "function_view", "checked_registry", "_spec")

    def __init__(self, snap: Snapshot) -> None:
        L = snap.layout
        self.slots = L.slots()
        self.restore_ranges = _u64_pairs(list(snap.copy_ranges) + L.copied_ranges())
        self.functions = {g.name: _GuestFunction(g.name, tuple(int(p) for p in g.params), int(g.returns))
                          for g in snap.guest_functions}
        self.function_view = types.MappingProxyType(
            {n: f.signature for n, f in self.functions.items() if n != FALLBACK})
        # The registry from_snapshot() built last, and from what: sandboxes created with the
        # same host functions share it (a from_snapshot registry is never changed).
        self.checked_registry: Optional[HostFunctionRegistry] = None
        self._spec: Optional[tuple] = None

    def registry_for(self, snap: Snapshot, host_functions: Optional[Mapping[str, Any]]) -> HostFunctionRegistry:
        """The registry of from_snapshot()'s `host_functions`, checked against `snap`."""
        spec = tuple((host_functions or {}).items())
        if spec == self._spec and self.checked_registry is not None:
            return self.checked_registry
        registry = HostFunctionRegistry()
        for name, fn in spec:
            if isinstance(fn, tuple):
                registry.register(name, *fn)
            else:
                registry.register(name, fn)
        _check_host_functions(snap, registry)
        self.checked_registry, self._spec = registry, spec
        return registry

    @staticmethod
    def of(snap: Snapshot) -> "_SnapshotDerived":
        derived = snap._derived
        if derived is None:
            derived = snap._derived = _SnapshotDerived(snap)
        return derived


def _check_config(config: SandboxConfiguration, L: SandboxMemoryLayout) -> None:
    """A configuration given with a snapshot may change limits, not the layout."""
    sizes = {"heap_size": L.heap_size, "stack_size": L.stack_size, "input_data_size": L.input_size,
             "output_data_size": L.output_size}
    if config.scratch_base_gpa is not None:
        sizes["scratch_base_gpa"] = L.scratch_gpa
    if config.profile is not None:
        sizes["profile"] = L.profile
    wrong = [f"{k}={getattr(config, k)} (snapshot: {v})" for k, v in sizes.items() if getattr(config, k) != v]
    if wrong:
        raise SnapshotMismatch(f"configuration does not match the snapshot's layout: {', '.join(wrong)}")


def _check_host_functions(snap: Snapshot, registry: HostFunctionRegistry) -> None:
    """Every host function the snapshot's guest may call must exist with the same signature."""
    problems = []
    for sig in snap.host_functions:
        hf = registry.get(sig.name)
        if hf is None:
            problems.append(f"{sig} is not registered")
        elif hf.signature != sig:
            problems.append(f"{sig.name} is registered as {hf.signature}, the snapshot has {sig}")
    for fn_id in snap.raw_host_functions:
        if registry.get_raw(fn_id) is None:
            problems.append(f"raw host function {fn_id} is not registered")
    if problems:
        raise SnapshotMismatch("host functions do not match the snapshot: " + "; ".join(problems))


def _u64_pairs(pairs: list[tuple[int, int]]) -> memoryview:
    """(offset, size) pairs as a flat, read-only u64 buffer (what the Cython restore reads)."""
    return memoryview(struct.pack(f"@{2 * len(pairs)}Q", *(x for p in pairs for x in p))).cast("Q")


def _copy_all(memory: SharedMemory, snap: Snapshot) -> None:
    """Makes guest memory equal to the snapshot's image: copies every page that holds data
    in either (other pages are zero in both)."""
    mask = memory.resident_pages()
    for a, b in data_extents(snap._fd, snap.memory_size, snap.offset):
        first, end = a // PAGE, -(-b // PAGE)
        mask[first:end] = b"\x01" * (end - first)
    src = snap.image.address
    for a, b in page_runs(mask):
        memory.copy_from(src + a * PAGE, a * PAGE, (b - a) * PAGE)
