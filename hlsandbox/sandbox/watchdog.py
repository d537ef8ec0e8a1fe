"""One background thread that kills calls whose time limit has passed."""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("hlsandbox.watchdog")


class Watchdog:
    """Runs `action` at a deadline unless the returned token is disarmed first.

    Disarming drops the action at once (an action references its sandbox: a disarmed
    deadline must not keep a closed sandbox, its guest memory or its snapshots alive
    until the deadline passes) and costs O(1); the heap sheds disarmed entries as they
    reach its top, or all at once when they outnumber the live ones."""

    # The longest delay a Condition can wait (beyond it, wait() raises OverflowError).
    MAX_SECONDS = threading.TIMEOUT_MAX

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Empty, no thread. Also in a forked child: the parent's thread does not exist there,
        its lock may have been held at fork(), and its deadlines are the parent's calls."""
        self._cond = threading.Condition()
        # Entries are [deadline, token, action]; tokens are unique, so actions are never
        # compared. A disarmed entry's action is None.
        self._heap: list[list[Any]] = []
        self._entries: dict[int, list[Any]] = {}
        self._dead = 0  # disarmed entries still in the heap
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        if not 0 < seconds <= self.MAX_SECONDS:  # also NaN and inf
            raise ValueError(f"a time limit is positive seconds up to {self.MAX_SECONDS:.3g}, got {seconds!r}")
        token = next(self._ids)
        entry = [time.monotonic() + seconds, token, action]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._entries[token] = entry
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hlsandbox-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            entry = self._entries.pop(token, None)
            if entry is None:  # already fired, or never armed
                return
            entry[2] = None
            self._dead += 1
            if self._dead > 64 and 2 * self._dead > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def pending(self) -> int:
        """Deadlines armed and not yet fired or disarmed (for tests)."""
        with self._cond:
            return len(self._entries)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                        self._dead -= 1
                    if not self._heap:
                        self._cond.wait()
                        continue
                    # Only the deadline while waiting: a local holding the action would
                    # keep its sandbox alive after a disarm.
                    delay = self._heap[0][0] - time.monotonic()
                    if delay > 0:
                        self._cond.wait(min(delay, self.MAX_SECONDS))
                        continue
                    _deadline, token, action = heapq.heappop(self._heap)
                    del self._entries[token]
                    break
            try:
                action()
            except Exception:  # a failing action must not stop every later time limit
                LOG.exception("watchdog action failed")
            action = None  # nor may the last one fired keep its sandbox alive


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._reset)
