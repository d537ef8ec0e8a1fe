"""hlsandbox: Hyperlight-style micro-VM sandboxes on Linux KVM, hosted from Python.

    import hlsandbox as hl
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), hl.SandboxConfiguration(heap_size="8Mi"))
    u.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    sb = u.evolve()
    assert sb.call("Echo", "hi") == "hi"
"""
from . import guests
from .errors import (
    ArgumentTooLarge,
    ExecutionCanceled,
    ExecutionTimeout,
    GuestAborted,
    GuestBinaryNotFound,
    GuestBuildError,
    GuestEmulationFailure,
    GuestError,
    GuestFault,
    GuestFunctionNotFound,
    GuestFunctionParameterTypeMismatch,
    GuestProtocolError,
    HostFunctionError,
    HostFunctionNotFound,
    HyperlightError,
    InvalidConfiguration,
    InvalidGuestBinary,
    InvalidSnapshot,
    KvmUnavailable,
    MemoryAccessViolation,
    OutOfFileDescriptors,
    PoisonedSandbox,
    PoolExhausted,
    SandboxBusy,
    SandboxClosed,
    SnapshotClosed,
    SnapshotMismatch,
    StackOverflow,
    UsedAfterFork,
    WriterError,
)
from .func.types import Signature, ValueType, f32, f64, i32, i64, u32, u64
from .lua import LuaError, LuaResult, LuaSandbox, LuaSandboxPool, LuaSyntaxError
from .mem.elf import GuestBinary
from .sandbox.config import SandboxConfiguration
from .sandbox.hot_mode import HotMode
from .sandbox.interrupt import InterruptHandle
from .sandbox.multi_use import MultiUseSandbox
from .sandbox.pool import PoolStats, SandboxPool
from .sandbox.snapshot import Snapshot
from .sandbox.uninitialized import UninitializedSandbox

__version__ = "0.1.0"

__all__ = [
    "ArgumentTooLarge", "ExecutionCanceled", "ExecutionTimeout", "GuestAborted", "GuestBinary",
    "GuestBinaryNotFound", "GuestBuildError", "GuestEmulationFailure", "GuestError", "GuestFault",
    "GuestFunctionNotFound", "GuestFunctionParameterTypeMismatch", "GuestProtocolError", "HostFunctionError",
    "HostFunctionNotFound", "HotMode", "HyperlightError", "InterruptHandle", "InvalidConfiguration",
    "InvalidGuestBinary", "InvalidSnapshot", "KvmUnavailable", "LuaError", "LuaResult", "LuaSandbox",
    "LuaSandboxPool", "LuaSyntaxError", "MemoryAccessViolation", "MultiUseSandbox", "OutOfFileDescriptors",
    "PoisonedSandbox", "PoolExhausted", "PoolStats", "SandboxBusy", "SandboxClosed", "SandboxConfiguration",
    "SandboxPool", "Signature", "Snapshot", "SnapshotClosed", "SnapshotMismatch", "StackOverflow",
    "UninitializedSandbox", "UsedAfterFork", "ValueType", "WriterError", "f32", "f64", "guests", "i32", "i64",
    "u32", "u64",
]
