"""examples/http_service served by uvicorn on a loopback port, driven by httpx: several
hundred concurrent requests, every answer checked; the subprocess-per-request mode
answers the same."""
import asyncio
import base64
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "http_service"))
import service  # noqa: E402

pytestmark = pytest.mark.kvm


@contextlib.contextmanager
def running(app):
    """uvicorn serving `app` on 127.0.0.1 in a thread: its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive()


def cases(n):
    """(function, body, expected status, check of the JSON answer) for n requests."""
    out = []
    for i in range(n):
        k = i % 10
        if k in (0, 1, 2):
            out.append(("Add", {"args": [i, k]}, 200, {"result": i + k}))
        elif k == 3:
            out.append(("Echo", {"args": [f"req {i} ✓"]}, 200, {"result": f"req {i} ✓"}))
        elif k == 4:
            data = base64.b64encode(bytes([i % 256]) * (i + 1)).decode()
            out.append(("EchoBytes", {"args": [data]}, 200, {"result": data}))
        elif k == 5:  # a request that changes guest state: the next ones must not see it
            out.append(("SetStatic", {"args": [i]}, 200, {"result": i}))
        elif k == 6:
            out.append(("GetStatic", {}, 200, {"result": 0}))
        elif k == 7:
            out.append(("Abort", {"args": [i % 100 + 1, f"bad {i}"]}, 422,
                        {"error": "GuestAborted", "message": f"guest aborted with code {i % 100 + 1}: bad {i}"}))
        elif k == 8:
            out.append(("CallHostAdd", {"args": [i, 1]}, 200, {"result": i + 1}))
        else:
            bad = [b"{not json", {"args": "1 2"}, {"args": [1]}, {"args": ["x", 1]}][i // 10 % 4]
            out.append(("Add", bad, 400, None))
    return out


async def send_all(base, requests, concurrency):
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def one(name, body):
            if isinstance(body, bytes):
                return await client.post(f"/call/{name}", content=body)
            return await client.post(f"/call/{name}", json=body)
        return await asyncio.gather(*(one(name, body) for name, body, _, _ in requests))


def check(requests, answers):
    for (name, body, status, expected), r in zip(requests, answers, strict=True):
        assert r.status_code == status, (name, body, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        if expected is not None:
            assert r.json() == expected, (name, body)
        else:
            assert r.json()["error"] in ("BadRequest", "GuestFunctionParameterTypeMismatch"), r.text
            assert r.json()["message"]


@pytest.mark.parametrize("hot", [0, 1])
def test_several_hundred_concurrent_requests(hot):
    requests = cases(400)
    with running(service.make_app(size=2, hot=hot)) as base:
        answers = asyncio.run(send_all(base, requests, concurrency=64))
        check(requests, answers)
        deadline = time.monotonic() + 10
        while (stats := httpx.get(f"{base}/stats").json())["lent"] and time.monotonic() < deadline:
            time.sleep(0.01)  # a hot sandbox is restored after its answer, on the pool's thread
    # Arguments of the wrong type are refused by the host before the guest runs.
    calls = sum(1 for _, body, status, _ in requests if status != 400 or body == {"args": ["x", 1]})
    assert stats["calls"] == calls and stats["restores"] == calls and stats["replacements"] == 0
    assert stats["lent"] == 0 and stats["hot"] == hot
    assert stats["errors"] == {"GuestAborted": 40, "GuestFunctionParameterTypeMismatch": 10}


def test_errors_are_answered_with_class_and_message():
    with running(service.make_app(size=1)) as base:
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/call/Spin")
            assert (r.status_code, r.json()["error"]) == (422, "ExecutionTimeout")
            r = c.post("/call/ReadAddress", json={"args": [0]})
            assert (r.status_code, r.json()["error"]) == (422, "MemoryAccessViolation")
            r = c.post("/call/NoSuchFunction", json={})
            assert (r.status_code, r.json()["error"]) == (404, "GuestFunctionNotFound")
            r = c.post("/call/EchoI32", json={"args": [2**40]})
            assert r.status_code == 400 and "out of range" in r.json()["message"]
            r = c.post("/call/EchoBytes", json={"args": ["***"]})
            assert r.status_code == 400 and "base64" in r.json()["message"]
            r = c.post("/call/Add", content=b"[1, 2]")
            assert r.status_code == 400 and "object" in r.json()["message"]
            assert c.post("/call/Add", json={"args": [2, 3]}).json() == {"result": 5}  # restored after all that
            assert c.get("/functions").json()["Add"] == ["i32", "i32", "i32"]


def test_subprocess_mode_answers_the_same():
    requests = cases(20)
    with running(service.make_app(mode="subprocess")) as base:
        check(requests, asyncio.run(send_all(base, requests, concurrency=4)))
