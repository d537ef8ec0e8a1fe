"""Guests of tests/sdk/guests, built once per session through hlsandbox.sdk.build."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hlsandbox import sdk

GUESTS = Path(__file__).resolve().parent / "guests"


@pytest.fixture(scope="session")
def built_guest(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """built_guest("libcguest", **build_kwargs) → the ELF path (cached per arguments)."""
    out_dir = tmp_path_factory.mktemp("sdk-guests")
    cache: dict = {}

    def get(name: str, **kwargs) -> str:
        key = (name, repr(sorted(kwargs.items())))
        if key not in cache:
            out = out_dir / f"{name}-{len(cache)}.elf"
            cache[key] = sdk.build([GUESTS / f"{name}.c"], out, **kwargs)
        return cache[key]

    return get
