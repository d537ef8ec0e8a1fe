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


def to_value_type(t: Any) -> ValueType:
    """Accepts a ValueType, a tag, or the Python types bool/str/bytes/int/float/None."""
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
        raise TypeError(f"not a guest value type: {t!r}") from None


_BY_NAME = {name: vt for vt, name in _NAMES.items()}


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
