"""Worker threads of a SandboxPool: submit() and map() futures, and acall()'s results
handed to asyncio event loops in batches.

An acall on a pool of 2 under load spends most of its cost on the event loop's thread,
which competes with the workers for the same cores: an executor's submit (a Future, a
work item, a lock, a wake) and one call_soon_threadsafe per result (a self-pipe write
and a loop wake-up each). Here a job is one put on a SimpleQueue, and a result goes
into its loop's inbox: only the first result of a batch wakes the loop, which then
settles every result that arrived meanwhile (benchmarks/compare_pool.py)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import SandboxClosed

LOG = logging.getLogger("hlsandbox.pool")
THREAD_PREFIX = "hlsandbox-pool"
_STOP = object()


class Workers:
    """`count` daemon threads (named `name`-N) started as jobs come, running jobs in the
    order posted."""

    def __init__(self, count: int, name: str = THREAD_PREFIX) -> None:
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}  # loops with results on their way
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """fn(*args, **kwargs) on a worker: a Future of its result (cancellable until it starts)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # handed to the future's owner
                future.set_exception(e)
            else:
                future.set_result(result)

        self._post(job, future)
        return future

    def run_for_loop(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """fn(*args) on a worker: an asyncio future of the running loop, settled on that loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def job() -> None:
            try:
                outcome = (True, fn(*args))
            except BaseException as e:  # handed to the awaiting task
                outcome = (False, e)
            self._deliver(loop, future, outcome)

        self._post(job, None)
        return future

    def post(self, job: Callable[[], None]) -> None:
        """job() on a worker; one still queued at close() runs there, on the closing
        thread. Raises SandboxClosed after close()."""
        self._post(job, None)

    def _post(self, job: Callable[[], None], future: concurrent.futures.Future[Any] | None) -> None:
        with self._lock:
            if self._closed:
                raise SandboxClosed("the pool is closed")
            if len(self._threads) < self._count:
                t = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
            self._jobs.put((job, future))

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            item = jobs.get()
            if item is _STOP:
                return
            try:
                item[0]()
            except BaseException:  # a job settles its own future; this is a bug, not the caller's error
                LOG.exception("a pool worker's job failed")
            del item  # a finished job must not keep its result alive until the next one

    def _deliver(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
        with self._lock:
            inbox = self._inboxes.get(loop)
            if inbox is not None:  # a drain is scheduled and will see this one
                inbox.items.append((future, outcome))
                return
            inbox = self._inboxes[loop] = _Inbox()
            inbox.items.append((future, outcome))
        try:
            loop.call_soon_threadsafe(self._drain, loop)
        except RuntimeError:  # the loop is closed: nobody awaits these results any more
            with self._lock:
                self._inboxes.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            inbox = self._inboxes.pop(loop)
        for future, (ok, value) in inbox.items:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self) -> None:
        """Stops the threads once the jobs already posted are done (their futures settle).
        Jobs of submit() not yet started are cancelled. Waits for the threads unless
        called from one of them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        pending = []
        while True:
            try:
                pending.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        for job, future in pending:
            if future is not None:
                future.cancel()
            else:
                job()  # an acall's job: it sees the closed pool and settles its future with the error
        for _ in threads:
            self._jobs.put(_STOP)
        me = threading.current_thread()
        for t in threads:
            if t is not me:
                t.join()


class _Inbox:
    """Results for one event loop, settled together by one callback on that loop."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[asyncio.Future[Any], tuple[bool, Any]]] = []
