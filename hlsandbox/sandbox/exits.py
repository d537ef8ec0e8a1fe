"""The exits a guest call makes on its way (Hyperlight's outb.rs): host calls, raw host
calls, log records and printed text are served and the guest resumed; aborts, faults,
time limits and cancellations end the call with the exception that says why."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from ..abi import ErrorCode, RawStatus, RecordKind
from ..errors import (
    ExecutionCanceled,
    ExecutionTimeout,
    GuestAborted,
    GuestFunctionParameterTypeMismatch,
    GuestProtocolError,
    HyperlightError,
    WriterError,
)
from ..func.host_functions import HostFunctionRegistry
from ..func.types import ValueType
from ..func.wire import RecordStack
from ..hypervisor import kvm
from ..mem.layout import SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory
from ..mem.system_tables import PORT_ABORT, PORT_CALL_FUNCTION, PORT_FAULT, PORT_LOG, PORT_PRINT
from .config import PY_LEVELS, guest_level_of_python_level
from .core_dump import attach_core_dump
from .faults import fault_from_exit, fault_from_frame

GUEST_LOGGER = logging.getLogger("hlsandbox.guest")
RAW_CALL_KIND = int(RecordKind.RAW_CALL)
ERR_HOST_FUNCTION = int(ErrorCode.HOST_FUNCTION)
ERR_HOST_FUNCTION_NOT_FOUND = int(ErrorCode.HOST_FUNCTION_NOT_FOUND)
TRACE = PY_LEVELS[0]
logging.addLevelName(TRACE, "TRACE")


def guest_level_for(logger: logging.Logger) -> int:
    """The least severe guest level the logger would emit (6: none)."""
    return guest_level_of_python_level(logger.getEffectiveLevel())


class ExitHandler:
    """Serves the exits of one sandbox's calls (CallPath's `serve`).

    What a call leaves behind for its caller: the exception a host function raised
    (`last_host_exception`, the cause of the HostFunctionError the guest's error
    becomes) and the writer's error (`raise_writer_error()`)."""

    def __init__(self, vm: kvm.VirtualMachine, memory: SharedMemory, layout: SandboxMemoryLayout,
                 input: RecordStack, output: RecordStack, host_functions: HostFunctionRegistry,
                 write: Callable[[str], Any], core_dump_dir: str | os.PathLike[str] | None) -> None:
        self._vm, self._memory, self._layout = vm, memory, layout
        self._input, self._output = input, output
        self._host_functions = host_functions
        self._write = write
        self._core_dump_dir = core_dump_dir  # None: no core dumps
        self.timed_out_generation = -1
        self.last_host_exception: BaseException | None = None
        self.writer_error: BaseException | None = None

    def serve(self, rc: int, generation: int) -> None:
        """Serves one exit that is not HALT, or raises the exception that ends the call."""
        if rc == PORT_CALL_FUNCTION:
            self._host_call()
        elif rc == PORT_LOG:
            self._log()
        elif rc == PORT_PRINT:
            self._print()
        else:
            raise attach_core_dump(self._stopped(rc, generation), rc, self._core_dump_dir, self._memory,
                                   self._layout, self._vm)

    def on_timeout(self, generation: int) -> None:
        """The watchdog's call when a time limit passes: stops that call, if it still runs."""
        self.timed_out_generation = generation
        self._vm.kill(generation)

    def raise_writer_error(self) -> None:
        """Raises WriterError if the writer raised during the call (and forgets it)."""
        e, self.writer_error = self.writer_error, None
        if e is not None:
            raise WriterError(f"the writer of the guest's output raised {type(e).__name__}: {e}") from e

    def _stopped(self, rc: int, generation: int) -> HyperlightError:
        """The exception for an exit that ends the call abnormally."""
        if rc == kvm.EXIT_CANCELED:
            if self.timed_out_generation == generation:
                return ExecutionTimeout("the guest call exceeded its time limit and was stopped")
            return ExecutionCanceled("the guest call was canceled")
        if rc == PORT_ABORT:
            try:
                code, message = self._output.pop_error()
            except GuestProtocolError as e:
                return GuestProtocolError(f"the guest aborted, but its abort record is unreadable: {e}")
            return GuestAborted(code, message)
        if rc == PORT_FAULT:
            return fault_from_frame(self._memory, self._layout, self._vm.io_byte(), self._vm)
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
            self.last_host_exception = e
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
        start = self._layout.host(self._layout.output_gpa) + offset
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
                data = memoryview(data.tobytes())
        except Exception as e:  # reaches the guest as status 2; BaseException propagates
            self.last_host_exception = e
            self._push_raw(RawStatus.RAISED, (str(e) or type(e).__name__).encode("utf-8", "replace"))
            return
        self._push_raw(RawStatus.OK, data)

    def _push_raw(self, status: int, data: Any) -> None:
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
            if self.writer_error is None:
                self.writer_error = e
