"""MultiUseSandbox: a running guest whose functions Python calls."""
from __future__ import annotations

import logging
import os
import sys
import types
from typing import Any, Mapping, Optional

from ..errors import (ExecutionCanceled, ExecutionTimeout, GuestAborted, GuestError,
                      GuestFunctionNotFound, GuestFunctionParameterTypeMismatch, GuestProtocolError,
                      HostFunctionError, HyperlightError, PoisonedSandbox)
from ..func.host_functions import HostFunctionRegistry
from ..func.types import Signature, ValueType
from ..func.wire import RecordStack
from ..hypervisor import kvm
from ..mem.builder import build_guest_memory
from ..mem.elf import GuestBinary
from ..mem.layout import TSS_SIZE, SandboxMemoryLayout
from ..mem.system_tables import (GDT_LIMIT, IDT_LIMIT, PORT_ABORT, PORT_CALL_FUNCTION, PORT_FAULT,
                                 PORT_HALT, PORT_LOG, PORT_PRINT)
from .config import SandboxConfiguration
from .call_path import CallPath
from .faults import fault_from_exit, fault_from_frame
from .interrupt import InterruptHandle
from .watchdog import WATCHDOG

GUEST_LOGGER = logging.getLogger("hlsandbox.guest")
TRACE = 5
logging.addLevelName(TRACE, "TRACE")
# Guest log levels 0..5 (docs/abi.md) as Python logging levels.
PY_LEVELS = (TRACE, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def guest_level_for(logger: logging.Logger) -> int:
    """The least severe guest level the logger would emit (6: none)."""
    eff = logger.getEffectiveLevel()
    for guest_level, py_level in enumerate(PY_LEVELS):
        if py_level >= eff:
            return guest_level
    return 6


class _GuestFunction:
    __slots__ = ("signature", "name_bytes", "param_tags", "return_tag")

    def __init__(self, name: str, params: tuple[int, ...], ret: int) -> None:
        self.signature = Signature(name, tuple(ValueType(p) for p in params), ValueType(ret))
        self.name_bytes = name.encode()
        self.param_tags = tuple(params)
        self.return_tag = ret


class MultiUseSandbox:
    """A guest that has run its initialisation; call its functions with call().

    Created by UninitializedSandbox.evolve(). Close it with close() or a `with` block
    (garbage collection also releases the VM)."""

    def __init__(self) -> None:
        raise TypeError("create a MultiUseSandbox with UninitializedSandbox(...).evolve()")

    @classmethod
    def _create(cls, binary: GuestBinary, config: SandboxConfiguration, host_functions: HostFunctionRegistry,
                writer: Any) -> "MultiUseSandbox":
        self = object.__new__(cls)
        self._closed = True  # until fully built, so close() and __del__ are safe
        self._vm = None
        self._memory = None
        self._path = None
        self.config = config
        self._host_functions = host_functions
        self._writer = writer
        self._timed_out_generation = -1
        self._last_host_exception: Optional[BaseException] = None
        image = binary.image
        self.layout = L = SandboxMemoryLayout(image, config.heap_size, config.stack_size, config.input_data_size,
                                              config.output_data_size)
        try:
            self._memory = build_guest_memory(image, L, binary.name)
            base = self._memory.address
            self._input = RecordStack(self._memory, base + L.input_gpa, L.input_size, "input")
            self._output = RecordStack(self._memory, base + L.output_gpa, L.output_size, "output")
            self._vm = kvm.VirtualMachine(self._memory, base, L.total_size)
            self._path = CallPath(self._vm, self._input, self._output, self._serve)
            self._vm.setup_long_mode(L.pt_gpa, L.gdt_gpa, GDT_LIMIT, L.idt_gpa, IDT_LIMIT, L.tss_gpa, TSS_SIZE - 1)
            level = config.guest_log_level
            if level is None:
                level = guest_level_for(GUEST_LOGGER)
            self._vm.set_regs(rip=L.code_gpa + image.entry, rsp=L.stack_top, rdi=L.peb_gpa,
                              rsi=int.from_bytes(os.urandom(8), "little"), rdx=4096, rcx=level, rflags=2)
            self._closed = False
            self._max_time = config.max_execution_time
            self._input.clear()
            self._output.clear()
            self._run_init(config.max_execution_time)
            table = self._output.pop_function_table()
        except BaseException:
            self.close()
            raise
        self._functions = {name: _GuestFunction(name, params, ret) for name, params, ret in table}
        self.functions: Mapping[str, Signature] = types.MappingProxyType(
            {n: f.signature for n, f in self._functions.items()})
        return self

    # -- calls --------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Calls guest function `name` with `args` and returns its result.

        Checks name, arity and types first (GuestFunctionNotFound,
        GuestFunctionParameterTypeMismatch). `timeout` (seconds, default the
        configuration's max_execution_time) stops a call that runs longer (ExecutionTimeout).
        An abort, fault or cancellation poisons the sandbox (PoisonedSandbox)."""
        fn = self._functions.get(name)
        if fn is None or self._closed or self._path.poisoned:
            self._refuse(name)
        try:
            if timeout is None and self._max_time is None:
                return self._path.call(fn.name_bytes, fn.param_tags, fn.return_tag, args)
            return self._timed_call(fn, args, self._max_time if timeout is None else timeout)
        except HostFunctionError as e:
            e.__cause__ = self._last_host_exception
            raise
        except GuestProtocolError:
            self._path.poisoned = True
            raise
        finally:
            self._last_host_exception = None

    def _refuse(self, name: str) -> None:
        if self._closed:
            raise HyperlightError("the sandbox is closed")
        if self._path.poisoned:
            raise PoisonedSandbox("an earlier call was aborted, faulted or canceled; restore a snapshot to use "
                                  "this sandbox again")
        raise GuestFunctionNotFound(f"the guest has no function {name!r}")

    def _timed_call(self, fn: _GuestFunction, args: tuple, timeout: float) -> Any:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        path = self._path
        generation = path.begin()
        try:
            token = WATCHDOG.arm(timeout, lambda: self._on_timeout(generation))
            try:
                self._input.push_call(fn.name_bytes, fn.param_tags, args)
                self._output.clear()
                path.run_until_halt(generation)
            finally:
                WATCHDOG.disarm(token)
        finally:
            path.end()
        return self._output.pop_result(fn.return_tag)

    def _run_init(self, timeout: Optional[float]) -> None:
        path = self._path
        generation = path.begin()
        token = WATCHDOG.arm(timeout, lambda: self._on_timeout(generation)) if timeout else None
        try:
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
            raise self._stopped(rc, generation)

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
            code, message = self._output.pop_error()
            return GuestAborted(code, message)
        if rc == PORT_FAULT:
            return fault_from_frame(self._memory, self.layout, self._vm.io_byte())
        return fault_from_exit(rc, self._vm)

    def _host_call(self) -> None:
        name, args, tags = self._output.pop_call()
        hf = self._host_functions.get(name)
        if hf is None:
            self._input.push_error(5, f"host function {name!r} is not registered")
            return
        if tags != hf.param_tags:
            got = ", ".join(str(ValueType(t)) for t in tags)
            self._input.push_error(5, f"host function {hf.signature} called with ({got})")
            return
        try:
            result = hf.fn(*args)
        except Exception as e:  # reaches the guest as an error; BaseException propagates
            self._last_host_exception = e
            self._input.push_error(4, str(e) or type(e).__name__)
            return
        try:
            fits = self._input.push_return(hf.return_tag, result, f"host function {name} result")
        except GuestFunctionParameterTypeMismatch as e:
            self._input.push_error(4, str(e))
            return
        if not fits:
            self._input.push_error(4, f"host function {name} result does not fit the input buffer")

    def _log(self) -> None:
        level, line, source, message = self._output.pop_log()
        if level >= len(PY_LEVELS):
            raise GuestProtocolError(f"log record with level {level}, expected 0..5")
        py_level = PY_LEVELS[level]
        if GUEST_LOGGER.isEnabledFor(py_level):
            GUEST_LOGGER.log(py_level, "%s", message,
                             extra={"guest_source": source, "guest_line": line, "guest_level": level})

    def _print(self) -> None:
        text = self._output.pop_print()
        w = self._writer if self._writer is not None else sys.stdout
        if callable(w) and not hasattr(w, "write"):
            w(text)
        else:
            w.write(text)

    # -- state ---------------------------------------------------------------------------------

    @property
    def poisoned(self) -> bool:
        """True after an abort, fault or cancellation until the sandbox is restored."""
        return self._path.poisoned

    def interrupt_handle(self) -> InterruptHandle:
        """A handle whose kill() stops the running call from any thread."""
        if self._closed:
            self._refuse()
        return InterruptHandle(self._vm)

    def close(self) -> None:
        """Destroys the VM and frees guest memory; a call running in another thread is
        killed and waited for."""
        self._closed = True
        if self._vm is not None:
            self._vm.close()
        if self._memory is not None:
            self._memory.close()

    def __enter__(self) -> "MultiUseSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self.poisoned else "ready"
        return f"<MultiUseSandbox {state}, {len(getattr(self, '_functions', {}))} guest functions>"
