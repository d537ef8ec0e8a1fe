"""SandboxPool: sandboxes from one snapshot, lent to one caller at a time and restored
to the snapshot's state before anyone gets them again.

The guest's initialisation runs once (or not at all, for a snapshot); every pooled
sandbox is created with MultiUseSandbox.from_snapshot() and shares the snapshot's
pages until it writes them. A sandbox comes back restored; one whose restore fails
(closed, broken) is closed and replaced by a new one from the snapshot.

Other sandbox-like objects (a sandbox of another guest runtime) are pooled with
SandboxPool.from_factory(): see `Poolable` for what they must provide."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from ..errors import PoolExhausted, SandboxClosed
from ..mem.elf import GuestBinary
from .aio import CallGuard, CancelledCall, cancelled, run_guarded
from .config import SandboxConfiguration
from .hot_mode import DEFAULT_SPIN, check_hot_capable, start_hot
from .multi_use import MultiUseSandbox
from .snapshot import Snapshot, is_snapshot_file
from .uninitialized import UninitializedSandbox
from .workers import Workers

LOG = logging.getLogger("hlsandbox.pool")
RESTORER_THREADS = "hlsandbox-pool-restorer"  # name of the threads restoring hot sandboxes
DEFAULT_MAX_WAIT = 30.0  # seconds a caller waits for a free sandbox unless told otherwise
WAIT_SAMPLES = 4096  # the most recent waits the percentiles are computed from

Source = Union[str, "os.PathLike[str]", GuestBinary, Snapshot]


class Poolable(Protocol):
    """What SandboxPool.from_factory() needs of the objects its factory returns
    (MultiUseSandbox has all of it). `interrupt_handle()` (whose result has kill()) is
    optional: without it, cancelling an acall() cannot stop a running call."""

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any: ...

    def restore(self) -> None:
        """Back to the state every borrower must find; raises if that is impossible."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class PoolStats:
    """A pool's counters since it was created (SandboxPool.stats())."""

    size: int  # sandboxes the pool keeps
    free: int  # ready to lend now
    lent: int  # lent out now
    lends: int  # sandboxes lent (each call(), submit(), acall() and map() item lends one)
    calls: int  # call(), submit(), acall() and map() items that ran
    errors: Mapping[str, int]  # exceptions of calls and of `with pool.sandbox()` blocks, by class name
    restores: int  # sandboxes restored when given back
    hot: int  # sandboxes kept hot now (SandboxPool(hot=))
    replacements: int  # sandboxes closed and created anew because their restore failed
    exhausted: int  # waits for a sandbox that ran out (PoolExhausted)
    wait_seconds: Mapping[str, float] = field(default_factory=dict)  # p50, p90, p99, max of recent waits


