"""GuestCounter: a host-authoritative u64 the guest can read (docs/abi.md, scratch host page)."""
from __future__ import annotations

import threading

from ..mem.shared_memory import SharedMemory

MAX = (1 << 64) - 1


class GuestCounter:
    """A counter the host owns and the guest reads at the PEB's counter address.

    The host is the only writer and keeps the value itself: it never reads it back from
    guest memory, so a guest cannot change what the host sees. increment(), decrement()
    and value() are thread-safe; before the sandbox's memory exists the value is kept
    and written once it is built (and again after every restore)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        self._memory: SharedMemory | None = None
        self._offset = 0

    def increment(self) -> int:
        """Adds one; raises OverflowError at 2**64 - 1. Returns the new value."""
        with self._lock:
            if self._value == MAX:
                raise OverflowError("GuestCounter overflow: the value is already 2**64 - 1")
            self._value += 1
            self._write_locked()
            return self._value

    def decrement(self) -> int:
        """Subtracts one; raises OverflowError at 0 (underflow). Returns the new value."""
        with self._lock:
            if self._value == 0:
                raise OverflowError("GuestCounter underflow: the value is already 0")
            self._value -= 1
            self._write_locked()
            return self._value

    def value(self) -> int:
        """The host's value (never read from guest memory)."""
        with self._lock:
            return self._value

    def _bind(self, memory: SharedMemory, offset: int) -> None:
        with self._lock:
            self._memory, self._offset = memory, offset
            self._write_locked()

    def _write(self) -> None:
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        m = self._memory
        if m is not None:
            try:
                m.write_u64(self._offset, self._value)
            except ValueError:  # the sandbox was closed: nothing to update
                self._memory = None

    def __repr__(self) -> str:
        return f"<GuestCounter {self._value}>"
