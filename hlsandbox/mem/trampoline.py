"""The restore trampoline: how a restore resets the guest's FPU state without a vCPU ioctl.

KVM_SET_XSAVE costs a vCPU ioctl (6-7 µs on kvm-pvm), more than the rest of a fast
restore. Instead, a restore points RIP at this host-written page (user RX, the guest
cannot write it) with every other register exactly as in the snapshot; the guest's
first instructions after the restore load the snapshot's x87/SSE state with FXRSTOR64
and jump to the snapshot's RIP. Both instructions address their operands RIP-relative,
so no general register or flag changes.

AVX state beyond SSE is not part of FXSAVE. A guest can only have such state where the
CPU lets CPL3 use AVX although the guest's CPUID and CR4 do not enable it: kvm-pvm does
(platform.md). There the trampoline starts with VZEROALL, which clears YMM0-15 and, with
AVX-512, ZMM0-15 whole (FXRSTOR then loads XMM0-15); where the host has AVX-512 it also
clears ZMM16-31 (VPXORD) and the mask registers k0-k7 (KXORW zeroes all 64 bits), so a
fast restore leaves no guest-reachable register as the guest left it. These are a few
native instructions at CPL3 (benchmarks/compare_avx512_reset.py measures them). Restores
from another snapshot use KVM_SET_XSAVE, whose image resets the same registers.

The code is the host's choice, not the snapshot's: sandboxes write it over the page of a
snapshot they start from or copy back (sandbox/multi_use.py)."""
from __future__ import annotations

import struct

from .layout import TRAMPOLINE_FXSAVE, TRAMPOLINE_TARGET

VZEROALL = b"\xc5\xfc\x77"


def _clear_avx512() -> bytes:
    """vpxord zmmN, zmmN, zmmN for N = 16..31 (EVEX.512), then kxorw kN, kN, kN for N = 0..7."""
    code = b""
    for n in range(16, 32):
        r = n & 7
        # EVEX P0: R=0 X=1 B=0 R'=(n<16) -> for zmm16-23: 0xa1, zmm24-31: 0x01 (R/B inverted)
        p0 = (0x01 if n >= 24 else 0xa1)
        vvvv = (~n) & 0xF
        p1 = (vvvv << 3) | 0x05  # W=0, vvvv, 1, pp=01 (66)
        p2 = 0x40  # z=0, L'L=10 (512), b=0, V'=0 (vvvv's 5th bit: zmm16-31), aaa=0
        code += bytes([0x62, p0, p1, p2, 0xEF, 0xC0 | (r << 3) | r])
    for n in range(8):
        code += bytes([0xC5, 0xFC - (n << 3), 0x47, 0xC0 | (n << 3) | n])
    return code


CLEAR_AVX512 = _clear_avx512()


def trampoline_code(clear_avx: bool, clear_avx512: bool = False) -> bytes:
    """[vzeroall; [clear ZMM16-31 and k0-k7;]] fxrstor64 [rip+FXSAVE]; jmp [rip+TARGET]."""
    code = (VZEROALL if clear_avx else b"") + (CLEAR_AVX512 if clear_avx and clear_avx512 else b"")
    end = len(code) + 8
    code += b"\x48\x0f\xae\x0d" + struct.pack("<i", TRAMPOLINE_FXSAVE - end)  # fxrstor64 [rip+disp32]
    end = len(code) + 6
    code += b"\xff\x25" + struct.pack("<i", TRAMPOLINE_TARGET - end)  # jmp qword [rip+disp32]
    assert len(code) <= TRAMPOLINE_TARGET
    return code


