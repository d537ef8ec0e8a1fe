"""The guest's functions as the call path needs them: name bytes and value tags, decided
once per function (and per call of a name only the guest's fallback dispatcher knows)."""
from __future__ import annotations

import math
from typing import Any

from ..func.types import Signature, ValueType
from .watchdog import WATCHDOG


class GuestFunction:
    """One function of the guest's table, ready for CallPath.call()."""

    __slots__ = ("signature", "name_bytes", "param_tags", "return_tag")

    def __init__(self, name: str, params: tuple[int, ...], ret: int) -> None:
        self.signature = Signature(name, tuple(ValueType(p) for p in params), ValueType(ret))
        self.name_bytes = name.encode()
        self.param_tags = tuple(params)
        self.return_tag = ret


def fallback_call(name: str, args: tuple[Any, ...]) -> GuestFunction:
    """A call of a name the guest did not register, for its fallback: argument types
    from the Python values, any result type."""
    tags = []
    for a in args:
        if isinstance(a, bool):
            tags.append(ValueType.BOOL)
        elif isinstance(a, int):
            tags.append(ValueType.I32 if -2**31 <= a < 2**31 else ValueType.I64 if a < 2**63 else ValueType.U64)
        elif isinstance(a, float):
            tags.append(ValueType.F64)
        elif isinstance(a, str):
            tags.append(ValueType.STR)
        elif isinstance(a, (bytes, bytearray, memoryview)) or _is_buffer(a):
            tags.append(ValueType.BYTES)
        else:
            raise TypeError(f"{name}: cannot pass {type(a).__name__} to a guest's fallback dispatcher")
    fn = GuestFunction(name, tuple(int(t) for t in tags), int(ValueType.VOID))
    fn.return_tag = -1  # whatever the fallback returns
    return fn


def _is_buffer(v: Any) -> bool:
    try:
        memoryview(v).release()
    except TypeError:
        return False
    return True


def check_out(fn: GuestFunction, out: Any) -> None:
    """call(out=...) needs a bytes result and a writable contiguous buffer: checked
    before the guest runs."""
    if fn.return_tag not in (int(ValueType.BYTES), -1):
        raise TypeError(f"out= takes a bytes result; {fn.signature.name} returns {ValueType(fn.return_tag)}")
    try:
        view = memoryview(out)
    except TypeError:
        raise TypeError(f"out must be a writable buffer, not {type(out).__name__}") from None
    with view:
        if view.readonly or not view.c_contiguous:
            raise TypeError("out must be a writable C-contiguous buffer")


def wait_seconds(wait: float | bool) -> float:
    """call()'s `wait` as claim()'s seconds: True no limit (-1), False 0."""
    if wait is True:
        return -1.0
    if wait is False:
        return 0.0
    if not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
        raise ValueError(f"wait must be seconds >= 0, True or False, got {wait!r}")
    return -1.0 if math.isinf(wait) else float(wait)



def check_timeout(timeout: Any) -> float:
    """call()'s `timeout`: positive seconds (inf: no limit), within what the watchdog can wait."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    if timeout > WATCHDOG.MAX_SECONDS and timeout != math.inf:
        raise ValueError(f"timeout={timeout!r} is beyond the longest limit the platform can wait "
                         f"({WATCHDOG.MAX_SECONDS:.3g} s); use None or inf for no limit")
    return float(timeout)
