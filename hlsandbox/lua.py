"""Run untrusted Lua scripts: `LuaSandbox` over the bundled `lua` guest (Lua 5.4 in a micro-VM).

    import hlsandbox as hl
    with hl.LuaSandbox(tools={"add": lambda a, b: a + b}) as lua:
        r = lua.run("print('hi') return tools.add(1, 2), {x = 1}")
        r.values   # [3, {'x': 1}]
        r.stdout   # 'hi\\n'

What a script can and cannot do, the conversions and the limits: docs/lua.md.
The guest is csrc/lua/luaguest.c; the value format both sides speak is
described at its top and implemented here by `_encode` / `_Decoder`.
"""
from __future__ import annotations

import dataclasses
import math
import queue
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import guests
from .errors import HyperlightError, LuaError, LuaSyntaxError
from .func.types import ValueType
from .sandbox.config import SandboxConfiguration
from .sandbox.multi_use import MultiUseSandbox
from .sandbox.uninitialized import UninitializedSandbox

__all__ = ["LuaError", "LuaResult", "LuaSandbox", "LuaSandboxPool", "LuaSyntaxError"]

# Run's result status (luaguest.c).
_OK, _RUNTIME, _SYNTAX, _MEMORY, _CONVERSION = range(5)
_KINDS = {_RUNTIME: "runtime", _SYNTAX: "syntax", _MEMORY: "memory", _CONVERSION: "conversion"}
# Value tags (luaguest.c).
_NIL, _FALSE, _TRUE, _INT, _FLOAT, _STR, _LIST, _DICT = range(8)
_MAX_DEPTH = 100
# Room in the output buffer for the RETURN record around Run's bytes (header, tag,
# length, back-pointer).
_RECORD_OVERHEAD = 64

DEFAULT_MAX_OUTPUT = 1 << 20


@dataclasses.dataclass(slots=True)
class LuaResult:
    """What a run returned: `values` (the chunk's return values, converted), `stdout`
    (what `print` wrote) and `elapsed` (seconds, the whole run() as the host saw it)."""

    values: list[Any]
    stdout: str
    elapsed: float

    @property
    def value(self) -> Any:
        """The first return value, or None when the chunk returned nothing."""
        return self.values[0] if self.values else None


# -- the value format ------------------------------------------------------------------------

_Q = struct.Struct("<q")
_D = struct.Struct("<d")
_I = struct.Struct("<I")


def _encode(v: Any, out: bytearray, depth: int = 0) -> None:
    """Appends Python value v in the guest's format (None, bool, int, float, str,
    bytes, list/tuple, dict)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels (a cycle?)")
    if v is None:
        out.append(_NIL)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif isinstance(v, int):
        if not -(1 << 63) <= v < (1 << 63):
            raise ValueError(f"integer {v} does not fit Lua's 64-bit integers")
        out.append(_INT)
        out += _Q.pack(v)
    elif isinstance(v, float):
        out.append(_FLOAT)
        out += _D.pack(v)
    elif isinstance(v, (str, bytes, bytearray, memoryview)):
        b = v.encode() if isinstance(v, str) else bytes(v)
        out.append(_STR)
        out += _I.pack(len(b))
        out += b
    elif isinstance(v, (list, tuple)):
        out.append(_LIST)
        out += _I.pack(len(v))
        for item in v:
            _encode(item, out, depth + 1)
    elif isinstance(v, Mapping):
        out.append(_DICT)
        out += _I.pack(len(v))
        for k, item in v.items():
            if k is None or (isinstance(k, float) and math.isnan(k)):
                raise ValueError(f"{k!r} cannot be a Lua table key")
            _encode(k, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"cannot convert a {type(v).__name__} to a Lua value")


class _Decoder:
    """Reads values the guest wrote; the guest is untrusted: every length is checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _need(self, n: int) -> int:
        p = self.pos
        if n > len(self.data) - p:
            raise HyperlightError("malformed value from the lua guest (truncated)")
        self.pos = p + n
        return p

    def u8(self) -> int:
        return self.data[self._need(1)]

    def u32(self) -> int:
        value: int = _I.unpack_from(self.data, self._need(4))[0]
        return value

    def raw(self) -> bytes:
        n = self.u32()
        p = self._need(n)
        return self.data[p:p + n]

    def text(self) -> str:
        return self.raw().decode("utf-8", "replace")

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH + 1:
            raise HyperlightError("malformed value from the lua guest (too deep)")
        tag = self.u8()
        if tag == _NIL:
            return None
        if tag == _FALSE:
            return False
        if tag == _TRUE:
            return True
        if tag == _INT:
            return _Q.unpack_from(self.data, self._need(8))[0]
        if tag == _FLOAT:
            return _D.unpack_from(self.data, self._need(8))[0]
        if tag == _STR:
            b = self.raw()
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return b  # a Lua string that is not text stays bytes
        if tag == _LIST:
            n = self.u32()
            if n > len(self.data) - self.pos:
                raise HyperlightError("malformed value from the lua guest (bad count)")
            return [self.value(depth + 1) for _ in range(n)]
        if tag == _DICT:
            n = self.u32()
            if n > len(self.data) - self.pos:
                raise HyperlightError("malformed value from the lua guest (bad count)")
            d = {}
            for _ in range(n):
                k = self.value(depth + 1)
                if isinstance(k, (dict, list)):  # unhashable in Python: keep the table key's text
                    k = repr(k)
                d[k] = self.value(depth + 1)
            return d
        raise HyperlightError(f"malformed value from the lua guest (tag {tag})")


