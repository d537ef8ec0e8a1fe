"""Running blocking sandbox calls from asyncio: the call runs in a worker thread, and
cancelling the awaiting task stops the guest call.

A kill only reaches a call that is running (InterruptHandle.kill() returns False
otherwise), and the worker may still be on its way into the call when the task is
cancelled; so the cancelling side retries the kill (on the watchdog's thread), with a
short backoff, until the worker has left the call."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .watchdog import WATCHDOG

RETRY_FIRST = 0.0002  # seconds before the first retried kill
RETRY_MAX = 0.01


class CancelledCall(Exception):
    """Raised in the worker when its task was cancelled before the guest call began."""


class CallGuard:
    """Shared by one asynchronous call's worker and its awaiting task: which sandbox the
    worker's call runs on (while it does), and whether the task was cancelled."""

    __slots__ = ("_lock", "_target", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Any | None = None  # a sandbox-like object with interrupt_handle()
        self.cancelled = False

    def enter(self, sandbox: Any) -> None:
        """The worker is about to call `sandbox` (raises CancelledCall if cancelled)."""
        with self._lock:
            if self.cancelled:
                raise CancelledCall()
            self._target = sandbox

    def leave(self) -> None:
        """The worker's call is over: kills from now on must not reach the sandbox."""
        with self._lock:
            self._target = None

    def cancel(self) -> bool:
        """Marks the call cancelled and kills it if it runs; True while the worker is
        still inside the call (the kill should be retried)."""
        with self._lock:
            self.cancelled = True
            target = self._target
            if target is None:
                return False
            kill_call(target)
            return True


def kill_call(sandbox: Any) -> None:
    """Stops `sandbox`'s running call through its interrupt handle (if it has one)."""
    handle = getattr(sandbox, "interrupt_handle", None)
    if handle is None:
        return
    try:
        handle().kill()
    except Exception:  # closed meanwhile: there is no call to stop
        pass


async def await_cancellable(awaitable: Awaitable[Any], guard: CallGuard) -> Any:
    """Awaits a worker's result (`awaitable`, e.g. from run_in_executor()); if the
    awaiting task is cancelled, a call that has not started is dropped (the worker raises
    CancelledCall on entering it) and one that runs is killed, the kill retried until the
    worker has left the call."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        cancelled(guard)
        raise


def cancelled(guard: CallGuard) -> None:
    """The awaiting task of `guard`'s call was cancelled: drop or kill the call."""
    if guard.cancel():
        _retry_kill(guard, RETRY_FIRST)


def _retry_kill(guard: CallGuard, delay: float) -> None:
    # On the watchdog's thread, not the event loop: the loop may stop (asyncio.run()
    # ends) while the worker is still on its way into the call.
    def again() -> None:
        if guard.cancel():
            _retry_kill(guard, min(delay * 2, RETRY_MAX))
    WATCHDOG.arm(delay, again)


def run_guarded(guard: CallGuard, sandbox: Any, fn: Callable[[], Any]) -> Any:
    """Runs `fn` (a call on `sandbox`) in the worker under `guard`."""
    guard.enter(sandbox)
    try:
        return fn()
    finally:
        guard.leave()


async def call_in_executor(sandbox: Any, call: Callable[[], Any]) -> Any:
    """MultiUseSandbox.acall(): `call` on the loop's default executor, cancellable; a
    sandbox a cancelled call left poisoned is restored before the worker lets it go."""
    guard = CallGuard()

    def work() -> Any:
        try:
            return run_guarded(guard, sandbox, call)
        finally:
            if guard.cancelled and not sandbox._closed and sandbox.poisoned:
                sandbox.restore()

    return await await_cancellable(asyncio.get_running_loop().run_in_executor(None, work), guard)
