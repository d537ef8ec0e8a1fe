"""Hot mode for a MultiUseSandbox: `with sb.hot(spin=...)` (docs/architecture.md, "Hot mode")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import HyperlightError, InvalidConfiguration

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
        self._sandbox._start_hot(self.spin)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sandbox._stop_hot()

    def __repr__(self) -> str:
        return f"<HotMode spin={self.spin}s of {self._sandbox!r}>"


def check_hot_capable(profile: str) -> HyperlightError | None:
    """Why a sandbox of this profile cannot be hot, or None."""
    if profile != "amd64":
        return InvalidConfiguration("hot mode needs the amd64 profile (the i686 guest runs once, during evolve())")
    return None
