"""HostFunctionRegistry and signature inference (no KVM)."""
from __future__ import annotations

import functools
import typing
from typing import Annotated, Optional

import pytest

import hlsandbox as hl
from hlsandbox.func.host_functions import HostFunction, HostFunctionRegistry, signature_of
from hlsandbox.func.types import ValueType, to_value_type

V = ValueType


@pytest.fixture
def reg():
    return HostFunctionRegistry()


# -- explicit params/returns ---------------------------------------------------------------------

def test_explicit(reg):
    sig = reg.register("HostAdd", lambda a, b: a + b, params=(hl.i32, hl.i32), returns=hl.i32)
    assert sig == hl.Signature("HostAdd", (V.I32, V.I32), V.I32)
    hf = reg.get("HostAdd")
    assert isinstance(hf, HostFunction)
    assert hf.param_tags == (1, 1) and hf.return_tag == 1
    assert all(type(t) is int for t in hf.param_tags)
    assert hf.fn(2, 3) == 5
    assert "HostAdd" in reg and "Other" not in reg and 5 not in reg
    assert reg.get("Other") is None
    assert reg.signatures() == [sig]


@pytest.mark.parametrize("params, returns, ptypes, rtype", [
    ((), None, (), V.VOID),
    ([], type(None), (), V.VOID),
    ((int, float, str, bytes, bool), int, (V.I64, V.F64, V.STR, V.BYTES, V.BOOL), V.I64),
    (("i32", "u32", "u64", "f32"), "str", (V.I32, V.U32, V.U64, V.F32), V.STR),
    ((1, 2, 9), 0, (V.I32, V.U32, V.BYTES), V.VOID),
    (iter([hl.u64]), hl.f64, (V.U64,), V.F64),
])
def test_explicit_type_spellings(reg, params, returns, ptypes, rtype):
    sig = reg.register("F", lambda *a: None, params=params, returns=returns)
    assert (sig.params, sig.returns) == (ptypes, rtype)


def test_explicit_overrides_hints(reg):
    def f(a: str) -> str:
        return a

    sig = reg.register("F", f, params=(hl.i32,), returns=hl.u32)
    assert (sig.params, sig.returns) == ((V.I32,), V.U32)


@pytest.mark.parametrize("params, returns", [((list,), None), ((hl.i32,), dict), (("int32",), None),
                                             ((hl.i32, object()), None)])
def test_explicit_unsupported_types(reg, params, returns):
    with pytest.raises(TypeError, match="^not a guest value type: "):
        reg.register("F", lambda *a: None, params=params, returns=returns)
    assert "F" not in reg


@pytest.mark.parametrize("params", [(None,), (hl.i32, type(None)), ("void",), (0,)])
def test_explicit_void_param(reg, params):
    with pytest.raises(TypeError, match="^host function F: a parameter cannot be void$"):
        reg.register("F", lambda *a: None, params=params, returns=None)


def test_too_many_params(reg):
    with pytest.raises(TypeError, match="^host function F: too many parameters$"):
        reg.register("F", lambda *a: None, params=(hl.i32,) * 256, returns=None)
    assert reg.register("G", lambda *a: None, params=(hl.i32,) * 255, returns=None).params == (V.I32,) * 255


# -- from type hints -----------------------------------------------------------------------------

def test_hints_value_types(reg):
    def f(a: hl.i32, b: hl.i32) -> hl.i32:
        return a + b

    assert reg.register("F", f) == hl.Signature("F", (V.I32, V.I32), V.I32)


def test_hints_python_types(reg):
    def f(a: int, b: float, c: str, d: bytes, e: bool) -> None:
        pass

    sig = reg.register("F", f)
    assert (sig.params, sig.returns) == ((V.I64, V.F64, V.STR, V.BYTES, V.BOOL), V.VOID)


@pytest.mark.parametrize("ret, expected", [(int, V.I64), (float, V.F64), (str, V.STR), (bytes, V.BYTES),
                                           (bool, V.BOOL), (None, V.VOID), (hl.u64, V.U64), (hl.f32, V.F32)])
def test_hint_return_types(reg, ret, expected):
    def f() -> ret:  # noqa: F821 (resolved from the enclosing scope by the evaluated annotation)
        pass

    f.__annotations__ = {"return": ret}
    assert reg.register("F", f).returns == expected


def test_hints_annotated(reg):
    def f(a: Annotated[int, hl.i32], b: Annotated[int, "doc", hl.u32], c: Annotated[int, "no type"])\
            -> Annotated[int, hl.u64]:
        return a

    sig = reg.register("F", f)
    assert (sig.params, sig.returns) == ((V.I32, V.U32, V.I64), V.U64)


