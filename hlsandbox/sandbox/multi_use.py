"""MultiUseSandbox: a running guest whose functions Python calls, snapshots and restores.

Building one is sandbox/evolve.py's, serving the exits of its calls sandbox/exits.py's,
the snapshot type and its checks sandbox/snapshot.py's; the calls themselves run in
Cython (sandbox/call_path.pyx, or sandbox/hot_path.pyx while hot)."""
from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from ..errors import (
    GuestFunctionNotFound,
    GuestProtocolError,
    HostFunctionError,
    HyperlightError,
    PoisonedSandbox,
    SandboxClosed,
    SnapshotMismatch,
    UsedAfterFork,
)
from ..func.host_functions import HostFunctionRegistry
from ..func.types import FALLBACK, Signature
from ..func.wire import RecordStack
from ..hypervisor import kvm
from ..mem.elf import GuestBinary
from ..mem.layout import SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory
from . import evolve
from .config import SandboxConfiguration
from .exits import ExitHandler
from .guest_counter import GuestCounter
from .guest_functions import GuestFunction, check_out, check_timeout, fallback_call, wait_seconds
from .hot_mode import DEFAULT_SPIN, HotMode, stop_hot
from .hot_path import HotPath
from .interrupt import InterruptHandle
from .output import output_function
from .snapshot import (
    RestorePlans,
    Snapshot,
    SnapshotDerived,
    check_config,
    check_host_functions,
    check_same_sandbox,
    function_view,
    load_snapshot,
    u64_pairs,
)


