"""InterruptHandle: stops a sandbox's running call from any thread."""
from __future__ import annotations

from ..hypervisor.kvm import VirtualMachine


class InterruptHandle:
    """Returned by MultiUseSandbox.interrupt_handle(); safe to use from any thread."""

    def __init__(self, vm: VirtualMachine) -> None:
        self._vm = vm

    def kill(self) -> bool:
        """Stops the running call, which raises ExecutionCanceled. Returns False (and does
        nothing) if no call is running, so a kill never cancels a later call."""
        return self._vm.kill()

    def is_running(self) -> bool:
        """True while a call is running in the sandbox."""
        if self._vm.forked:
            self._vm.kill()  # raises UsedAfterFork
        return self._vm.active