# -- the sandbox ------------------------------------------------------------------------------

class LuaSandbox:
    """A Lua 5.4 interpreter in its own micro-VM.

    `tools` maps names to Python callables that scripts call as `tools.name(...)`
    (arguments and results converted like run()'s values; an exception in a tool is a
    Lua error the script may catch with pcall). `heap_size` is the script's memory
    (out of memory is a LuaError "not enough memory"); `config` replaces the whole
    SandboxConfiguration (then heap_size is ignored; keep stack_size at 1 MiB or more, which
    Lua's limit of about 200 nested C calls assumes). With `fresh=True` every run()
    starts from the interpreter's state after start-up; with `fresh=False` globals
    persist between runs until reset(). A time limit, kill() or a fault also reset
    the interpreter. `max_output` bounds what print() may write in one run."""

    def __init__(self, *, tools: Mapping[str, Callable[..., Any]] | None = None,
                 heap_size: int | str = "16Mi", config: SandboxConfiguration | None = None,
                 fresh: bool = True, max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self._tools = dict(tools or {})
        for name, fn in self._tools.items():
            if not isinstance(name, str) or not name.isidentifier() or not callable(fn):
                raise ValueError(f"tools: {name!r} must be an identifier mapped to a callable")
        if config is None:
            config = SandboxConfiguration(heap_size=heap_size, stack_size="1Mi", input_data_size="64Ki",
                                          output_data_size="64Ki")
        self.config = config
        self.fresh = bool(fresh)
        self.max_output = max_output
        self._out: list[bytes] = []
        self._out_size = 0
        self._tool_exception: BaseException | None = None
        self._run_t0 = 0.0
        self._lock = threading.Lock()
        self._running_in: int | None = None  # the thread inside run(), to refuse re-entry from a tool
        u = UninitializedSandbox(guests.path("lua"), config)
        u.register("LuaToolNames", lambda: "\n".join(self._tools), params=(), returns=str)
        u.register("LuaBufferSize", lambda: config.output_data_size, params=(), returns=ValueType.U32)
        u.register("LuaTool", self._call_tool, params=(str, bytes), returns=bytes)
        u.register("LuaOut", self._write, params=(bytes,), returns=None)
        u.register("LuaClock", lambda: time.perf_counter() - self._run_t0, params=(), returns=ValueType.F64)
        self._sb: MultiUseSandbox = u.evolve()
        self._interrupt = self._sb.interrupt_handle()
        self._result_limit = config.output_data_size - _RECORD_OVERHEAD
        self._code_limit = config.input_data_size - _RECORD_OVERHEAD

    # host functions the guest calls

    def _call_tool(self, name: str, args: bytes) -> bytes:
        fn = self._tools.get(name)
        if fn is None:
            raise LookupError(f"no tool named {name!r}")
        values = _Decoder(args).value()
        try:
            result = fn(*values)
        except Exception as e:
            self._tool_exception = e
            raise RuntimeError(f"tool {name!r} raised {type(e).__name__}: {e}") from e
        out = bytearray()
        try:
            _encode(result, out)
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"tool {name!r} returned a value Lua cannot hold: {e}") from e
        return bytes(out)

    def _write(self, data: bytes) -> None:
        self._out_size += len(data)
        if self._out_size > self.max_output:
            raise RuntimeError(f"print: the output limit of {self.max_output} bytes is exceeded")
        self._out.append(data)

    # public API

    def run(self, code: str | bytes, *, timeout: float | None = None) -> LuaResult:
        """Runs a Lua chunk and returns its values and output.

        Raises LuaError (LuaSyntaxError for code that does not compile) when the
        script fails, ExecutionTimeout after `timeout` seconds, ExecutionCanceled on
        kill(). After any of them the sandbox is ready for the next run."""
        b = code.encode() if isinstance(code, str) else bytes(code)
        if len(b) > self._code_limit:
            raise ValueError(f"the script has {len(b)} bytes; this sandbox takes up to {self._code_limit} "
                             "(raise SandboxConfiguration.input_data_size)")
        self._refuse_reentry("run")
        with self._lock:  # one run at a time per interpreter
            self._running_in = threading.get_ident()
            try:
                return self._run_locked(b, timeout)
            finally:
                self._running_in = None

    def _refuse_reentry(self, what: str) -> None:
        # A tool runs on the thread that holds the lock: waiting for it would hang.
        if self._running_in == threading.get_ident():
            raise HyperlightError(f"{what}() called during a run of the same LuaSandbox (from a tool?)")

    def _run_locked(self, b: bytes, timeout: float | None) -> LuaResult:
        self._out = []
        self._out_size = 0
        self._tool_exception = None
        sb = self._sb
        t0 = self._run_t0 = time.perf_counter()
        try:
            raw = sb.call("Run", b, random.getrandbits(64), time.time(), self._result_limit,
                          timeout=timeout, restore=self.fresh)
        except BaseException:
            # A timeout, kill, fault or Ctrl-C leaves the guest mid-run: back to the
            # interpreter after start-up, so the next run works.
            if sb.poisoned:
                sb.restore()
            raise
        elapsed = time.perf_counter() - t0
        return self._result(raw, elapsed)

    def _result(self, raw: bytes, elapsed: float) -> LuaResult:
        if len(raw) < 5:
            raise HyperlightError("malformed result from the lua guest (truncated)")
        status = raw[0]
        n_out = _I.unpack_from(raw, 1)[0]
        if n_out > len(raw) - 5:
            raise HyperlightError("malformed result from the lua guest (bad output length)")
        d = _Decoder(raw, 5 + n_out)
        tail = raw[5:5 + n_out]
        if self._out:  # what print() flushed through LuaOut during the run comes first
            tail = b"".join(self._out) + tail
        stdout = tail.decode("utf-8", "replace") if tail else ""
        if status == _OK:
            n = d.u32()
            if n > len(raw):
                raise HyperlightError("malformed result from the lua guest (bad count)")
            return LuaResult([d.value() for _ in range(n)], stdout, elapsed)
        if status not in _KINDS:
            raise HyperlightError(f"malformed result from the lua guest (status {status})")
        message, tb = d.text(), d.text()
        cls = LuaSyntaxError if status == _SYNTAX else LuaError
        err = cls(message, tb, _KINDS[status], stdout)
        if self._tool_exception is not None:
            raise err from self._tool_exception
        raise err

    def reset(self) -> None:
        """Puts the interpreter back to its state after start-up (forgets globals)."""
        self._refuse_reentry("reset")
        with self._lock:
            self._sb.restore()

    def kill(self) -> None:
        """Stops the current run (from any thread); it raises ExecutionCanceled."""
        self._interrupt.kill()

    def memory_used(self) -> int:
        """Bytes the interpreter holds after a full garbage collection."""
        self._refuse_reentry("memory_used")
        with self._lock:
            used: int = self._sb.call("Collect", restore=False)
            return used

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """The tools scripts can call (a copy)."""
        return dict(self._tools)

    def close(self) -> None:
        self._sb.close()

    def __enter__(self) -> LuaSandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LuaSandbox fresh={self.fresh} heap={self.config.heap_size} tools={sorted(self._tools)}>"


