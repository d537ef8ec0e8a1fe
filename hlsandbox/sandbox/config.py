"""SandboxConfiguration: sizes and limits of a sandbox, validated up front."""
from __future__ import annotations

import math
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import InvalidConfiguration
from ..mem.layout import SIZE_LIMITS

Size = int | str

PAGE_SIZE = 4096
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:(Ki|Mi|Gi)B?)?\s*$")
_DECIMAL_RE = re.compile(r"^\s*\d+\s*([kKMG])B?\s*$")

_LIMITS = SIZE_LIMITS  # smallest and largest values each size may take

LOG_LEVELS = {"trace": 0, "debug": 1, "info": 2, "information": 2, "warning": 3, "error": 4,
              "critical": 5, "none": 6}
# Guest log levels 0..5 (docs/abi.md) as Python logging levels (5: hlsandbox's TRACE).
PY_LEVELS = (5, 10, 20, 30, 40, 50)


def guest_level_of_python_level(level: int) -> int:
    """The least severe guest level a Python logging level lets through (6: none)."""
    for guest_level, py_level in enumerate(PY_LEVELS):
        if py_level >= level:
            return guest_level
    return 6


_Set = TypeVar("_Set")
_Get = TypeVar("_Get")

if TYPE_CHECKING:
    class _Checked(Generic[_Set, _Get]):
        """For type checkers only: a field set as one type and read back as another, as the
        validation in SandboxConfiguration.__setattr__ converts it ("8Mi" in, bytes out)."""

        def __init__(self, default: _Set) -> None: ...
        def __get__(self, obj: object, owner: Any) -> _Get: ...
        def __set__(self, obj: object, value: _Set) -> None: ...
else:
    class _Checked:
        """At run time the default itself (SandboxConfiguration.__setattr__ validates)."""

        def __class_getitem__(cls, item):
            return cls

        def __new__(cls, default):
            return default


