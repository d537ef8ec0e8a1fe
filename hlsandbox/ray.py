"""hlsandbox.ray: SandboxPools on the nodes of a Ray cluster (the `hlsandbox[ray]` extra).

    import ray, hlsandbox as hl
    from hlsandbox.ray import RayPool
    ray.init(address="auto")
    with RayPool(hl.guests.path("simpleguest"), actors=4) as pool:
        pool.call("Add", 1, 2)                       # 3
        ref = pool.submit("Echo", "hi")              # a ray.ObjectRef
        list(pool.map("Add", [1, 2], [3, 4]))        # [4, 6]

The guest is initialised once, here, and its snapshot is shipped to every actor through
Ray's object store (or read by every node from a path they share, `shared_path=True`).
Each actor keeps a local SandboxPool made from that snapshot, so every call starts
from the snapshot's state, whichever node runs it.

A guest error raised on a node arrives as the same hlsandbox exception: call() and map()
raise the exception itself; ray.get() of a submit() ref raises Ray's wrapper of it, which
is an instance of the hlsandbox class too. When a node dies, the calls it was running
raise ray.exceptions.ActorDiedError (a RayActorError) unless the pool was made with
`retries=n`: then Ray restarts the actor (on a node with room for it) and runs each lost
call again, up to n times. Guest calls are restored after each call, so running one again
is safe for the guest; host functions with side effects run again too.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

try:
    import ray
    import ray.exceptions
except ImportError as e:  # pragma: no cover (the extra is installed where this runs)
    raise ImportError(f"hlsandbox.ray needs Ray: pip install 'hlsandbox[ray]' ({e})") from e

from .errors import HyperlightError
from .mem.elf import GuestBinary
from .sandbox.config import SandboxConfiguration
from .sandbox.pool import PoolStats, SandboxPool, _snapshot_of
from .sandbox.snapshot import Snapshot, data_extents, is_snapshot_file

DEFAULT_WAIT = 300.0  # seconds call() and map() wait for a result unless told otherwise

__all__ = ["RayPool", "SnapshotImage"]


class SnapshotImage:
    """A snapshot file's content without its holes (zero pages): what ray.put() ships.
    `size` is the file's length, `extents` (offset, data) pairs of its data."""

    __slots__ = ("size", "extents")

    def __init__(self, size: int, extents: list[tuple[int, bytes]]) -> None:
        self.size = size
        self.extents = extents

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotImage:
        with tempfile.TemporaryDirectory(prefix="hlsandbox-ray-") as tmp:
            path = os.path.join(tmp, "snapshot.hlsnap")
            snapshot.save(path)
            return cls.read(path)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SnapshotImage:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            extents = [(a, _pread_all(fd, b - a, a)) for a, b in data_extents(fd, size)]
        finally:
            os.close(fd)
        return cls(size, extents)

    def load(self) -> Snapshot:
        """Writes the image to a private temporary file and loads it (Snapshot.load checks
        it as any file). The file is unlinked at once; the snapshot keeps it open."""
        fd, path = tempfile.mkstemp(prefix="hlsandbox-ray-", suffix=".hlsnap")
        try:
            try:
                for offset, data in self.extents:
                    view = memoryview(data)
                    while view:
                        view = view[os.pwrite(fd, view, offset + (len(data) - len(view))):]
                os.ftruncate(fd, self.size)
            finally:
                os.close(fd)
            return Snapshot.load(path)
        finally:
            os.unlink(path)

    def __reduce__(self) -> tuple[type[SnapshotImage], tuple[int, list[tuple[int, bytes]]]]:
        return (SnapshotImage, (self.size, self.extents))

    def __repr__(self) -> str:
        data = sum(len(d) for _, d in self.extents)
        return f"<SnapshotImage {self.size} bytes, {data} of them data>"


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            raise EOFError(f"snapshot file ended early at byte {offset}")
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class _PoolActor:
    """One Ray actor: a local SandboxPool of `size` sandboxes from the shipped snapshot.
    A threaded actor (max_concurrency=size), so its sandboxes run calls side by side."""

    def __init__(self, snapshot: SnapshotImage | str, size: int, config: SandboxConfiguration | None,
                 host_functions: Mapping[str, Any]) -> None:
        # An error here is kept for ready() to raise: raised from __init__, Ray would
        # hand the caller an ActorDiedError without the hlsandbox exception.
        self._error: BaseException | None = None
        self._pool: SandboxPool | None = None
        self._snapshot: Snapshot | None = None
        try:
            self._snapshot = snapshot.load() if isinstance(snapshot, SnapshotImage) else Snapshot.load(snapshot)
            self._pool = SandboxPool(self._snapshot, size=size, config=config, host_functions=host_functions)
        except Exception as e:
            self._error = e
            self.close()

    def ready(self) -> str:
        """The actor's node id, or the error that made its pool."""
        if self._error is not None:
            raise self._error
        return self.node_id()

    @property
    def _live_pool(self) -> SandboxPool:
        if self._pool is None:  # ready() raised the error that left the actor without one
            raise self._error or HyperlightError("the actor's pool is closed")
        return self._pool

    def call(self, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        return self._live_pool.call(name, *args, timeout=timeout)

    def call_many(self, name: str, arg_tuples: list[tuple[Any, ...]],
                  timeout: float | None) -> list[tuple[bool, Any]]:
        """One call per tuple, in order: (True, result) or (False, the hlsandbox error)."""
        out: list[tuple[bool, Any]] = []
        for args in arg_tuples:
            try:
                out.append((True, self._live_pool.call(name, *args, timeout=timeout)))
            except HyperlightError as e:
                out.append((False, e))
        return out

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def stats(self) -> PoolStats:
        return self._live_pool.stats()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._snapshot is not None:
            self._snapshot.close()


class RayPool:
    """`actors` Ray actors, each with a SandboxPool of `sandboxes_per_actor` sandboxes made
    from one snapshot of `source` (a guest path, GuestBinary, Snapshot or snapshot file).

    Needs a connected Ray (ray.init()). `config` and `host_functions` are as for
    SandboxPool; host functions run on the nodes, so they must pickle (cloudpickle).

    `retries`: 0 (default) makes a call whose node dies fail with Ray's ActorDiedError;
    n > 0 lets Ray restart a dead actor (up to n times) and run its lost calls again
    (up to n times each). A restarted actor needs a node with room for it.

    `actor_options` are passed to Ray's .options() for every actor (default
    num_cpus=sandboxes_per_actor and the SPREAD scheduling strategy, one actor per node
    while there is room). `shared_path=True` with a snapshot file as `source` makes every
    actor read that path (a file system all nodes share) instead of receiving the
    snapshot through the object store. `wait` bounds how long call() and map() wait for a
    result (ray.exceptions.GetTimeoutError, a TimeoutError, past it); `timeout` of a call
    limits the guest call itself, as for MultiUseSandbox.call()."""

    def __init__(self, source: str | os.PathLike[str] | GuestBinary | Snapshot, *, actors: int,
                 sandboxes_per_actor: int = 1, config: SandboxConfiguration | None = None,
                 host_functions: Mapping[str, Any] | None = None, retries: int = 0,
                 actor_options: Mapping[str, Any] | None = None, shared_path: bool = False,
                 wait: float = DEFAULT_WAIT) -> None:
        for what, n, low in (("actors", actors, 1), ("sandboxes_per_actor", sandboxes_per_actor, 1),
                             ("retries", retries, 0)):
            if isinstance(n, bool) or not isinstance(n, int) or n < low:
                raise ValueError(f"{what} must be an int >= {low}, got {n!r}")
        if not ray.is_initialized():
            raise RuntimeError("RayPool needs a connected Ray: call ray.init() first")
        functions = dict(host_functions or {})
        if shared_path:
            if not (isinstance(source, (str, os.PathLike)) and is_snapshot_file(source)):
                raise ValueError("shared_path=True needs a snapshot file as source")
            shipped: Any = os.path.abspath(os.fspath(source))
            self._image_ref = None
        else:
            snap, owned = _snapshot_of(source, config, functions, None)
            try:
                image = SnapshotImage.of(snap)
            finally:
                if owned:
                    snap.close()
            # The driver owns the object; Ray passes actors the value (restarted ones too).
            self._image_ref = shipped = ray.put(image)
        options = {"num_cpus": sandboxes_per_actor, "scheduling_strategy": "SPREAD"}
        options.update(actor_options or {})
        options.update(max_concurrency=sandboxes_per_actor, max_restarts=retries, max_task_retries=retries)
        remote = ray.remote(_PoolActor).options(**options)
        # Ray's actor handles: their remote methods are made at run time, out of a type checker's sight.
        self._actors: list[Any] = [remote.remote(shipped, sandboxes_per_actor, config, functions)
                                   for _ in range(actors)]
        self._wait = wait
        self._dead: set[int] = set()
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        try:  # the constructors' errors (a bad snapshot, no KVM on a node) surface here
            for i, a in enumerate(self._actors):
                self._get(i, a.ready.remote(), wait)
        except BaseException:
            self.close()
            raise

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles (each has call, node_id and stats remote methods)."""
        return list(self._actors)

    def _pick(self) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("the RayPool is closed")
            live = [i for i in range(len(self._actors)) if i not in self._dead] or list(range(len(self._actors)))
            return live[next(self._next) % len(live)]

    def _submit(self, name: str, args: tuple[Any, ...], timeout: float | None) -> tuple[int, ray.ObjectRef[Any]]:
        i = self._pick()
        return i, self._actors[i].call.remote(name, args, timeout)

    def submit(self, name: str, *args: Any, timeout: float | None = None) -> ray.ObjectRef[Any]:
        """Guest function `name` with `args` on the next actor (round robin): its ObjectRef.
        ray.get() of it raises guest errors as Ray's wrapper of the hlsandbox exception
        (an instance of its class; the exception itself is its `.cause`)."""
        return self._submit(name, args, timeout)[1]

    def call(self, name: str, *args: Any, timeout: float | None = None, wait: float | None = None) -> Any:
        """submit() and its result; a guest error raises the hlsandbox exception itself.
        `wait` (default the pool's) bounds the wait for the result."""
        i, ref = self._submit(name, args, timeout)
        return self._get(i, ref, wait)

    def map(self, name: str, *iterables: Iterable[Any], timeout: float | None = None,
            wait: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """Like Executor.map: every call submitted at once, spread over the actors; results
        in order, a call's exception raised when its result is reached. `wait` bounds the
        wait for each result (each chunk's). `chunksize` > 1 sends that many calls in one
        Ray task, which spreads Ray's per-task cost (about a millisecond) over them."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        calls = zip(*iterables, strict=False)  # stops at the shortest, as map() does
        if chunksize == 1:
            submitted = [self._submit(name, args, timeout) for args in calls]

            def results() -> Iterator[Any]:
                for i, ref in submitted:
                    yield self._get(i, ref, wait)
            return results()
        chunks = []
        while True:
            chunk = list(itertools.islice(calls, chunksize))
            if not chunk:
                break
            i = self._pick()
            chunks.append((i, self._actors[i].call_many.remote(name, chunk, timeout)))

        def chunked_results() -> Iterator[Any]:
            for i, ref in chunks:
                for ok, value in self._get(i, ref, wait):
                    if not ok:
                        raise value
                    yield value
        return chunked_results()

    def _get(self, i: int, ref: ray.ObjectRef[Any], wait: float | None) -> Any:
        try:
            return ray.get(ref, timeout=self._wait if wait is None else wait)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, HyperlightError):
                raise e.cause from None
            raise
        except ray.exceptions.RayActorError:
            with self._lock:  # dead for good (no retries left): later calls go elsewhere
                self._dead.add(i)
            raise

    def node_ids(self) -> list[str]:
        """The Ray node id of every actor, in order."""
        return ray.get([a.node_id.remote() for a in self._actors], timeout=self._wait)

    def stats(self) -> list[PoolStats]:
        """Each actor's SandboxPool.stats()."""
        return ray.get([a.stats.remote() for a in self._actors], timeout=self._wait)

    def close(self) -> None:
        """Kills the actors (their sandboxes close with their processes) and frees the
        shipped snapshot. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            actors, self._actors = self._actors, []
        for a in actors:
            ray.kill(a, no_restart=True)
        self._image_ref = None

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RayPool {'closed' if self._closed else f'{len(self._actors)} actors'}>"
