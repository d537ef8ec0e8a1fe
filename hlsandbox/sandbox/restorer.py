"""A SandboxPool's background restores of its hot sandboxes.

A hot sandbox's restore costs its guest an exit (it must park so its registers can
be set, docs/architecture.md "Hot mode"): about 30 µs on kvm-pvm, as much as a whole
cold call. Done by the borrower, it would make a hot pooled call cost more than a cold
one. Here a thread takes hot sandboxes as they are given back and restores them; the
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
    """One thread, started on first use, calling `restore_and_return(sb)` for every
    sandbox put, in the order put. `restore_and_return` is a method of the pool, held
    weakly (the thread must not keep a dropped pool alive); the owner closes the
    Restorer when it goes (SandboxPool: close() and a weakref.finalize)."""

    def __init__(self, restore_and_return: Callable[[Any], None]) -> None:
        self._restore_and_return = weakref.WeakMethod(restore_and_return)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def put(self, sb: Any) -> None:
        """Queues `sb` for its restore; after close(), restores it on the calling thread."""
        with self._lock:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                    self._thread.start()
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
            del sb

    def close(self) -> None:
        """Restores what is queued, then ends the thread (not waited for from itself)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