class MultiUseSandbox:
    """A guest that has run its initialisation; call its functions with call().

    Created by UninitializedSandbox.evolve() or from_snapshot(). Close it with close()
    or a `with` block (garbage collection also releases the VM)."""

    layout: SandboxMemoryLayout
    functions: Mapping[str, Signature]  # the guest's functions by name
    _closed: bool
    _close_lock: threading.RLock
    # Set by evolve.attach(); None only while the sandbox is built (close() copes with that).
    _vm: kvm.VirtualMachine
    _memory: SharedMemory
    _input: RecordStack
    _output: RecordStack
    _exits: ExitHandler
    _path: Any  # CallPath, or the HotPath while hot
    _cold_path: Any  # the CallPath while hot
    _hot: HotPath | None  # while hot: the call path (_path is it too)
    _config: SandboxConfiguration | None  # None: the snapshot's own sizes, built when first asked for
    _host_functions: HostFunctionRegistry
    _write: Callable[[str], Any]
    _counter: GuestCounter | None
    _max_time: float | None
    _restore_after_call: bool
    _functions: dict[str, GuestFunction]
    _copy_ranges: list[tuple[int, int]]
    _restore_ranges: memoryview
    _baseline: Snapshot | None  # what the dirty pages are relative to
    _init_snapshot: Snapshot | None
    _plans: RestorePlans | None  # amd64: fast-restore plans, once there is memory

    def __init__(self) -> None:
        raise TypeError("create a MultiUseSandbox with UninitializedSandbox(...).evolve()")

    @classmethod
    def _new(cls, config: SandboxConfiguration | None, host_functions: HostFunctionRegistry, writer: Any,
             layout: SandboxMemoryLayout, counter: GuestCounter | None) -> MultiUseSandbox:
        """An empty sandbox; sandbox/evolve.py gives it memory, a VM and a guest."""
        self = object.__new__(cls)
        self._closed = True  # until fully built, so close() and __del__ are safe
        self._close_lock = threading.RLock()  # one close() at a time (a pool's and its restorer's)
        self._vm = self._memory = None  # type: ignore[assignment]
        self._path = self._cold_path = self._hot = None
        self._config = config
        self._host_functions = host_functions
        self._write = output_function(writer)
        self._counter = counter
        self._max_time = config.max_execution_time if config is not None else None
        self._restore_after_call = config.restore_after_call if config is not None else False
        self._functions = {}
        self._copy_ranges = []
        self._baseline = self._init_snapshot = self._plans = None
        self.layout = layout
        return self

    @classmethod
    def _create(cls, binary: GuestBinary, config: SandboxConfiguration, host_functions: HostFunctionRegistry,
                writer: Any, counter: GuestCounter | None = None,
                layout: SandboxMemoryLayout | None = None) -> MultiUseSandbox:
        """Loads the ELF into fresh memory and runs the guest's initialisation."""
        self = cls._new(config, host_functions, writer, layout or evolve.layout_for(binary.image, config), counter)
        evolve.initialise(self, binary)
        return self

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot | str | os.PathLike[str],
                      config: SandboxConfiguration | None = None, *,
                      host_functions: Mapping[str, Any] | None = None, writer: Any = None) -> MultiUseSandbox:
        """A running sandbox in the state of `snapshot` (a Snapshot or the path of a snapshot
        file), without running the guest's initialisation again.

        Guest memory maps the snapshot copy-on-write, so sandboxes from one snapshot share
        its pages until they write them. `host_functions` maps names to callables (typed by
        their hints) or to (fn, params, returns); every host function the snapshot was taken
        with must be given (raw host functions and a GuestCounter need UninitializedSandbox).
        `config` may change time limits; its sizes must match the snapshot."""
        if config is not None and not isinstance(config, SandboxConfiguration):
            raise TypeError(f"config must be a SandboxConfiguration, not {type(config).__name__}")
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        return cls._restored(snap, config, SnapshotDerived.of(snap).registry_for(snap, host_functions), writer)

    @classmethod
    def _restored(cls, snap: Snapshot, config: SandboxConfiguration | None, host_functions: HostFunctionRegistry,
                  writer: Any, counter: GuestCounter | None = None) -> MultiUseSandbox:
        if not isinstance(snap, Snapshot):
            raise TypeError(f"expected a Snapshot, not {type(snap).__name__}")
        snap._adopt()  # raises SnapshotClosed
        if config is not None:
            check_config(config, snap.layout)
        derived = SnapshotDerived.of(snap)
        if host_functions is not derived.checked_registry:
            check_host_functions(snap, host_functions)
        self = cls._new(config, host_functions, writer, snap.layout, counter)
        evolve.resume(self, snap, derived)
        return self

    @property
    def config(self) -> SandboxConfiguration:
        """The sandbox's configuration (for a sandbox from a snapshot without one: the
        snapshot's sizes and the defaults)."""
        if self._config is None:
            L = self.layout
            self._config = SandboxConfiguration(heap_size=L.heap_size, stack_size=L.stack_size,
                                                input_data_size=L.input_size, output_data_size=L.output_size,
                                                scratch_base_gpa=L.scratch_gpa, profile=L.profile)
        return self._config

    def _set_copy_ranges(self, image_ranges: list[tuple[int, int]]) -> None:
        self._copy_ranges = list(image_ranges)
        self._restore_ranges = u64_pairs(self._copy_ranges + self.layout.copied_ranges())

    def _set_functions(self, table: list[tuple[str, tuple[int, ...], int]]) -> None:
        self._functions = {name: GuestFunction(name, params, ret) for name, params, ret in table}
        self.functions = function_view(self._functions)

    # -- calls --------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, timeout: float | None = None, restore: bool | None = None,
             wait: float | bool | None = None, out: Any = None) -> Any:
        """Calls guest function `name` with `args` and returns its result.

        Checks name, arity and types first (GuestFunctionNotFound,
        GuestFunctionParameterTypeMismatch). `timeout` (seconds, default the
        configuration's max_execution_time) stops a call that runs longer (ExecutionTimeout).
        An abort, fault or cancellation poisons the sandbox (PoisonedSandbox).
        With `restore=True` (default: the configuration's restore_after_call) the sandbox
        is restored to its state after initialisation once the call returns or fails,
        so every such call starts from a clean guest.

        Calls from several threads run one at a time: a call waits while another runs, up
        to `wait` seconds (default the configuration's max_wait_time; True: no limit;
        False or 0: do not wait), then raises SandboxBusy.

        `bytes` arguments take any buffer (bytes, bytearray, memoryview, a numpy array),
        copied from its memory once. With `out` (a writable C-contiguous buffer, e.g. a
        numpy array or a bytearray) a bytes result is written into it instead of a new
        bytes object, and the call returns the number of bytes written (ValueError if
        the result does not fit)."""
        fn = self._functions.get(name)
        if fn is None and FALLBACK in self._functions and name != FALLBACK:
            fn = fallback_call(name, args)
        if fn is None or self._closed or self._path.poisoned:
            self._refuse(name)
        w = -2.0 if wait is None else wait_seconds(wait)
        restoring = restore or (restore is None and self._restore_after_call)
        limit = self._max_time if timeout is None else check_timeout(timeout)
        if out is not None:
            check_out(fn, out)
        exits = self._exits
        try:
            if out is None and (limit is None or limit == math.inf):
                init_plan = self._plans.init if self._plans is not None else None
                if restoring and self._init_snapshot is self._baseline and init_plan is not None:
                    try:  # call and restore in one Cython method: the per-request clean guest
                        return self._path.call_restoring(fn.name_bytes, fn.param_tags, fn.return_tag, args,
                                                         init_plan, w)
                    finally:
                        restoring = False
                        if not self._closed:
                            self._after_restore()
                return self._path.call(fn.name_bytes, fn.param_tags, fn.return_tag, args, w)
            return self._path.call_limited(fn.name_bytes, fn.param_tags, fn.return_tag, args, w,
                                           -1.0 if limit is None or limit == math.inf else limit, out)
        except HostFunctionError as e:
            e.__cause__ = exits.last_host_exception
            raise
        except GuestProtocolError:
            self._path.poisoned = True
            raise
        finally:
            exits.last_host_exception = None
            if restoring:
                self.restore(self._init_snapshot)
            if exits.writer_error is not None:
                exits.raise_writer_error()

    async def acall(self, name: str, *args: Any, timeout: float | None = None,
                    restore: bool | None = None) -> Any:
        """call() without blocking the event loop: it runs on the loop's default executor.

        Cancelling the awaiting task drops a call that has not started and kills one that
        runs; a sandbox that the kill poisoned is restored (to its state after
        initialisation) before the worker lets it go. A kill retried while this call waits
        for another thread's call on the same sandbox may stop that one."""
        from .aio import call_in_executor
        return await call_in_executor(self, lambda: self.call(name, *args, timeout=timeout, restore=restore))

    # -- hot mode ----------------------------------------------------------------------------

    def hot(self, spin: float = DEFAULT_SPIN) -> HotMode:
        """A context manager that keeps the sandbox hot: calls without a VM exit, at the
        price of a core spinning while calls come (see HotMode; docs/architecture.md)."""
        return HotMode(self, spin)

    @property
    def is_hot(self) -> bool:
        """True inside `with sb.hot()`."""
        return self._hot is not None

    def _refuse(self, name: str = "") -> NoReturn:
        if self._vm is not None and self._vm.forked:
            raise UsedAfterFork("this sandbox was created by the parent process before fork(); its VM "
                                "belongs to the parent: create a new sandbox in the child")
        if self._closed:
            raise SandboxClosed("the sandbox is closed")
        if self._path.poisoned:
            raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
        raise GuestFunctionNotFound(f"the guest has no function {name!r}")

    # -- snapshots ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _closing_race(self, what: str) -> Iterator[None]:
        """Turns the error of an operation whose memory close() in another thread pulled
        away mid-way into SandboxClosed."""
        try:
            yield
        except HyperlightError:
            raise
        except Exception as e:
            if self._closed:
                raise SandboxClosed(f"the sandbox was closed by another thread during {what}") from e
            raise

    def snapshot(self) -> Snapshot:
        """Captures guest memory and vCPU state; restore() puts the sandbox back to it."""
        if self._closed or self._path.poisoned:
            self._refuse("")
        with self._closing_race("snapshot()"):
            return self._snapshot()

    def _snapshot(self) -> Snapshot:
        vm = self._vm
        path = self._path
        path.claim()
        try:
            if path.poisoned:  # by a call this one waited for
                raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
            if self._hot is not None:
                self._hot.park()  # vCPU state can only be read with the guest out of KVM_RUN
            # After a restore the snapshot's state is staged, not yet in the vCPU.
            staged = path.pending is not None and vm.generation == path.pending_generation + 1
            state = path.pending.vcpu_state if staged else vm.save_state()
            vm.discard_dirty_pages()  # from here, dirty pages are relative to this snapshot
            snap = Snapshot.capture(self._memory, self.layout, state, self._host_functions.signatures(),
                                    [f.signature for f in self._functions.values()], self._copy_ranges,
                                    self._host_functions.raw_ids())
            self._baseline = snap
            return snap
        finally:
            path.release()

    def restore(self, snapshot: Snapshot | None = None) -> None:
        """Puts memory and vCPU state back to `snapshot` (default: the state after
        initialisation) and makes a poisoned sandbox usable again.

        Restoring the snapshot this sandbox took or restored last costs the pages the
        guest wrote since (found by KVM dirty logging) plus the regions every call
        writes; any other snapshot with the same layout is copied whole."""
        if self._closed:
            self._refuse("")
        with self._closing_race("restore()"):
            self._restore(snapshot)

    def _restore(self, snapshot: Snapshot | None) -> None:
        snap = self._init_snapshot if snapshot is None else snapshot
        if snap is None:  # closed meanwhile
            self._refuse()
        plan = self._plans.plan_for(snap) if snap is self._baseline and self._plans is not None else None
        if plan is not None:  # amd64: the fast path, one Cython call
            if snapshot is not None and snap._closed:
                snap._check_open()
            self._path.restore(plan)
            self._after_restore()
            return
        if not isinstance(snap, Snapshot):
            raise TypeError(f"restore() takes a Snapshot, not {type(snap).__name__}")
        if snapshot is not None:
            snap._check_open()
        if snap is not self._baseline:
            check_same_sandbox(snap, self.layout, self._host_functions, self._functions)
        path = self._path
        path.claim()
        try:
            if self._hot is not None:
                self._hot.park()
            try:
                load_snapshot(self._vm, self._memory, self.layout, snap, snap is self._baseline,
                              self._restore_ranges)
            except SnapshotMismatch:
                path.poisoned = True  # memory is the snapshot's, the vCPU is not
                raise
            self._baseline = snap
            path.poisoned = False
            path.pending, path.pending_generation = snap, self._vm.generation
            self._after_restore()
        finally:
            path.release()

    def _after_restore(self) -> None:
        """Bookkeeping after a snapshot's memory and registers are back."""
        if self._counter is not None:
            self._counter._write()  # the host's value, whatever the snapshot holds

    # -- state ---------------------------------------------------------------------------------

    @property
    def poisoned(self) -> bool:
        """True after an abort, fault or cancellation until the sandbox is restored."""
        return bool(self._path.poisoned)

    def read_memory(self, gpa: int, size: int) -> bytes:
        """A copy of guest memory at guest physical address `gpa` (for inspection and tests);
        the range must lie within the snapshot region or within the scratch region."""
        if self._closed or self._vm.forked:
            self._refuse("")
        L = self.layout
        start = L.host(gpa)
        if size < 0 or (size and L.host(gpa + size - 1) != start + size - 1):
            raise ValueError(f"[{gpa:#x}, +{size:#x}) crosses the end of a guest memory region")
        return self._memory.read(start, size)

    def interrupt_handle(self) -> InterruptHandle:
        """A handle whose kill() stops the running call from any thread."""
        if self._closed or self._vm.forked:
            self._refuse()
        return InterruptHandle(self._vm)

    def close(self) -> None:
        """Destroys the VM and frees guest memory; a call running in another thread is
        killed and waited for (calls waiting for the sandbox raise SandboxClosed). Refused
        from inside one of its own calls (a host function), which leaves it open."""
        if self._vm is not None:
            self._vm.check_closable()
        with self._close_lock:
            self._close()

    def _close(self) -> None:
        stop_hot(self)
        if self._vm is not None:
            self._vm.close()
        self._closed = True
        if self._memory is not None:
            self._memory.close()
        # The snapshots this sandbox keeps hold a memfd and a mapping each; a closed
        # sandbox that is still referenced must not keep them (a user's own stay open).
        self._init_snapshot = self._baseline = None
        if self._path is not None:
            self._path.pending = None
        self._plans = None

    def __enter__(self) -> MultiUseSandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self.poisoned else "ready"
        return f"<MultiUseSandbox {state}, {len(getattr(self, '_functions', {}))} guest functions>"
