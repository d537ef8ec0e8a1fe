"""An HTTP service that runs a guest function per request (Starlette, served by uvicorn).

    POST /call/{function}   body {"args": [...]}   ->  200 {"result": ...}
    GET  /functions                                ->  200 {"Add": ["i32", "i32", "i32"], ...}
    GET  /stats                                    ->  200 the pool's counters

Arguments and results are JSON values; bytes travel as base64 strings. Answers:
400 a malformed request (not JSON, `args` not a list, wrong argument count or types),
404 no such guest function, 422 the guest failed (its exception's class and message),
503 no sandbox free in time or the service is stopping, 500 a bug of the service (its
class and message too: never a bare 500).

Two ways to run a call, chosen by `mode`:
- "pool": a hl.SandboxPool made from one snapshot; each request borrows a sandbox,
  which is restored before the next request gets it (`await pool.acall(...)`).
- "subprocess": a new Python process per request that loads the same snapshot file and
  makes the call (one_call.py): the classic way to isolate requests, for comparison.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import hlsandbox as hl

HERE = Path(__file__).resolve().parent
CALL_TIMEOUT = 1.0  # seconds a guest function may run
SUBPROCESS_WAIT = 30.0  # seconds a one_call.py process may take
# one_call.py imports the hlsandbox this service runs (a source checkout or an install).
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(hl.__file__).resolve().parent.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def host_add(a: int, b: int) -> int:
    return a + b


HOST_FUNCTIONS = {"HostAdd": (host_add, (hl.i32, hl.i32), hl.i32)}


class BadRequest(Exception):
    """The request is malformed (400)."""


def signatures(snapshot: hl.Snapshot) -> dict[str, hl.Signature]:
    return {s.name: s for s in snapshot.guest_functions}


def decode_args(sig: hl.Signature, body: bytes) -> list[Any]:
    """The call's arguments from a request body {"args": [...]}; bytes parameters from base64."""
    try:
        request = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    args = request.get("args", [])
    if not isinstance(args, list):
        raise BadRequest('"args" must be a list')
    if len(args) != len(sig.params):
        raise BadRequest(f"{sig}: takes {len(sig.params)} arguments, got {len(args)}")
    out = []
    for i, (value, kind) in enumerate(zip(args, sig.params, strict=True), 1):
        if kind is hl.ValueType.BYTES:
            if not isinstance(value, str):
                raise BadRequest(f"{sig}: argument {i} must be a base64 string")
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"{sig}: argument {i} is not valid base64") from None
        out.append(value)
    return out


def encode_result(value: Any) -> Any:
    return base64.b64encode(value).decode() if isinstance(value, (bytes, bytearray)) else value


def error_answer(e: BaseException) -> tuple[int, dict[str, str]]:
    """The status and JSON body for an exception of a call."""
    body = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, (BadRequest, hl.GuestFunctionParameterTypeMismatch, hl.ArgumentTooLarge)):
        return 400, body
    if isinstance(e, hl.GuestFunctionNotFound):
        return 404, body
    if isinstance(e, (hl.PoolExhausted, hl.SandboxClosed)):
        return 503, body
    if isinstance(e, hl.HyperlightError):  # the guest aborted, faulted, ran too long...
        return 422, body
    return 500, body


def call_answer(sigs: dict[str, hl.Signature], name: str, body: bytes, call: Any) -> tuple[int, dict[str, Any]]:
    """Runs `call(name, args)` for one request (synchronously): status and JSON body."""
    try:
        sig = sigs.get(name)
        if sig is None:
            raise hl.GuestFunctionNotFound(f"no guest function {name!r}")
        return 200, {"result": encode_result(call(name, decode_args(sig, body)))}
    except Exception as e:
        return error_answer(e)


