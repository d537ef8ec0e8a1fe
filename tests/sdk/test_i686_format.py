"""i686 guests: the runtime's string and integer formatting functions (no libc, no FPU)."""
from __future__ import annotations

import io

import pytest

import hlsandbox as hl

pytestmark = pytest.mark.kvm


def test_formatting_and_strings(built_guest):
    out = io.StringIO()
    hl.UninitializedSandbox(built_guest("format32", profile="i686", extra_cflags=["-Werror"]), writer=out).evolve()
    assert out.getvalue().splitlines() == [
        "[-42|    7|ff  |0000BEEF|-1234567890123|18446744073709551615|str|ab|Z|%|0xab|0x1000|9|   5|6  "
        "|-2147483648]",
        "small=truncat n=16",
        "unsupported=[%f]",
        "cmp=1,0,1 strstr=world strchr=, world strrchr=orld len=12",
        "done",
    ]
