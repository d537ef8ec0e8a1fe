"""The exception hierarchy: everything hlsandbox raises derives from HyperlightError."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _rebuild(cls: type[HyperlightError], args: tuple[Any, ...], state: dict[str, Any]) -> HyperlightError:
    """Unpickles an hlsandbox error without calling its __init__ (whose parameters differ
    from the message args Exception keeps)."""
    e = cls.__new__(cls, *args)
    e.args = args
    e.__dict__.update(state)
    return e


class HyperlightError(Exception):
    """Base class of every hlsandbox error. Every subclass pickles with its message and
    attributes (a multiprocessing worker may raise any of them)."""

    def __reduce__(self) -> tuple[Callable[..., HyperlightError],
                                  tuple[type[HyperlightError], tuple[Any, ...], dict[str, Any]]]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class KvmUnavailable(HyperlightError):
    """/dev/kvm is missing, not accessible, or lacks a capability hlsandbox needs."""


class InvalidGuestBinary(HyperlightError):
    """The guest ELF cannot be loaded (wrong machine, truncated, no loadable segments...)."""


class GuestBinaryNotFound(InvalidGuestBinary, FileNotFoundError):
    """The guest path does not exist (`filename` names it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutOfFileDescriptors(HyperlightError, OSError):
    """The process reached its open file limit (`ulimit -n`): every sandbox holds a few."""


class ArgumentTooLarge(HyperlightError, ValueError):
    """A call's arguments do not fit the sandbox's input buffer
    (SandboxConfiguration.input_data_size)."""


class InvalidConfiguration(HyperlightError, ValueError):
    """A SandboxConfiguration value is out of range or malformed."""


class GuestError(HyperlightError):
    """The guest reported an error, or sent data the host could not decode."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GuestProtocolError(GuestError):
    """The guest broke the ABI: a corrupt buffer, record or value. Poisons the sandbox."""


class GuestFunctionNotFound(GuestError):
    """No guest function has this name."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


class GuestFunctionParameterTypeMismatch(GuestError, TypeError):
    """The arguments do not match the guest function's signature."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=3)


class HostFunctionError(GuestError):
    """A host function raised; the guest propagated the error to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=4)


class HostFunctionNotFound(GuestError):
    """The guest called a host function that is not registered (or with wrong types)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=5)


class GuestAborted(HyperlightError):
    """The guest called abort: carries the guest's code and message."""

    core_dump: str | None = None  # path of the guest core file (SandboxConfiguration.guest_core_dump), else None

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"guest aborted with code {code}: {message}")
        self.code = code
        self.message = message


class GuestFault(HyperlightError):
    """The guest took a CPU exception (vector, error code, faulting RIP)."""

    core_dump: str | None = None  # path of the guest core file (SandboxConfiguration.guest_core_dump), else None

    def __init__(self, message: str, vector: int, error_code: int = 0, rip: int = 0) -> None:
        super().__init__(message)
        self.vector = vector
        self.error_code = error_code
        self.rip = rip


class MemoryAccessViolation(GuestFault):
    """The guest touched memory it may not: `address` and `access` ("read", "write", "execute")."""

    def __init__(self, message: str, address: int, access: str, vector: int = 14,
                 error_code: int = 0, rip: int = 0) -> None:
        super().__init__(message, vector, error_code, rip)
        self.address = address
        self.access = access


class StackOverflow(GuestFault):
    """The guest's stack ran into its guard page."""

    def __init__(self, message: str, address: int, vector: int = 14, error_code: int = 0,
                 rip: int = 0) -> None:
        super().__init__(message, vector, error_code, rip)
        self.address = address


class GuestEmulationFailure(GuestFault):
    """KVM could not emulate a guest instruction (kvm-pvm emulates CPL0 code)."""


class ExecutionCanceled(HyperlightError):
    """The call was stopped by kill() or a time limit."""


class ExecutionTimeout(ExecutionCanceled, TimeoutError):
    """The call ran longer than its time limit."""


class SandboxBusy(HyperlightError):
    """The sandbox is running a call from another thread and the caller asked not to wait
    (or its wait for the sandbox ran out)."""


class SandboxClosed(HyperlightError):
    """The sandbox was closed (possibly by another thread)."""


class UsedAfterFork(HyperlightError):
    """A sandbox, snapshot or interrupt handle created before fork() was used in the child:
    its VM and memory belong to the parent process. Create new ones in the child."""


class WriterError(HyperlightError):
    """The writer of the guest's output raised (its exception is `__cause__`). The guest's
    call ran to its end, so the sandbox stays usable; the call's result is lost."""


class PoisonedSandbox(HyperlightError):
    """An earlier call left the guest in an unknown state; restore a snapshot first."""

    MESSAGE = "an earlier call was aborted, faulted or canceled; restore a snapshot to use this sandbox again"


class SnapshotMismatch(HyperlightError):
    """A snapshot does not fit this sandbox (layout, host functions...)."""


class InvalidSnapshot(HyperlightError):
    """A snapshot file is truncated, corrupt or of an unknown version."""


class GuestBuildError(HyperlightError):
    """Building a guest failed: the compiler rejected the source (`output` holds its
    messages) or the toolchain is missing (the message names what to install)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class SnapshotClosed(HyperlightError, ValueError):
    """The snapshot was closed (Snapshot.close() or the end of its `with` block)."""


class LuaError(HyperlightError):
    """A Lua script failed: a runtime error (`kind` "runtime", with Lua's `traceback`),
    a syntax error ("syntax"), out of memory ("memory": the message is Lua's
    "not enough memory") or return values with no Python form ("conversion").
    `stdout` holds what the script printed before it failed."""

    def __init__(self, message: str, traceback: str = "", kind: str = "runtime", stdout: str = "") -> None:
        super().__init__(message if not traceback else f"{message}\n{traceback}")
        self.message = message
        self.traceback = traceback
        self.kind = kind
        self.stdout = stdout


class LuaSyntaxError(LuaError):
    """The script does not compile; `line` is the line Lua names (or None)."""

    def __init__(self, message: str, traceback: str = "", kind: str = "syntax", stdout: str = "") -> None:
        super().__init__(message if message.startswith("syntax error") else f"syntax error: {message}",
                         traceback, kind, stdout)
        self.line: int | None = None
        # Lua's form: "script:LINE: what" (the chunk is named "script").
        parts = message.split(":", 2)
        if len(parts) == 3 and parts[1].strip().isdigit():
            self.line = int(parts[1])


class PoolExhausted(HyperlightError, TimeoutError):
    """No sandbox of a SandboxPool became free within the wait limit (every one is lent)."""
