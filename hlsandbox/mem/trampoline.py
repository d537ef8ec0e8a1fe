"""The restore trampoline: how a restore resets the guest's FPU state without a vCPU ioctl.

KVM_SET_XSAVE costs a vCPU ioctl (6-7 µs on kvm-pvm), more than the rest of a fast
restore. Instead, a restore points RIP at this host-written page (user RX, the guest
cannot write it) with every other register exactly as in the snapshot; the guest's
first instructions after the restore load the snapshot's x87/SSE state with FXRSTOR64
and jump to the snapshot's RIP. Both instructions address their operands RIP-relative,
so no general register or flag changes.

AVX state beyond SSE is not part of FXSAVE. A guest can only have such state where the
CPU lets CPL3 use AVX although the guest's CPUID and CR4 do not enable it: kvm-pvm does
(platform.md). There the trampoline starts with VZEROALL, which clears the upper halves
of YMM0-15 (FXRSTOR then loads XMM0-15); AVX-512's ZMM16-31 and mask registers are not
reset by a fast restore on kvm-pvm (restores from another snapshot use KVM_SET_XSAVE)."""
from __future__ import annotations

import struct

from .layout import TRAMPOLINE_FXSAVE, TRAMPOLINE_TARGET

VZEROALL = b"\xc5\xfc\x77"


def trampoline_code(clear_avx: bool) -> bytes:
    """fxrstor64 [rip+FXSAVE]; jmp [rip+TARGET] (optionally after vzeroall)."""
    code = VZEROALL if clear_avx else b""
    end = len(code) + 8
    code += b"\x48\x0f\xae\x0d" + struct.pack("<i", TRAMPOLINE_FXSAVE - end)  # fxrstor64 [rip+disp32]
    end = len(code) + 6
    code += b"\xff\x25" + struct.pack("<i", TRAMPOLINE_TARGET - end)  # jmp qword [rip+disp32]
    assert len(code) <= TRAMPOLINE_TARGET
    return code
