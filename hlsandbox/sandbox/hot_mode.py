"""Hot mode for a MultiUseSandbox: `with sb.hot(spin=...)` (docs/architecture.md, "Hot mode")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import HyperlightError, InvalidConfiguration
from .hot_path import HotPath

if TYPE_CHECKING:
    from .multi_use import MultiUseSandbox

DEFAULT_SPIN = 0.001  # seconds: a hot guest idle this long parks (one exit to wake it again)


class HotMode:
    """Keeps a sandbox hot while the `with` block runs: its vCPU stays in the guest on a
    thread of its own and calls go through a mailbox in guest memory instead of a VM exit.

    Calls, host calls, errors, time limits, kill(), snapshots and restores behave as in a
    cold sandbox. While a call is expected, a core spins (the caller's while it waits, the
    vCPU's while the guest waits); after `spin` seconds without a call the guest parks
    with an ordinary exit and nothing spins until the next call. Leaving the block (or
    closing the sandbox) parks the guest and ends the vCPU thread."""

    def __init__(self, sandbox: MultiUseSandbox, spin: float = DEFAULT_SPIN) -> None:
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 < spin <= 60:
            raise ValueError(f"spin must be seconds in (0, 60], got {spin!r}")
        self._sandbox = sandbox
        self.spin = float(spin)

    def __enter__(self) -> HotMode:
        start_hot(self._sandbox, self.spin)
        return self

    def __exit__(self, *exc: Any) -> None:
        stop_hot(self._sandbox)

    def __repr__(self) -> str:
        return f"<HotMode spin={self.spin}s of {self._sandbox!r}>"


def check_hot_capable(profile: str) -> HyperlightError | None:
    """Why a sandbox of this profile cannot be hot, or None."""
    if profile != "amd64":
        return InvalidConfiguration("hot mode needs the amd64 profile (the i686 guest runs once, during evolve())")
    return None


def start_hot(sb: MultiUseSandbox, spin: float) -> None:
    """Puts the sandbox's calls on a HotPath (its vCPU thread starts with the next call)."""
    if sb._closed:
        sb._refuse()
    if sb._hot is not None:
        raise HyperlightError("the sandbox is already hot")
    why = check_hot_capable(sb.layout.profile)
    if why is not None:
        raise why
    L = sb.layout
    memory = sb._memory
    assert memory is not None  # an open sandbox has its memory
    mailbox = memory.address + L.host(L.hot_mailbox_gpa)
    sb._hot = HotPath(sb._vm, sb._input, sb._output, sb._exits.serve, sb._path, memory, mailbox, spin)
    sb._cold_path, sb._path = sb._path, sb._hot


def stop_hot(sb: MultiUseSandbox) -> None:
    """Parks the guest, ends the vCPU thread and puts calls back on the cold path."""
    hot = sb._hot
    if hot is None:
        return
    try:
        hot.close()
    finally:
        sb._hot = None
        sb._path = sb._cold_path