def test_hints_with_explicit_returns(reg):
    def f(a: hl.i32):
        return a

    assert reg.register("F", f, returns=hl.i64) == hl.Signature("F", (V.I32,), V.I64)


def test_hints_defaults_are_fine(reg):
    def f(a: int, b: int = 5) -> int:
        return a + b

    assert reg.register("F", f).params == (V.I64, V.I64)


def test_hints_positional_only(reg):
    def f(a: int, /, b: str) -> str:
        return b

    assert reg.register("F", f).params == (V.I64, V.STR)


def test_hints_bound_method(reg):
    class C:
        def m(self, a: hl.i32) -> hl.i32:
            return a

    assert reg.register("M", C().m) == hl.Signature("M", (V.I32,), V.I32)


def test_hints_wrapped_function(reg):
    def f(a: str) -> str:
        return a

    @functools.wraps(f)
    def g(*args):
        return f(*args)

    assert reg.register("G", g) == hl.Signature("G", (V.STR,), V.STR)


def test_string_annotations_are_resolved(reg):
    # This module uses `from __future__ import annotations`: every hint is a string.
    def f(a: hl.i32) -> hl.u32:
        return a

    assert f.__annotations__ == {"a": "hl.i32", "return": "hl.u32"}
    assert reg.register("F", f) == hl.Signature("F", (V.I32,), V.U32)


def test_missing_param_hint(reg):
    def f(a: int, b) -> int:
        return a

    with pytest.raises(TypeError, match="^host function F: parameter b has no type hint; annotate it or pass "
                                        "params=$"):
        reg.register("F", f)
    assert "F" not in reg


def test_lambda_without_hints(reg):
    with pytest.raises(TypeError, match="^host function L: parameter x has no type hint"):
        reg.register("L", lambda x: x)


def test_missing_return_hint(reg):
    def f(a: int):
        return a

    with pytest.raises(TypeError, match="^host function F: no return annotation; annotate it or pass returns=$"):
        reg.register("F", f)


# The typing.Optional form is what is tested.
@pytest.mark.parametrize("ann, shown", [(list, "<class 'list'>"), (Optional[int], r"typing\.Optional\[int\]"),  # noqa: UP045
                                        (dict[str, int], r"dict\[str, int\]"), (object, "<class 'object'>"),
                                        (typing.Any, r"typing\.Any")])
def test_unsupported_param_annotation(reg, ann, shown):
    def f(a) -> None:
        pass

    f.__annotations__ = {"a": ann, "return": None}
    with pytest.raises(TypeError, match=rf"^host function F, parameter a: cannot map annotation {shown} to a guest "
                                        rf"type; use hl\.i32 etc\., bool, str, bytes, int \(i64\), float \(f64\) or "
                                        rf"None$"):
        reg.register("F", f)


def test_unsupported_return_annotation(reg):
    def f(a: int) -> list:
        return []

    with pytest.raises(TypeError, match=r"^host function F, return: cannot map annotation <class 'list'>"):
        reg.register("F", f)


def test_annotated_without_value_type_falls_back_to_base(reg):
    def f(a: Annotated[list, "x"]) -> None:
        pass

    with pytest.raises(TypeError, match=r"^host function F, parameter a: cannot map annotation <class 'list'>"):
        reg.register("F", f)


def test_unresolvable_string_hint(reg):
    def f(a: NoSuchType) -> None:  # noqa: F821
        pass

    with pytest.raises(TypeError, match=r"^host function F: cannot read its signature \(.*NoSuchType.*\); pass "
                                        r"params= and returns=$"):
        reg.register("F", f)


@pytest.mark.parametrize("src, pname", [
    ("def f(*args: int) -> int: ...", "args"),
    ("def f(a: int, *rest: int) -> int: ...", "rest"),
    ("def f(**kw: int) -> int: ...", "kw"),
    ("def f(a: int, *, k: int) -> int: ...", "k"),
])
def test_non_positional_params(reg, src, pname):
    ns: dict = {}
    exec(src, ns)
    with pytest.raises(TypeError, match=rf"^host function F: parameter {pname} must be positional$"):
        reg.register("F", ns["f"])


def test_void_param_hint(reg):
    def f(a: None) -> int:
        return 1

    with pytest.raises(TypeError, match="^host function F: a parameter cannot be void$"):
        reg.register("F", f)


def test_builtin_without_signature(reg):
    # Some builtins have no introspectable signature: the error says to pass params/returns.
    with pytest.raises(TypeError, match="^host function B: "):
        reg.register("B", print)
    assert reg.register("B", print, params=(str,), returns=None).params == (V.STR,)


