"""`python3 -m hlsandbox lua`: run Lua code in a LuaSandbox from the command line.

    python3 -m hlsandbox lua -e "print(1 + 1)"
    python3 -m hlsandbox lua script.lua
    python3 -m hlsandbox lua                  # an interactive prompt (globals persist)
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from .errors import ExecutionCanceled
from .lua import LuaError, LuaResult, LuaSandbox, LuaSyntaxError


def add_parser(sub: Any) -> None:
    """Adds the `lua` subcommand to the CLI's subparsers."""
    p = sub.add_parser("lua", help="run Lua code in a sandbox (-e CODE, a script, or an interactive prompt)")
    p.add_argument("script", nargs="?", help="a Lua file to run")
    p.add_argument("-e", dest="code", metavar="CODE", help="run this Lua code")
    p.add_argument("--timeout", type=float, default=None, help="seconds a run may take")
    p.add_argument("--heap", default="16Mi", help="the script's memory (default 16Mi)")
    p.set_defaults(func=main)


def _show(v: Any) -> str:
    if v is None:
        return "nil"
    if v is True or v is False:
        return str(v).lower()
    if isinstance(v, str):
        return v
    return repr(v)


def _report(result: LuaResult, out: TextIO) -> None:
    out.write(result.stdout)
    if result.values:
        out.write("\t".join(_show(v) for v in result.values) + "\n")
    out.flush()


def _run_once(lua: LuaSandbox, code: str, timeout: float | None) -> int:
    try:
        _report(lua.run(code, timeout=timeout), sys.stdout)
    except LuaError as e:
        sys.stdout.write(e.stdout)
        print(f"lua: {e}", file=sys.stderr)
        return 1
    return 0


def _repl(lua: LuaSandbox, timeout: float | None) -> int:
    print("Lua 5.4 in an hlsandbox micro-VM; globals persist; Ctrl-D to leave", file=sys.stderr)
    while True:
        try:
            line = input("> ")
            chunk = line
            while True:
                try:  # an expression first, as lua.c does
                    try:
                        result = lua.run("return " + chunk, timeout=timeout)
                    except LuaSyntaxError:
                        result = lua.run(chunk, timeout=timeout)
                    _report(result, sys.stdout)
                    break
                except LuaSyntaxError as e:
                    if not e.message.endswith("<eof>"):
                        raise
                    chunk += "\n" + input(">> ")  # an unfinished statement: read on
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("^C", file=sys.stderr)
        except (LuaError, ExecutionCanceled) as e:
            print(f"lua: {e}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.code is not None and args.script is not None:
        print("give either -e CODE or a script, not both", file=sys.stderr)
        return 2
    with LuaSandbox(heap_size=args.heap, fresh=False) as lua:
        if args.code is not None:
            return _run_once(lua, args.code, args.timeout)
        if args.script is not None:
            with open(args.script, "rb") as f:
                return _run_once(lua, f.read().decode("utf-8", "surrogateescape"), args.timeout)
        return _repl(lua, args.timeout)
