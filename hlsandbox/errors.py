"""The exception hierarchy: everything hlsandbox raises derives from HyperlightError."""
from __future__ import annotations


class HyperlightError(Exception):
    """Base class of every hlsandbox error."""


class KvmUnavailable(HyperlightError):
    """/dev/kvm is missing, not accessible, or lacks a capability hlsandbox needs."""


class InvalidGuestBinary(HyperlightError):
    """The guest ELF cannot be loaded (wrong machine, truncated, no loadable segments...)."""


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

    core_dump = None  # path of the guest core file (SandboxConfiguration.guest_core_dump), else None

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"guest aborted with code {code}: {message}")
        self.code = code
        self.message = message


class GuestFault(HyperlightError):
    """The guest took a CPU exception (vector, error code, faulting RIP)."""

    core_dump = None  # path of the guest core file (SandboxConfiguration.guest_core_dump), else None

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


class ExecutionTimeout(ExecutionCanceled):
    """The call ran longer than its time limit."""


class PoisonedSandbox(HyperlightError):
    """An earlier call left the guest in an unknown state; restore a snapshot first."""


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

    def __reduce__(self):
        return type(self), (self.args[0], self.output)
