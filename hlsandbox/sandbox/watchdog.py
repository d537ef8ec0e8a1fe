"""One background thread that kills calls whose time limit has passed."""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable


class Watchdog:
    """Runs `action` at a deadline unless the returned token is cancelled first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        token = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, action))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hlsandbox-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            if any(t == token for _, t, _ in self._heap):
                self._cancelled.add(token)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, token, action = self._heap[0]
                delay = deadline - time.monotonic()
                if token in self._cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled.discard(token)
                    continue
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            action()


WATCHDOG = Watchdog()
