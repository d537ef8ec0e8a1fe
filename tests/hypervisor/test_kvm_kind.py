"""is_kvm_pvm() against what the KVM does: kvm-pvm emulates guest CPL0 code and cannot
emulate x87 instructions (../shared/docs/platform.md), which hardware KVM runs natively."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

import hlsandbox as hl
from hlsandbox import sdk
from hlsandbox.hypervisor import device

pytestmark = pytest.mark.kvm

# An i686 guest runs at CPL0, with CR0.EM clear: x87 instructions are the CPU's to run.
X87_GUEST = r"""
#include "hl32.h"

void guest32_main(void) {
  __asm__ volatile("fld1\n\tfstp %%st(0)" ::: "memory");
  puts("x87 ran");
  hl32_halt_init();
}
"""


def test_is_kvm_pvm_matches_how_cpl0_code_runs(tmp_path: Path) -> None:
    src = tmp_path / "x87.c"
    src.write_text(X87_GUEST)
    elf = sdk.build([src], tmp_path / "x87.elf", profile="i686")
    out = io.StringIO()
    u = hl.UninitializedSandbox(elf, writer=out)
    if device.is_kvm_pvm():
        with pytest.raises(hl.GuestEmulationFailure, match="kvm-pvm emulates guest CPL0"):
            u.evolve()
        assert out.getvalue() == ""
    else:
        u.evolve().close()
        assert out.getvalue() == "x87 ran\n"