def parse_size(name: str, value: Size) -> int:
    """Turns 4096, "64Ki", "8Mi", "1Gi" (or "64KiB", ...) into bytes; raises InvalidConfiguration
    otherwise."""
    if isinstance(value, bool):
        raise InvalidConfiguration(f"{name} must be a size, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            d = _DECIMAL_RE.match(value)
            hint = f" ({d.group(1).upper()}B is ambiguous: sizes are binary, write {d.group(1).upper()}i)" \
                if d else ""
            raise InvalidConfiguration(
                f"{name}={value!r} is not a size: use bytes or a number with Ki, Mi or Gi (or KiB, MiB, GiB)"
                f"{hint}")
        n = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise InvalidConfiguration(f"{name} must be an int or a string such as '64Ki', got {type(value).__name__}")
    lo, hi = _LIMITS[name]
    if n < lo or n > hi:
        raise InvalidConfiguration(f"{name}={value!r} ({n} bytes) is outside [{lo}, {hi}]")
    return n


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass
class SandboxConfiguration:
    """Sizes and limits of a sandbox.

    Sizes are bytes or strings such as "64Ki", "8Mi", "1Gi" and are rounded up to
    whole pages. `guest_log_level` is the least severe guest log level forwarded
    ("trace" ... "critical", "none", or 0..6); None follows the `hlsandbox.guest`
    logger's effective level. `max_execution_time` (seconds, or None) limits each call.
    `scratch_base_gpa` places the scratch region (buffers, heap, stack; docs/abi.md);
    None is the profile's default. `profile` ("amd64" or "i686") defaults to the ELF's class.
    `max_wait_time` (seconds, or None for no limit) is how long a call waits for the
    sandbox while another thread's call runs before it raises SandboxBusy.
    `restore_after_call` restores the sandbox to its post-initialisation state after
    every call (the default of call(..., restore=)).
    `guest_core_dump` writes an ELF core file of the guest into `core_dump_dir` (default
    the temporary directory) when a call ends in a guest fault or abort; the exception's
    `core_dump` is its path (hlsandbox/sandbox/core_dump.py).
    """

    heap_size: _Checked[Size, int] = _Checked("1Mi")
    stack_size: _Checked[Size, int] = _Checked("256Ki")
    input_data_size: _Checked[Size, int] = _Checked("16Ki")
    output_data_size: _Checked[Size, int] = _Checked("16Ki")
    guest_log_level: _Checked[int | str | None, int | None] = _Checked(None)
    max_execution_time: float | None = None
    max_wait_time: float | None = None
    guest_core_dump: bool = False
    core_dump_dir: str | os.PathLike[str] = field(default_factory=tempfile.gettempdir)
    restore_after_call: bool = False
    scratch_base_gpa: int | None = None
    profile: str | None = None

    def __setattr__(self, name: str, value: object) -> None:
        # Every assignment, the constructor's included, is validated: a configuration
        # cannot be made invalid after it is built.
        check = _CHECKS.get(name)
        if check is None:
            raise AttributeError(f"SandboxConfiguration has no field {name!r}")
        object.__setattr__(self, name, check(value))


def _size(name: str) -> Callable[[Any], int]:
    return lambda v: page_align(parse_size(name, v))


def _log_level(lvl: object) -> int | None:
    if isinstance(lvl, str):
        if lvl.lower() not in LOG_LEVELS:
            raise InvalidConfiguration(f"guest_log_level={lvl!r}: use one of {sorted(LOG_LEVELS)}")
        return LOG_LEVELS[lvl.lower()]
    if lvl is None:
        return None
    if isinstance(lvl, bool) or not isinstance(lvl, int) or not (0 <= lvl <= 6 or lvl >= 10):
        raise InvalidConfiguration(f"guest_log_level={lvl!r}: use 0..6, a level name or a logging level "
                                   f"(logging.DEBUG ...)")
    return lvl if lvl <= 6 else guest_level_of_python_level(lvl)


def _profile(p: object) -> str | None:
    if p is not None and p not in ("amd64", "i686"):
        raise InvalidConfiguration(f"profile={p!r}: use 'amd64', 'i686' or None (from the ELF)")
    return p


def _scratch_base(b: object) -> int | None:
    if b is not None:
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise InvalidConfiguration(f"scratch_base_gpa={b!r}: use a non-negative integer address or None")
        if b % PAGE_SIZE:
            raise InvalidConfiguration(f"scratch_base_gpa={b:#x} is not page aligned (a multiple of "
                                       f"{PAGE_SIZE:#x})")
    return b


def _flag(name: str) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        if not isinstance(v, bool):
            raise InvalidConfiguration(f"{name}={v!r}: use True or False")
        return v
    return check


def _execution_time(t: object) -> float | None:
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
        raise InvalidConfiguration(f"max_execution_time={t!r}: use a positive number of seconds or None")
    if t is not None and t != math.inf and t > threading.TIMEOUT_MAX:
        raise InvalidConfiguration(f"max_execution_time={t!r} is beyond the longest limit the platform can "
                                   f"wait ({threading.TIMEOUT_MAX:.3g} s); use None or inf for no limit")
    return t


def _wait_time(w: object) -> float | None:
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0):
        raise InvalidConfiguration(f"max_wait_time={w!r}: use seconds >= 0 (0: never wait) or None (no limit)")
    return w


def _directory(d: object) -> object:
    if not isinstance(d, (str, os.PathLike)):
        raise InvalidConfiguration(f"core_dump_dir={d!r}: use a directory path")
    return d


_CHECKS = {
    **{name: _size(name) for name in _LIMITS},
    "guest_log_level": _log_level,
    "max_execution_time": _execution_time,
    "max_wait_time": _wait_time,
    "guest_core_dump": _flag("guest_core_dump"),
    "core_dump_dir": _directory,
    "restore_after_call": _flag("restore_after_call"),
    "scratch_base_gpa": _scratch_base,
    "profile": _profile,
}
