"""A SandboxPool's background restores of its hot sandboxes.

A hot sandbox's restore costs its guest an exit (it must park so its registers can
be set, docs/architecture.md "Hot mode"): about 30 µs on kvm-pvm, as much as a whole
cold call. Done by the borrower, it would make a hot pooled call cost more than a cold
one. Here threads take hot sandboxes as they are given back and restore them; the
restore re-arms the guest, which waits in its mailbox, so the next borrower's call is
answered without any exit. The pool lends a sandbox again only once it is restored."""
from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("hlsandbox.pool")
THREAD_NAME = "hlsandbox-pool-restorer"
_STOP = object()


class Restorer:
    """`count` threads (one per hot sandbox: one guest slow to park must not hold up the
    others' restores), started as sandboxes are put, calling `restore_and_return(sb)`
    for every sandbox put, in the order put. `restore_and_return` is a method of the pool, held
    weakly (the thread must not keep a dropped pool alive); the owner closes the
    Restorer when it goes (SandboxPool: close() and a weakref.finalize)."""

    def __init__(self, restore_and_return: Callable[[Any], None], count: int = 1) -> None:
        self._restore_and_return = weakref.WeakMethod(restore_and_return)
        self._count = count
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # sandboxes put and not yet restored
        self._lock = threading.Lock()
        self._closed = False

    def put(self, sb: Any) -> None:
        """Queues `sb` for its restore; after close(), restores it on the calling thread."""
        with self._lock:
            if not self._closed:
                self._busy += 1
                if len(self._threads) < min(self._busy, self._count):
                    t = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                    t.start()
                    self._threads.append(t)
                self._queue.put(sb)  # under the lock: before close()'s stop, so it is restored
                return
        self._restore(sb)

    def _restore(self, sb: Any) -> None:
        fn = self._restore_and_return()
        if fn is not None:  # else the pool is gone: the sandbox closes itself when dropped
            fn(sb)

    def _run(self) -> None:
        while True:
            sb = self._queue.get()
            if sb is _STOP:
                return
            try:
                self._restore(sb)
            except BaseException as e:  # the pool counts and logs its own failures; this is a bug
                LOG.error("restoring a pooled sandbox raised %s: %s", type(e).__name__, str(e))
            finally:
                with self._lock:
                    self._busy -= 1
            del sb

    def close(self) -> None:
        """Restores what is queued, then ends the thread (not waited for from itself)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(_STOP)
        me = threading.current_thread()
        for t in threads:
            if t is not me:
                t.join()
