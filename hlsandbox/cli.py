"""Command line: `python3 -m hlsandbox demo`, `python3 -m hlsandbox call GUEST FUNCTION ARGS...`,
`python3 -m hlsandbox functions GUEST`, `python3 -m hlsandbox build SOURCES... -o OUT.elf`, `python3 -m hlsandbox lua`
(docs/guests.md); `--version`.

Each subcommand is one `add_*` function in COMMANDS: it adds its parser and sets `func`."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, guests, lua_cli
from .errors import ExecutionTimeout, HyperlightError
from .func.types import ValueType
from .sandbox.config import SandboxConfiguration
from .sandbox.multi_use import MultiUseSandbox
from .sandbox.uninitialized import UninitializedSandbox


def _host_add(a: int, b: int) -> int:
    return a + b


# What `timeout` (coreutils) exits with when its limit passes.
EXIT_TIMEOUT = 124


def _sandbox(guest: str, heap: str = "1Mi", stack: str = "256Ki") -> MultiUseSandbox:
    path = guest if "/" in guest or guest.endswith(".elf") else guests.path(guest)
    u = UninitializedSandbox(path, SandboxConfiguration(heap_size=heap, stack_size=stack))
    u.register("HostAdd", _host_add, params=(ValueType.I32, ValueType.I32), returns=ValueType.I32)
    return u.evolve()


def _timed(sb: MultiUseSandbox, name: str, *args: Any, repeat: int = 200) -> tuple[Any, float]:
    result = sb.call(name, *args)
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        sb.call(name, *args)
        times.append(time.perf_counter_ns() - t)
    return result, statistics.median(times) / 1000


def demo(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    sb = _sandbox("simpleguest")
    print(f"evolved simpleguest in {(time.perf_counter() - t) * 1e3:.2f} ms; "
          f"{len(sb.functions)} guest functions")
    with sb:
        calls = [("Echo", ("hello from Python",)), ("Add", (40, 2)), ("CallHostAdd", (20, 22)),
                 ("EchoF64", (3.25,)), ("EchoBytes", (b"\x00\x01\x02",)), ("SetStatic", (7,)),
                 ("GetStatic", ()), ("Sum", (1_000_000,))]
        print(f"{'call':<40} {'result':<28} {'median':>10}")
        for name, a in calls:
            result, us = _timed(sb, name, *a, repeat=args.repeat)
            shown = f"{name}({', '.join(map(repr, a))})"
            print(f"{shown:<40} {result!r:<28.28} {us:>8.1f} µs")
        sb.call("PrintOutput", "the guest prints through the host\n")
    return 0


def _parse_arg(text: str, t: ValueType) -> Any:
    if t in (ValueType.I32, ValueType.U32, ValueType.I64, ValueType.U64):
        return int(text, 0)
    if t in (ValueType.F32, ValueType.F64):
        return float(text)
    if t == ValueType.BOOL:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool (true/false)")
        return text.lower() in ("true", "1")
    if t == ValueType.BYTES:
        return text.encode()
    return text


def call(args: argparse.Namespace) -> int:
    with _sandbox(args.guest, args.heap_size, args.stack_size) as sb:
        sig = sb.functions.get(args.function)
        if sig is None:
            print(f"no guest function {args.function!r}; the guest has: {', '.join(sb.functions)}", file=sys.stderr)
            return 2
        if len(args.args) != len(sig.params):
            print(f"{sig} takes {len(sig.params)} arguments, got {len(args.args)}", file=sys.stderr)
            return 2
        try:
            values = [_parse_arg(a, t) for a, t in zip(args.args, sig.params, strict=True)]
        except ValueError as e:
            print(f"bad argument for {sig}: {e}", file=sys.stderr)
            return 2
        try:
            print(repr(sb.call(args.function, *values, timeout=args.timeout)))
        except ExecutionTimeout:
            print(f"timeout: {args.function} ran longer than {args.timeout:g} s and was stopped", file=sys.stderr)
            return EXIT_TIMEOUT
    return 0


def build(args: argparse.Namespace) -> int:
    from . import sdk  # only this command needs it
    print(sdk.build(args.sources, args.output, profile=args.profile, api=args.api, include_dirs=args.include,
                    defines=args.define, optimize=args.optimize, extra_cflags=args.cflags))
    return 0


def functions(args: argparse.Namespace) -> int:
    with _sandbox(args.guest) as sb:
        for sig in sb.functions.values():
            print(sig)
    return 0


def _seconds(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not t > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the time limit must be positive")
    return t


def add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="run the bundled simpleguest and time a few calls")
    d.add_argument("--repeat", type=int, default=200, help="calls per timing (default 200)")
    d.set_defaults(func=demo)


def add_call(sub: Any) -> None:
    c = sub.add_parser("call", help="call one guest function and print the result")
    c.add_argument("guest", help="a bundled guest name (e.g. simpleguest) or an ELF path")
    c.add_argument("function")
    c.add_argument("args", nargs="*")
    c.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help=f"stop the call after SECONDS (exit status {EXIT_TIMEOUT})")
    c.add_argument("--heap-size", default="1Mi", metavar="SIZE", help="guest heap, e.g. 8Mi (default 1Mi)")
    c.add_argument("--stack-size", default="256Ki", metavar="SIZE", help="guest stack (default 256Ki)")
    c.set_defaults(func=call)


def add_functions(sub: Any) -> None:
    f = sub.add_parser("functions", help="list a guest's functions with their signatures")
    f.add_argument("guest", help="a bundled guest name (e.g. simpleguest) or an ELF path")
    f.set_defaults(func=functions)


def add_build(sub: Any) -> None:
    b = sub.add_parser("build", help="build a guest ELF from C sources with the guest SDK")
    b.add_argument("sources", nargs="+", help="C (.c) and assembly (.S) sources")
    b.add_argument("-o", "--output", required=True, help="the guest ELF to write")
    b.add_argument("--profile", choices=("amd64", "i686"), default="amd64")
    b.add_argument("--api", default="hlsandbox", help="the guest API: hlsandbox (hlguest.h) or hyperlight")
    b.add_argument("-I", dest="include", action="append", default=[], metavar="DIR", help="include directory")
    b.add_argument("-D", dest="define", action="append", default=[], metavar="NAME[=VALUE]", help="define a macro")
    b.add_argument("-O", dest="optimize", default="2", metavar="LEVEL", help="optimisation level (default 2)")
    b.add_argument("--cflag", dest="cflags", action="append", default=[], metavar="FLAG",
                   help="one more compiler flag, e.g. --cflag=-fstack-protector-strong")
    b.set_defaults(func=build)


COMMANDS: list[Callable[[Any], None]] = [add_demo, add_call, add_functions, add_build, lua_cli.add_parser]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m hlsandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hlsandbox {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = p.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except (HyperlightError, FileNotFoundError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