def test_callable_object_needs_explicit_types(reg):
    class Adder:
        def __call__(self, a: int, b: int) -> int:
            return a + b

    assert reg.register("A", Adder(), params=(int, int), returns=int) == hl.Signature("A", (V.I64, V.I64), V.I64)


# -- registry rules ------------------------------------------------------------------------------

def test_duplicate_name(reg):
    reg.register("F", lambda: None, params=(), returns=None)
    with pytest.raises(ValueError, match="^host function F is already registered$"):
        reg.register("F", lambda: 1, params=(), returns=int)
    assert reg.get("F").return_tag == 0


@pytest.mark.parametrize("fn", [None, 42, "f", b"f"])
def test_non_callable(reg, fn):
    with pytest.raises(TypeError, match=r"^host function F: .* is not callable$"):
        reg.register("F", fn, params=(), returns=None)
    assert "F" not in reg


@pytest.mark.parametrize("name", ["", None, b"F", 3])
def test_bad_name(reg, name):
    with pytest.raises(TypeError, match="^a host function name must be a non-empty string$"):
        reg.register(name, lambda: None, params=(), returns=None)


def test_name_too_long(reg):
    with pytest.raises(ValueError, match="^host function name too long$"):
        reg.register("é" * 32768, lambda: None, params=(), returns=None)
    assert reg.register("x" * 65535, lambda: None, params=(), returns=None).name == "x" * 65535


def test_failed_registration_leaves_no_trace(reg):
    def bad(a) -> int:
        return 1

    with pytest.raises(TypeError):
        reg.register("Bad", bad)
    assert reg.signatures() == []
    reg.register("Bad", bad, params=(int,), returns=int)
    assert [s.name for s in reg.signatures()] == ["Bad"]


def test_signatures_keep_registration_order(reg):
    for name in ("b", "a", "c"):
        reg.register(name, lambda: None, params=(), returns=None)
    assert [s.name for s in reg.signatures()] == ["b", "a", "c"]


def test_signature_of_direct():
    def f(a: hl.i32) -> str:
        return ""

    assert signature_of("X", f, None, None) == hl.Signature("X", (V.I32,), V.STR)
    assert repr(signature_of("X", f, None, None)) == "X(i32) -> str"


# -- types ---------------------------------------------------------------------------------------

def test_value_type_names_and_tags():
    assert [int(t) for t in V] == list(range(10))
    assert [str(t) for t in V] == ["void", "i32", "u32", "i64", "u64", "f32", "f64", "bool", "str", "bytes"]
    assert (hl.i32, hl.u32, hl.i64, hl.u64, hl.f32, hl.f64) == (V.I32, V.U32, V.I64, V.U64, V.F32, V.F64)


@pytest.mark.parametrize("bad", [True, False, 1.0, "int", list, b"i32", object()])
def test_to_value_type_rejects(bad):
    with pytest.raises(TypeError, match="^not a guest value type: "):
        to_value_type(bad)


def test_signature_equality_and_hash():
    a = hl.Signature("F", [V.I32], V.VOID)
    b = hl.Signature("F", (V.I32,), V.VOID)
    assert a == b and hash(a) == hash(b) and a.params == (V.I32,)
    assert a != hl.Signature("G", (V.I32,), V.VOID)
    assert a != hl.Signature("F", (V.I64,), V.VOID)
    assert a != hl.Signature("F", (V.I32,), V.I32)
    assert a != "F(i32) -> void"
    assert repr(hl.Signature("F", (), V.VOID)) == "F() -> void"


@pytest.mark.parametrize("tag", [10, 99, -1])
def test_to_value_type_rejects_bad_tags_with_type_error(tag):
    with pytest.raises(TypeError, match="^not a guest value type: "):
        to_value_type(tag)


def test_numpy_scalar_types_name_value_types():
    np = pytest.importorskip("numpy")
    from hlsandbox.func.types import to_value_type
    assert [to_value_type(t) for t in (np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64,
                                       np.bool_)] == [hl.i32, hl.u32, hl.i64, hl.u64, hl.f32, hl.f64,
                                                      hl.ValueType.BOOL]
    with pytest.raises(TypeError):
        to_value_type(np.int8)


@pytest.mark.kvm
def test_a_host_function_may_take_and_return_numpy_scalars():
    np = pytest.importorskip("numpy")
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"))
    u.register("HostAdd", lambda a, b: np.int32(a) + np.int32(b), params=(np.int32, np.int32), returns=np.int32)
    with u.evolve() as sb:
        assert sb.call("CallHostAdd", 20, 22) == 42
