"""Guest value types: the tags of docs/abi.md and the names the API exports."""
from __future__ import annotations

import enum
from typing import Any

from ..abi import ValueTag


class ValueType(enum.IntEnum):
    """A type a guest or host function can take or return; values are the wire tags."""

    VOID = int(ValueTag.VOID)
    I32 = int(ValueTag.I32)
    U32 = int(ValueTag.U32)
    I64 = int(ValueTag.I64)
    U64 = int(ValueTag.U64)
    F32 = int(ValueTag.F32)
    F64 = int(ValueTag.F64)
    BOOL = int(ValueTag.BOOL)
    STR = int(ValueTag.STR)
    BYTES = int(ValueTag.BYTES)

    def __str__(self) -> str:
        return _NAMES[self]


_NAMES = {
    ValueType.VOID: "void", ValueType.I32: "i32", ValueType.U32: "u32", ValueType.I64: "i64",
    ValueType.U64: "u64", ValueType.F32: "f32", ValueType.F64: "f64", ValueType.BOOL: "bool",
    ValueType.STR: "str", ValueType.BYTES: "bytes",
}

i32 = ValueType.I32
u32 = ValueType.U32
i64 = ValueType.I64
u64 = ValueType.U64
f32 = ValueType.F32
f64 = ValueType.F64

_ALIASES: dict[Any, ValueType] = {
    None: ValueType.VOID, type(None): ValueType.VOID, bool: ValueType.BOOL, str: ValueType.STR,
    bytes: ValueType.BYTES, int: ValueType.I64, float: ValueType.F64,
}


_NUMPY_TYPES = {"int32": ValueType.I32, "uint32": ValueType.U32, "int64": ValueType.I64,
                "uint64": ValueType.U64, "float32": ValueType.F32, "float64": ValueType.F64,
                "bool_": ValueType.BOOL, "bool": ValueType.BOOL}


def to_value_type(t: Any) -> ValueType:
    """Accepts a ValueType, a tag, the Python types bool/str/bytes/int/float/None, or a numpy
    scalar type of the same width (numpy.int32, numpy.float64 ...)."""
    if isinstance(t, ValueType):
        return t
    if isinstance(t, int) and not isinstance(t, bool):
        try:
            return ValueType(t)
        except ValueError:
            raise TypeError(f"not a guest value type: {t!r}") from None
    if isinstance(t, str) and t in _BY_NAME:
        return _BY_NAME[t]
    try:
        return _ALIASES[t]
    except (KeyError, TypeError):
        pass
    if isinstance(t, type) and t.__module__ == "numpy" and t.__name__ in _NUMPY_TYPES:
        return _NUMPY_TYPES[t.__name__]
    raise TypeError(f"not a guest value type: {t!r}")


_BY_NAME = {name: vt for vt, name in _NAMES.items()}


# A guest's function table announces a fallback dispatcher (docs/abi.md) with one entry
# of this name, void and without parameters.
FALLBACK = ""


class Signature:
    """A function's parameter and return types."""

    __slots__ = ("name", "params", "returns")

    def __init__(self, name: str, params: tuple[ValueType, ...], returns: ValueType) -> None:
        self.name = name
        self.params = tuple(params)
        self.returns = returns

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(map(str, self.params))}) -> {self.returns}"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Signature) and self.name == other.name
                and self.params == other.params and self.returns == other.returns)

    def __hash__(self) -> int:
        return hash((self.name, self.params, self.returns))


def is_fallback_entry(name: str, params: tuple[int, ...], returns: int) -> bool:
    """Whether a function-table entry is the fallback's: the empty name, void, no parameters."""
    return name == FALLBACK and not params and returns == ValueType.VOID
