"""Host functions: Python callables the guest calls by name with typed arguments."""
from __future__ import annotations

import inspect
import struct
import time
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..abi import RawBuiltin
from .types import Signature, ValueType, to_value_type


class HostFunction:
    """A registered host function and its signature."""

    __slots__ = ("fn", "signature", "param_tags", "return_tag")

    def __init__(self, fn: Callable[..., Any], signature: Signature) -> None:
        self.fn = fn
        self.signature = signature
        self.param_tags = tuple(map(int, signature.params))
        self.return_tag = int(signature.returns)


def _from_annotation(a: Any, what: str) -> ValueType:
    if typing.get_origin(a) is typing.Annotated:
        for meta in typing.get_args(a)[1:]:
            if isinstance(meta, ValueType):
                return meta
        a = typing.get_args(a)[0]
    try:
        return to_value_type(a)
    except TypeError:
        raise TypeError(f"{what}: cannot map annotation {a!r} to a guest type; "
                        "use hl.i32 etc., bool, str, bytes, int (i64), float (f64) or None") from None


def signature_of(name: str, fn: Callable[..., Any], params: Iterable[Any] | None,
                 returns: Any) -> Signature:
    """The signature from explicit params/returns, or from fn's type hints."""
    if params is not None:
        ptypes = tuple(map(to_value_type, params))
        rtype = to_value_type(returns)
    else:
        try:
            sig = inspect.signature(fn)
            hints = typing.get_type_hints(fn, include_extras=True)
        except (TypeError, ValueError, NameError) as e:
            raise TypeError(f"host function {name}: cannot read its signature ({e}); "
                            "pass params= and returns=") from None
        hinted: list[ValueType] = []
        for p in sig.parameters.values():
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise TypeError(f"host function {name}: parameter {p.name} must be positional")
            if p.name not in hints:
                raise TypeError(f"host function {name}: parameter {p.name} has no type hint; "
                                "annotate it or pass params=")
            hinted.append(_from_annotation(hints[p.name], f"host function {name}, parameter {p.name}"))
        ptypes = tuple(hinted)
        if returns is not None:
            rtype = to_value_type(returns)
        elif "return" in hints:
            rtype = _from_annotation(hints["return"], f"host function {name}, return")
        else:
            raise TypeError(f"host function {name}: no return annotation; annotate it or pass returns=")
    if ValueType.VOID in ptypes:
        raise TypeError(f"host function {name}: a parameter cannot be void")
    if len(ptypes) > 255:
        raise TypeError(f"host function {name}: too many parameters")
    return Signature(name, ptypes, rtype)


# Built-in raw host functions every sandbox has (docs/abi.md, "Time"); a raw host
# function registered with the same id replaces the built-in.
RAW_FN_CLOCK = int(RawBuiltin.CLOCK)
_CLOCK_REPLY = struct.Struct("<3q")


def _host_clock(_request: memoryview) -> bytes:
    """The guest C library's clocks: realtime, monotonic and process-CPU nanoseconds."""
    return _CLOCK_REPLY.pack(time.time_ns(), time.monotonic_ns(), time.process_time_ns())


BUILTIN_RAW = {RAW_FN_CLOCK: _host_clock}


class HostFunctionRegistry:
    """Host functions by name."""

    def __init__(self) -> None:
        self._functions: dict[str, HostFunction] = {}
        self._raw: dict[int, Callable[[memoryview], Any]] = {}

    def register_raw(self, fn_id: int, fn: Callable[[memoryview], Any]) -> None:
        """A raw host function: called with the request bytes (a read-only view), returns bytes."""
        if isinstance(fn_id, bool) or not isinstance(fn_id, int) or not 0 <= fn_id <= 0xFFFFFFFF:
            raise ValueError(f"a raw host function id is a u32, got {fn_id!r}")
        if not callable(fn):
            raise TypeError(f"raw host function {fn_id}: {fn!r} is not callable")
        if fn_id in self._raw:
            raise ValueError(f"raw host function {fn_id} is already registered")
        self._raw[fn_id] = fn

    def get_raw(self, fn_id: int) -> Callable[[memoryview], Any] | None:
        fn = self._raw.get(fn_id)
        return fn if fn is not None else BUILTIN_RAW.get(fn_id)

    def raw_ids(self) -> list[int]:
        return sorted(self._raw)

    def register(self, name: str, fn: Callable[..., Any], params: Iterable[Any] | None = None,
                 returns: Any = None) -> Signature:
        if not isinstance(name, str) or not name:
            raise TypeError("a host function name must be a non-empty string")
        if len(name.encode()) > 0xFFFF:
            raise ValueError("host function name too long")
        if not callable(fn):
            raise TypeError(f"host function {name}: {fn!r} is not callable")
        if name in self._functions:
            raise ValueError(f"host function {name} is already registered")
        sig = signature_of(name, fn, params, returns)
        self._functions[name] = HostFunction(fn, sig)
        return sig

    def get(self, name: str) -> HostFunction | None:
        return self._functions.get(name)

    def signatures(self) -> list[Signature]:
        return [f.signature for f in self._functions.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._functions