class SandboxPool:
    """A fixed number of sandboxes from one snapshot, lent to one caller at a time.

        pool = hl.SandboxPool(hl.guests.path("simpleguest"), size=4)
        with pool.sandbox() as sb:          # a sandbox in the snapshot's state
            sb.call("Echo", "hi")
        pool.call("Add", 1, 2)              # lend, call, give back
        await pool.acall("Add", 1, 2)       # the same without blocking the event loop
        pool.close()

    `source` is a guest path, a GuestBinary, a Snapshot or the path of a snapshot file.
    A guest is initialised once, with `config`, `host_functions` and `writer`, and the
    snapshot taken after it is the state every lent sandbox starts from. A Snapshot given
    by the caller stays the caller's (close() does not close it).

    `host_functions` maps names to callables (typed by their hints) or to
    (fn, params, returns), as for MultiUseSandbox.from_snapshot(). `config` may change
    time limits; its `max_wait_time` is how long a caller waits for a free sandbox
    (default 30 s; PoolExhausted past it).

    Thread-safe. Every sandbox is given back restored: one that was poisoned, timed
    out or killed, and one the borrower changed, is back in the snapshot's state (or
    replaced by a new one from the snapshot when its restore fails) before anyone else
    gets it. close() (or the end of a `with SandboxPool(...)` block) closes every
    sandbox, stopping calls still running, and the worker threads of submit()/acall().

    `hot` of the sandboxes are kept hot (MultiUseSandbox.hot(spin=`spin`)): calls to
    them take no VM exit, and their restores run on a thread of the pool's, after the
    borrower is done, leaving the guest waiting in its mailbox for the next borrower.
    Lending prefers them. Each costs a core spinning while calls come (and the restore's
    exit per call, off the borrower's path): see docs/architecture.md, "Hot mode"."""

    def __init__(self, source: Source, *, size: int, config: SandboxConfiguration | None = None,
                 host_functions: Mapping[str, Any] | None = None, writer: Any = None, hot: int = 0,
                 spin: float = DEFAULT_SPIN) -> None:
        _check_size(size)
        if config is not None and not isinstance(config, SandboxConfiguration):
            raise TypeError(f"config must be a SandboxConfiguration, not {type(config).__name__}")
        if isinstance(hot, bool) or not isinstance(hot, int) or not 0 <= hot <= size:
            raise ValueError(f"hot must be an int from 0 to size ({size}), got {hot!r}")
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 < spin <= 60:
            raise ValueError(f"spin must be seconds in (0, 60], got {spin!r}")
        functions = dict(host_functions or {})
        snap, owned = _snapshot_of(source, config, functions, writer)
        if hot:
            why = check_hot_capable(snap.layout.profile)
            if why is not None:
                if owned:
                    snap.close()
                raise why

        def create() -> MultiUseSandbox:
            return MultiUseSandbox.from_snapshot(snap, config, host_functions=functions, writer=writer)

        max_wait = config.max_wait_time if config is not None else None
        self._hot_target, self._spin = hot, float(spin)
        try:
            self._setup(create, size, max_wait, restoring_calls=True)
        except BaseException:
            if owned:
                snap.close()
            raise
        self.snapshot: Snapshot | None = snap
        self._owned_snapshot = snap if owned else None

    @classmethod
    def from_factory(cls, factory: Callable[[], Poolable], *, size: int,
                     max_wait: float | None = None) -> SandboxPool:
        """A pool of the objects `factory()` returns (see Poolable), each restored with
        its restore() when given back; `max_wait` seconds (default 30) is how long a
        caller waits for a free one. For sandboxes of other runtimes that keep their own
        snapshot to restore to."""
        if not callable(factory):
            raise TypeError("factory must be callable")
        _check_size(size)
        self = object.__new__(cls)
        self.snapshot = None
        self._owned_snapshot = None
        self._hot_target, self._spin = 0, DEFAULT_SPIN
        self._setup(factory, size, max_wait, restoring_calls=False)
        return self

    def _setup(self, factory: Callable[[], Any], size: int, max_wait: float | None,
               restoring_calls: bool) -> None:
        if max_wait is not None and (not isinstance(max_wait, (int, float)) or isinstance(max_wait, bool)
                                     or math.isnan(max_wait) or max_wait < 0):
            raise ValueError(f"max_wait must be seconds >= 0 or None, got {max_wait!r}")
        self._factory = factory
        self._size = size
        self._max_wait = DEFAULT_MAX_WAIT if max_wait is None else float(max_wait)
        # MultiUseSandbox.call(restore=True) calls and restores in one Cython method.
        self._restoring_calls = restoring_calls
        self._cond = threading.Condition(threading.Lock())
        self._free: list[Any] = []
        self._lent: set[int] = set()
        self._all: dict[int, Any] = {}  # id -> sandbox, free or lent
        self._waiting = 0  # threads in _acquire() waiting for a sandbox
        self._missing = 0  # sandboxes to create when next needed (a replacement failed)
        self._closed = False
        self._workers = Workers(size)  # threads start with the first submit(), map() or acall()
        # Hot sandboxes given back are restored here, one thread per hot sandbox at most, so
        # a guest slow to park holds up no other (docs/architecture.md, "In a SandboxPool").
        self._restorer = Workers(self._hot_target, RESTORER_THREADS) if self._hot_target else None
        # The threads hold the Workers, not the pool: a pool dropped unclosed ends them.
        weakref.finalize(self, _close_workers, self._workers, self._restorer)
        self._heating = 0  # hot sandboxes being created
        self._lends = self._calls = self._restores = self._replacements = self._exhausted = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._waits: collections.deque[float] = collections.deque(maxlen=WAIT_SAMPLES)
        try:
            for _ in range(size):
                sb = self._create()
                self._all[id(sb)] = sb
                self._free.insert(0, sb)  # the first ones (the hot ones) last: lent first
        except BaseException:
            for sb in self._free:
                _close_quietly(sb)
            self._free.clear()
            self._all.clear()
            self._closed = True
            raise

    # -- lending ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of sandboxes the pool keeps."""
        return self._size

    def sandbox(self, timeout: float | None = None) -> _Lease:
        """A context manager lending a sandbox in the snapshot's state for its block:

            with pool.sandbox() as sb:
                sb.call(...)

        Waits up to `timeout` seconds (default the pool's max wait; math.inf: no
        limit) for a free one, then raises PoolExhausted. The sandbox is restored when
        the block ends, whatever happened in it; do not keep it beyond the block."""
        return _Lease(self, timeout)

    def call(self, name: str, *args: Any, timeout: float | None = None, wait: float | None = None) -> Any:
        """Lends a sandbox, calls guest function `name` with `args` and gives it back
        restored. `timeout` limits the guest call as in MultiUseSandbox.call()
        (ExecutionTimeout); `wait` (default the pool's max wait) limits the wait for a
        free sandbox (PoolExhausted)."""
        sb = self._acquire(wait)
        restored = False
        try:
            if self._restoring_calls and not sb.is_hot:
                result = sb.call(name, *args, timeout=timeout, restore=True)
                restored = True  # call(restore=True) raises if its restore failed
            elif self._restoring_calls:  # hot: restored on a restorer thread
                result = sb.call(name, *args, timeout=timeout, restore=False)
            else:
                result = sb.call(name, *args, timeout=timeout)
            return result
        except BaseException as e:
            self._count_error(e)
            raise
        finally:
            self._give_back(sb, restored, called=True)

    def submit(self, name: str, *args: Any, timeout: float | None = None) -> concurrent.futures.Future[Any]:
        """call() on one of the pool's worker threads (one per sandbox): a
        concurrent.futures.Future of its result. Cancelling the future before it runs
        drops the call."""
        return self._workers.submit(self.call, name, *args, timeout=timeout)

    def map(self, name: str, *iterables: Iterable[Any], timeout: float | None = None) -> Iterator[Any]:
        """Like Executor.map: guest function `name` called with an argument from each of
        `iterables`, on the pool's worker threads; results in order (a call's exception
        is raised when its result is reached). `timeout` limits each guest call."""
        futures = [self.submit(name, *args, timeout=timeout) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[Any]:
            # As Executor.map: in order, and closing the iterator cancels what has not started.
            try:
                futures.reverse()
                while futures:
                    yield futures.pop().result()
            finally:
                for f in futures:
                    f.cancel()
        return results()

    async def acall(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """call() without blocking the event loop (it runs on the pool's worker
        threads). Cancelling the awaiting task drops a call that has not started and
        kills one that runs; the sandbox is restored before it is lent again."""
        guard = CallGuard()
        # A task cancelled before its call starts: the worker sees guard.cancelled and drops it.
        future = self._workers.run_for_loop(self._guarded_call, guard, name, args, timeout)
        try:  # await_cancellable(), inlined: one coroutine less per acall on the event loop
            return await future
        except asyncio.CancelledError:
            cancelled(guard)
            raise

    def _guarded_call(self, guard: CallGuard, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        if guard.cancelled:
            raise CancelledCall()
        sb = self._acquire(None)
        restored = False
        try:
            if self._restoring_calls and not sb.is_hot:
                result = run_guarded(guard, sb, lambda: sb.call(name, *args, timeout=timeout, restore=True))
                restored = True
            elif self._restoring_calls:
                result = run_guarded(guard, sb, lambda: sb.call(name, *args, timeout=timeout, restore=False))
            else:
                result = run_guarded(guard, sb, lambda: sb.call(name, *args, timeout=timeout))
            return result
        except CancelledCall:
            raise
        except BaseException as e:
            self._count_error(e)
            raise
        finally:
            self._give_back(sb, restored, called=not guard.cancelled)

    def _acquire(self, wait: float | None) -> Any:
        if wait is None:
            wait = self._max_wait
        elif isinstance(wait, bool) or not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
            raise ValueError(f"timeout must be seconds >= 0 or None, got {wait!r}")
        create = False
        with self._cond:
            if self._free and not self._closed:  # the common case, kept short
                sb = self._take_free()
                self._lends += 1
                self._lent.add(id(sb))
                self._waits.append(0.0)
                return sb
            start = time.monotonic()
            while True:
                if self._closed:
                    raise SandboxClosed("the pool is closed")
                if self._free:
                    sb = self._take_free()
                    break
                if self._missing:
                    self._missing -= 1
                    create = True
                    break
                remaining = wait - (time.monotonic() - start)
                if remaining <= 0:
                    self._exhausted += 1
                    raise PoolExhausted(f"no free sandbox within {wait:g} s (pool of {self._size}, all lent)")
                self._waiting += 1
                try:
                    self._cond.wait(None if math.isinf(remaining) else remaining)
                finally:
                    self._waiting -= 1
            self._lends += 1
            if not create:
                self._lent.add(id(sb))
            self._waits.append(time.monotonic() - start)
        if create:
            try:
                sb = self._create()
            except BaseException:
                with self._cond:
                    self._missing += 1
                    self._cond.notify()
                raise
            with self._cond:
                self._all[id(sb)] = sb
                self._lent.add(id(sb))
                if self.closed:  # closed meanwhile, by another thread
                    self._forget(sb)
                    _close_quietly(sb)
                    raise SandboxClosed("the pool is closed")
        return sb

    def _give_back(self, sb: Any, restored: bool, called: bool) -> None:
        """Takes a sandbox back from its borrower: a hot one to a restorer thread,
        any other restored (or replaced) here."""
        if not restored and self._restorer is not None and not self._closed and sb.is_hot:
            if called:
                with self._cond:
                    self._calls += 1
            try:
                self._restorer.post(functools.partial(self._release, sb, False, False))
                return
            except SandboxClosed:  # the pool closed meanwhile: _release() closes it
                called = False
        self._release(sb, restored, called)

    def _take_free(self) -> Any:
        """A free sandbox (the lock held): a hot one if any, else the most recently used
        (its pages are warm)."""
        free = self._free
        if 0 < self._hot_target < self._size and not free[-1].is_hot:
            for i in range(len(free) - 2, -1, -1):
                if free[i].is_hot:
                    return free.pop(i)
        return free.pop()

    def _create(self) -> Any:
        """A new sandbox from the factory, made hot while fewer than `hot` are."""
        heat = False
        if self._hot_target:
            with self._cond:
                heat = sum(1 for sb in self._all.values() if sb.is_hot) + self._heating < self._hot_target
                self._heating += heat
        try:
            sb = self._factory()
            if heat:
                try:
                    start_hot(sb, self._spin)
                except BaseException:
                    _close_quietly(sb)
                    raise
            return sb
        finally:
            if heat:
                with self._cond:
                    self._heating -= 1

    def _release(self, sb: Any, restored: bool, called: bool) -> None:
        """Takes a sandbox back: restored (unless `restored` says it is already), or
        replaced when that fails."""
        if self._closed:
            with self._cond:
                self._forget(sb)
            _close_quietly(sb)
            return
        replaced = False
        if not restored:
            try:
                sb.restore()
            except BaseException as e:
                # Strings, not `e`: a kept log record must not keep the sandbox alive.
                LOG.warning("a pooled sandbox could not be restored (%s: %s); replacing it",
                            type(e).__name__, str(e))
                _close_quietly(sb)
                replaced = True
        fresh = None
        if replaced and not self._closed:
            try:
                fresh = self._create()
            except Exception as e:  # the next _acquire() that finds no free sandbox tries again
                LOG.warning("creating a replacement sandbox failed (%s: %s)", type(e).__name__, str(e))
        with self._cond:
            if called:
                self._calls += 1
            if not replaced and not self.closed:  # the common case, kept short
                self._restores += 1
                self._lent.discard(id(sb))
                self._free.append(sb)
                if self._waiting:
                    self._cond.notify()
                return
            self._forget(sb)
            if replaced:
                self._replacements += 1
                if fresh is None:
                    self._missing += 1
                elif self.closed:
                    _close_quietly(fresh)
                else:
                    self._all[id(fresh)] = fresh
                    self._free.append(fresh)
            else:  # the pool was closed meanwhile
                self._restores += 1
                _close_quietly(sb)
            if self._waiting:
                self._cond.notify()

    def _forget(self, sb: Any) -> None:
        self._lent.discard(id(sb))
        self._all.pop(id(sb), None)

    def _count_error(self, e: BaseException) -> None:
        with self._cond:
            self._errors[type(e).__name__] += 1

    # -- state --------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """Counts of lends, calls, errors by class, restores, replacements and exhausted
        waits, and percentiles of the most recent waits for a sandbox (seconds)."""
        with self._cond:
            waits = sorted(self._waits)
            stats = PoolStats(size=self._size, free=len(self._free), lent=len(self._lent), lends=self._lends,
                              calls=self._calls, errors=dict(self._errors), restores=self._restores,
                              hot=sum(1 for sb in self._all.values() if sb.is_hot) if self._hot_target else 0,
                              replacements=self._replacements, exhausted=self._exhausted)
        return dataclasses.replace(stats, wait_seconds=_percentiles(waits))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Closes every sandbox (a call still running is stopped: it raises
        SandboxClosed or ExecutionCanceled), the worker threads and the snapshot the pool
        made. Waiting callers raise SandboxClosed. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            sandboxes = list(self._all.values())
            self._free.clear()
            self._all.clear()
            self._cond.notify_all()
        for sb in sandboxes:
            _close_quietly(sb)
        # Queued submit()s are cancelled, queued acall()s raise SandboxClosed; from a
        # worker thread itself, the others are not waited for (its own join would deadlock).
        _close_workers(self._workers, self._restorer)
        if self._owned_snapshot is not None:
            self._owned_snapshot.close()
            self._owned_snapshot = None

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<SandboxPool closed, size {self._size}>"
        return f"<SandboxPool size {self._size}, {len(self._free)} free, {len(self._lent)} lent>"


class _Lease:
    """pool.sandbox()'s context manager."""

    __slots__ = ("_pool", "_timeout", "_sb")

    def __init__(self, pool: SandboxPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._sb: Any = None

    def __enter__(self) -> Any:
        if self._sb is not None:
            raise RuntimeError("this pool.sandbox() block is already entered")
        self._sb = self._pool._acquire(self._timeout)
        return self._sb

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        sb, self._sb = self._sb, None
        if exc is not None:
            self._pool._count_error(exc)
        self._pool._give_back(sb, False, called=False)


def _check_size(size: Any) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


def _snapshot_of(source: Source, config: SandboxConfiguration | None, host_functions: dict[str, Any],
                 writer: Any) -> tuple[Snapshot, bool]:
    """The pool's snapshot and whether the pool made it (and closes it)."""
    if isinstance(source, Snapshot):
        return source, False
    if isinstance(source, (str, os.PathLike)) and is_snapshot_file(source):
        return Snapshot.load(source), True
    if not isinstance(source, (str, os.PathLike, GuestBinary)):
        raise TypeError(f"source must be a guest path, a GuestBinary, a Snapshot or a snapshot file, "
                        f"not {type(source).__name__}")
    u = UninitializedSandbox(source, config, writer=writer)
    for name, fn in host_functions.items():
        if isinstance(fn, tuple):
            u.register(name, *fn)
        else:
            u.register(name, fn)
    with u.evolve() as sb:
        return sb.snapshot(), True


def _percentiles(ordered: list[float]) -> dict[str, float]:
    if not ordered:
        return {}
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]
    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1]}


def _close_workers(*workers: Workers | None) -> None:
    for w in workers:
        if w is not None:
            w.close()


def _close_quietly(sb: Any) -> None:
    try:
        sb.close()
    except Exception as e:  # a broken sandbox must not stop the others from closing
        LOG.warning("closing a pooled sandbox raised %s: %s", type(e).__name__, str(e))
