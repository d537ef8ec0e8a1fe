"""Helpers the tests share (imported as `helpers`: tests/ is on sys.path through its conftest)."""
from __future__ import annotations

import hlsandbox as hl


def host_add(a: int, b: int) -> int:
    return a + b


def make_sandbox(config: hl.SandboxConfiguration | None = None, **kw) -> hl.MultiUseSandbox:
    u = hl.UninitializedSandbox(hl.guests.path("simpleguest"), config, **kw)
    u.register("HostAdd", host_add, params=(hl.i32, hl.i32), returns=hl.i32)
    return u.evolve()