def make_app(source: Any = None, *, mode: str = "pool", size: int = 2, hot: int = 0) -> Starlette:
    """The service for guest `source` (a guest path or snapshot file; default the bundled
    simpleguest), running each call on a pool of `size` sandboxes, `hot` of them kept hot
    (mode "pool"), or in a new process (mode "subprocess")."""
    if mode not in ("pool", "subprocess"):
        raise ValueError(f"mode must be 'pool' or 'subprocess', not {mode!r}")
    source = source if source is not None else hl.guests.path("simpleguest")
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(hl.SandboxPool(source, size=size, host_functions=HOST_FUNCTIONS,
                                                      hot=hot if mode == "pool" else 0))
            state["sigs"] = signatures(pool.snapshot)
            if mode == "pool":
                state["pool"] = pool
            else:  # the children load the snapshot from a file; the pool only made it
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hlsandbox-http-"))
                state["snapshot_file"] = os.path.join(tmp, "guest.hlsnap")
                pool.snapshot.save(state["snapshot_file"])
                stack.callback(state.clear)
            yield

    async def call(request: Request) -> JSONResponse:
        name = request.path_params["function"]
        body = await request.body()
        if mode == "pool":
            status, answer = await _pool_call(state["pool"], state["sigs"], name, body)
        else:
            status, answer = await _subprocess_call(state["snapshot_file"], name, body)
        return JSONResponse(answer, status_code=status)

    async def functions(request: Request) -> JSONResponse:
        return JSONResponse({n: [str(p) for p in s.params] + [str(s.returns)] for n, s in state["sigs"].items()})

    async def stats(request: Request) -> JSONResponse:
        pool = state.get("pool")
        if pool is None:
            return JSONResponse({"mode": mode})
        s = pool.stats()
        return JSONResponse({"mode": mode, "calls": s.calls, "restores": s.restores, "lent": s.lent, "hot": s.hot,
                             "replacements": s.replacements, "errors": dict(s.errors)})

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        status, answer = error_answer(exc)
        return JSONResponse(answer, status_code=status)

    return Starlette(routes=[Route("/call/{function}", call, methods=["POST"]),
                             Route("/functions", functions), Route("/stats", stats)],
                     lifespan=lifespan, exception_handlers={Exception: unexpected})


async def _pool_call(pool: hl.SandboxPool, sigs: dict[str, hl.Signature], name: str,
                     body: bytes) -> tuple[int, dict[str, Any]]:
    sig = sigs.get(name)
    try:
        if sig is None:
            raise hl.GuestFunctionNotFound(f"no guest function {name!r}")
        args = decode_args(sig, body)
        result = await pool.acall(name, *args, timeout=CALL_TIMEOUT)
        return 200, {"result": encode_result(result)}
    except Exception as e:
        return error_answer(e)


async def _subprocess_call(snapshot_file: str, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "one_call.py"), snapshot_file, name,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV)
    try:
        out, err = await asyncio.wait_for(proc.communicate(body), SUBPROCESS_WAIT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 500, {"error": "TimeoutError", "message": f"the call's process ran over {SUBPROCESS_WAIT:g} s"}
    try:
        answer = json.loads(out)
        return int(answer["status"]), answer["body"]
    except (ValueError, KeyError, TypeError):
        return 500, {"error": "ChildProcessError",
                     "message": f"the call's process exited {proc.returncode}: {err.decode(errors='replace')[-500:]}"}


def serve(host: str = "127.0.0.1", port: int = 0, **app_args: Any) -> None:
    """Runs the service with uvicorn on host:port (port 0: any free one; the chosen
    port is printed as `port N` on stdout)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    print(f"port {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(make_app(**app_args), log_level="warning", access_log=False))
    server.run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", choices=["pool", "subprocess"], default="pool")
    parser.add_argument("--size", type=int, default=2, help="sandboxes in the pool")
    parser.add_argument("--hot", type=int, default=0, help="of which kept hot (docs/architecture.md, 'Hot mode')")
    parser.add_argument("--guest", help="a guest ELF or snapshot file (default: simpleguest)")
    a = parser.parse_args(argv)
    serve(a.host, a.port, source=a.guest, mode=a.mode, size=a.size, hot=a.hot)


if __name__ == "__main__":
    main()
