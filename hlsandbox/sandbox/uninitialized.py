"""UninitializedSandbox: a guest binary, its configuration and host functions, before the VM exists."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import InvalidGuestBinary
from ..func.host_functions import HostFunctionRegistry
from ..func.types import Signature
from ..mem.elf import GuestBinary
from .config import SandboxConfiguration
from .guest_counter import GuestCounter
from .output import output_function
from .snapshot import Snapshot, is_snapshot_file

if TYPE_CHECKING:  # evolve()'s return annotation; the run-time import stays inside evolve()
    from .multi_use import MultiUseSandbox

Writer = TextIO | Callable[[str], Any] | None


class UninitializedSandbox:
    """A sandbox being prepared: register host functions, then evolve() it.

    `guest` is a path, the ELF's bytes, or a GuestBinary; or a Snapshot (or a path to a
    snapshot file ending in .hlsnap), in which case evolve() resumes it without running the
    guest's initialisation. `writer` receives what the guest prints: a text file, a binary
    file (UTF-8 bytes) or a callable taking a string (default sys.stdout); if it raises,
    the call raises WriterError once the guest's call has finished.
    """

    def __init__(self, guest: GuestBinary | Snapshot | str | os.PathLike[str] | bytes,
                 config: SandboxConfiguration | None = None, *, writer: Writer = None) -> None:
        self.snapshot: Snapshot | None = None
        self.binary: GuestBinary | None = None
        if isinstance(guest, Snapshot):
            self.snapshot = guest
        elif isinstance(guest, (str, os.PathLike)) and str(guest).endswith(".hlsnap"):
            self.snapshot = Snapshot.load(guest)
        else:
            try:
                self.binary = GuestBinary.coerce(guest)
            except InvalidGuestBinary as e:
                if is_snapshot_file(guest):
                    what = "<bytes>" if isinstance(guest, (bytes, bytearray, memoryview)) else str(guest)
                    raise InvalidGuestBinary(
                        f"{what!s} is an hlsandbox snapshot file, not a guest ELF: start a sandbox from it with "
                        f"MultiUseSandbox.from_snapshot(path) (UninitializedSandbox takes snapshot files named "
                        f"*.hlsnap)") from e
                raise
        if config is not None and not isinstance(config, SandboxConfiguration):
            raise TypeError(f"config must be a SandboxConfiguration, not {type(config).__name__}")
        self._config_arg = config
        self.config = config or SandboxConfiguration()
        output_function(writer)  # a writer that cannot work is refused now, not at the first print
        self.writer = writer
        self.host_functions = HostFunctionRegistry()
        self._counter: GuestCounter | None = None
        self._evolved = False
        self._layout = None
        if self.binary is not None:  # check the configuration against the guest now, not at evolve()
            from .evolve import layout_for
            self._layout = layout_for(self.binary.image, self.config)

    def register(self, name: str, fn: Callable[..., Any], params: Iterable[Any] | None = None,
                 returns: Any = None) -> Signature:
        """Registers a host function the guest can call by name.

        Types come from `params`/`returns` (hl.i32 ..., bool, str, bytes, None for void) or,
        when `params` is omitted, from fn's type hints. Returns the signature."""
        if self._evolved:
            raise RuntimeError("cannot register host functions after evolve()")
        return self.host_functions.register(name, fn, params, returns)

    def register_raw(self, fn_id: int, fn: Callable[[memoryview], Any]) -> None:
        """Registers a raw host function by numeric id (a u32): the guest sends a byte
        payload, `fn` receives it as a read-only memoryview (of a copy) and returns bytes.
        Unknown ids and failures reach the guest as status codes."""
        if self._evolved:
            raise RuntimeError("cannot register host functions after evolve()")
        self.host_functions.register_raw(fn_id, fn)

    def guest_counter(self) -> GuestCounter:
        """The sandbox's GuestCounter (at most one: a second call raises). It may be used
        before evolve(); its value lands in guest memory once memory is built."""
        if self._evolved:
            raise RuntimeError("cannot create a GuestCounter after evolve()")
        if self._counter is not None:
            raise RuntimeError("this sandbox already has a GuestCounter")
        self._counter = GuestCounter()
        return self._counter

    def evolve(self) -> MultiUseSandbox:
        """Creates the VM, runs the guest's initialisation and returns the ready sandbox."""
        if self._evolved:
            raise RuntimeError("this UninitializedSandbox was already evolved")
        from .multi_use import MultiUseSandbox
        if self.snapshot is not None:
            sb = MultiUseSandbox._restored(self.snapshot, self._config_arg, self.host_functions, self.writer,
                                           self._counter)
        else:
            assert self.binary is not None  # __init__ set one of the two
            sb = MultiUseSandbox._create(self.binary, self.config, self.host_functions, self.writer,
                                         self._counter, self._layout)
        self._evolved = True
        return sb
