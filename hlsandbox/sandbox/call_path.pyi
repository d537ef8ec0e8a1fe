"""Types of hlsandbox.sandbox.call_path (call_path.pyx): the per-call path and the fast restore."""
from collections.abc import Callable
from typing import Any

from typing_extensions import Buffer, disjoint_base

from hlsandbox.func.wire import RecordStack
from hlsandbox.hypervisor.kvm import VirtualMachine
from hlsandbox.mem.shared_memory import SharedMemory

@disjoint_base
class CallPath:
    """Binds a sandbox's VM, buffers and exit handler for fast calls."""

    on_timeout: Callable[[int], None]
    poisoned: bool
    pending: Any
    pending_generation: int
    def __init__(self, vm: VirtualMachine, input: RecordStack, output: RecordStack,
                 serve: Callable[[int, int], None], on_timeout: Callable[[int], None]) -> None: ...
    def claim(self, wait: float = -2.0) -> int: ...
    def release(self) -> None: ...
    def call(self, name: bytes, tags: tuple[int, ...], ret_tag: int, args: tuple[Any, ...],
             wait: float = -2.0) -> Any: ...
    def call_limited(self, name: bytes, tags: tuple[int, ...], ret_tag: int, args: tuple[Any, ...], wait: float,
                     timeout: float, out: Any) -> Any: ...
    def call_restoring(self, name: bytes, tags: tuple[int, ...], ret_tag: int, args: tuple[Any, ...],
                       plan: RestorePlan, wait: float = -2.0) -> Any: ...
    def restore(self, plan: RestorePlan) -> None: ...
    def run_until_halt(self, generation: int) -> None: ...

def claimed_limited_call(path: Any, input: RecordStack, output: RecordStack, generation: int, name: bytes,
                         tags: tuple[int, ...], ret_tag: int, args: tuple[Any, ...], timeout: float,
                         out: Any) -> Any: ...
def restore_pages(vm: VirtualMachine, dst: SharedMemory, src: SharedMemory, ranges: Buffer) -> None: ...

@disjoint_base
class RestorePlan:
    """What a fast restore of one snapshot into one sandbox copies and stages."""

    snapshot: Any
    def __init__(self, dst: SharedMemory, src: SharedMemory, ranges: Buffer, state: bytes, trampoline: int,
                 target_offset: int, fxsave_offset: int) -> None: ...