class LuaSandboxPool:
    """A fixed set of LuaSandboxes serving scripts from many threads at once.

    run() borrows an idle interpreter (waiting for one if all are busy), submit()
    runs on the pool's threads and returns a concurrent.futures.Future. Every
    interpreter is fresh=True, so requests never see each other's globals. The
    keyword arguments go to each LuaSandbox."""

    def __init__(self, size: int = 4, **sandbox_kwargs: Any) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if sandbox_kwargs.get("fresh", True) is not True:
            raise ValueError("a LuaSandboxPool serves fresh=True sandboxes only")
        self._idle: queue.SimpleQueue[LuaSandbox] = queue.SimpleQueue()
        self._all: list[LuaSandbox] = []
        self._closed = False
        try:
            for _ in range(size):
                sb = LuaSandbox(**sandbox_kwargs)
                self._all.append(sb)
                self._idle.put(sb)
        except BaseException:
            self.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="hlsandbox-lua")

    @property
    def size(self) -> int:
        return len(self._all)

    def run(self, code: str | bytes, *, timeout: float | None = None) -> LuaResult:
        """Runs `code` on an idle interpreter (see LuaSandbox.run)."""
        if self._closed:
            raise HyperlightError("the pool is closed")
        sb = self._idle.get()
        try:
            return sb.run(code, timeout=timeout)
        finally:
            self._idle.put(sb)

    def submit(self, code: str | bytes, *, timeout: float | None = None) -> Future[LuaResult]:
        """Runs `code` on the pool's threads; the Future holds the LuaResult or the error."""
        if self._closed:
            raise HyperlightError("the pool is closed")
        return self._executor.submit(self.run, code, timeout=timeout)

    def close(self) -> None:
        """Waits for submitted runs, then closes every interpreter."""
        self._closed = True
        ex = getattr(self, "_executor", None)
        if ex is not None:
            ex.shutdown(wait=True)
        for sb in self._all:
            sb.close()

    def __enter__(self) -> LuaSandboxPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
