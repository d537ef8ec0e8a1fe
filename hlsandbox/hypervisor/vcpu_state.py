"""The vCPU state a snapshot carries (struct hl_vcpu_state in kvm_shim.h), decoded and
checked against what a guest profile can produce.

Every field KVM loads from a snapshot file is checked before it reaches KVM: a value KVM
refuses would surface as a bare OSError from a vCPU ioctl or from KVM_RUN, and a value
KVM accepts but the profile never produces (another CPU mode, a pending interrupt, MSRs a
CPL3 guest cannot write) would run the guest in a machine hlsandbox did not build. What
a guest can change itself (general registers, flags it may set, data segment selectors,
FS/GS bases, x87/SSE registers; for the CPL0 i686 profile also MSRs, debug registers and
its descriptor tables) is checked only for what the architecture or KVM requires."""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Offsets of hl_vcpu_state's parts: kvm_regs, kvm_sregs, kvm_xsave, nmsrs + pad,
# HL_NMSRS kvm_msr_entry, kvm_debugregs.
REGS = struct.Struct("<18Q")  # rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rip rflags
SEGMENT = struct.Struct("<QIH9Bx")  # base limit selector type present dpl db s l g avl unusable
DTABLE = struct.Struct("<QH6x")
SREGS_AT = REGS.size
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
DTABLES_AT = SREGS_AT + len(SEGMENTS) * SEGMENT.size
CONTROL = struct.Struct("<7Q4Q")  # cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4]
CONTROL_AT = DTABLES_AT + 2 * DTABLE.size
XSAVE_AT = CONTROL_AT + CONTROL.size
XSAVE_SIZE = 4096
MSRS_AT = XSAVE_AT + XSAVE_SIZE
MSR = struct.Struct("<IIQ")
MSR_INDICES = (0x174, 0x175, 0x176, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102)
DEBUG_AT = MSRS_AT + 8 + len(MSR_INDICES) * MSR.size
DEBUG = struct.Struct("<6QQ9Q")  # db[4] dr6 dr7 flags reserved[9]
STATE_SIZE = DEBUG_AT + DEBUG.size

# What a new vCPU holds, and what the profiles set (kvm.pyx's setup_long_mode and
# setup_protected_mode use these).
APIC_BASE = 0xFEE00900  # the default xAPIC base, enabled, bootstrap processor
PAT_RESET = 0x0007040600070406
DR6_RESET, DR7_RESET = 0xFFFF0FF0, 0x400
AMD64_CR0 = 0x80010033  # PG, WP, NE, ET, MP, PE
AMD64_CR4 = 0x20 | 0x200 | 0x400  # PAE, OSFXSR, OSXMMEXCPT (SSE at CPL3)
AMD64_EFER = 0xD00  # NXE, LMA, LME; no SCE: `syscall` from the guest raises #UD
I686_CR0 = 0x11  # PE, ET: protected mode without paging
I686_CR0_BITS = 0x6005003F  # PE MP EM TS ET NE, WP, AM, NW CD (no PG)
I686_CR4_BITS = 0x0000075F  # VME PVI TSD DE PSE MCE PGE PCE OSFXSR OSXMMEXCPT
I686_EFER_BITS = 0x801  # SCE, NXE
RFLAGS_FIXED = 0x2
# Flags a CPL3 guest can set itself (CF PF AF ZF SF TF DF OF NT RF AC ID): not IF, IOPL, VM, VIF, VIP.
AMD64_RFLAGS_BITS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4000 | 0x10000 | 0x40000 | 0x200000
# Every architectural flag but VM (virtual-8086 mode), VIF and VIP.
I686_RFLAGS_BITS = AMD64_RFLAGS_BITS | 0x200 | 0x3000
XSTATE_LEGACY = 0x3  # x87, SSE: the components hlsandbox guests can use
# KVM also reports PKRU on hosts with protection keys (the standard-format XSAVE area
# keeps it at 0xA80); a host without them refuses it (a SnapshotMismatch at from_snapshot).
XSTATE_PKRU, PKRU_AT = 1 << 9, 0xA80


@dataclass(frozen=True)
class Segment:
    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 (the architecture's name)
    g: int
    avl: int
    unusable: int

    def attributes(self) -> tuple[int, ...]:
        return (self.limit, self.type, self.present, self.dpl, self.db, self.s, self.l, self.g, self.avl,
                self.unusable)


def flat_segment(selector: int, code: bool, dpl: int, long_mode: bool) -> Segment:
    """What kvm.pyx's _flat_segment() sets (type with the accessed bit)."""
    return Segment(0, 0xFFFFFFFF, selector, 11 if code else 3, 1, dpl, 0 if code and long_mode else 1, 1,
                   1 if code and long_mode else 0, 1, 0, 0)


@dataclass(frozen=True)
class Expected:
    """What a profile's vCPU must hold, from the sandbox's layout."""
    profile: str  # "amd64" or "i686"
    code: tuple[int, int]  # [start, end) of the guest's code (RIP)
    stack: tuple[int, int]  # (bottom, top]: RSP
    cr3: int  # amd64: the page tables
    gdt: tuple[int, int]  # base, limit
    idt: tuple[int, int]
    tss: tuple[int, int, int]  # base, limit, selector


def canonical(x: int) -> bool:
    return x < 1 << 47 or x >= (1 << 64) - (1 << 47)


def state_problems(state: bytes, want: Expected) -> list[str]:
    """What is wrong with `state` for a vCPU of `want` (empty: nothing)."""
    if len(state) != STATE_SIZE:
        return [f"{len(state)} bytes, expected {STATE_SIZE}"]
    p: list[str] = []
    amd64 = want.profile == "amd64"
    regs = REGS.unpack_from(state, 0)
    rip, rsp, rflags = regs[16], regs[6], regs[17]
    if not want.code[0] <= rip < want.code[1]:
        p.append(f"rip {rip:#x} is outside the guest code")
    if not want.stack[0] < rsp <= want.stack[1]:
        p.append(f"rsp {rsp:#x} is outside the stack")
    allowed = AMD64_RFLAGS_BITS if amd64 else I686_RFLAGS_BITS
    if rflags & ~(allowed | RFLAGS_FIXED) or not rflags & RFLAGS_FIXED:
        p.append(f"rflags {rflags:#x} has flags the guest cannot set (allowed: {allowed:#x} and bit 1 set)")
    if not amd64 and (rip >> 32 or rsp >> 32):
        p.append("rip/rsp beyond 32 bits")
    p += _segment_problems(state, want)
    cr0, cr2, cr3, cr4, cr8, efer, apic_base, *pending = CONTROL.unpack_from(state, CONTROL_AT)
    if amd64:
        if (cr0, cr4, efer) != (AMD64_CR0, AMD64_CR4, AMD64_EFER):
            p.append(f"CR0/CR4/EFER {cr0:#x}/{cr4:#x}/{efer:#x} are not long mode as hlsandbox sets it "
                     f"({AMD64_CR0:#x}/{AMD64_CR4:#x}/{AMD64_EFER:#x})")
        if cr3 != want.cr3:
            p.append(f"CR3 {cr3:#x} is not the page tables at {want.cr3:#x}")
    else:
        if cr0 & 0x80000001 != 1 or cr0 & ~I686_CR0_BITS or (cr0 & 0x20000000 and not cr0 & 0x40000000):
            p.append(f"CR0 {cr0:#x} is not protected mode without paging")
        if cr4 & ~I686_CR4_BITS:
            p.append(f"CR4 {cr4:#x} has bits the i686 profile does not use (allowed: {I686_CR4_BITS:#x})")
        if efer & ~I686_EFER_BITS:
            p.append(f"EFER {efer:#x} has bits the i686 profile does not use (allowed: {I686_EFER_BITS:#x})")
        if cr3 >> 32:
            p.append(f"CR3 {cr3:#x} is beyond 32 bits")
    if cr8:
        p.append(f"CR8 {cr8:#x} is not 0")
    if apic_base != APIC_BASE:
        p.append(f"APIC base {apic_base:#x} is not {APIC_BASE:#x}")
    if any(pending):
        p.append("an interrupt is pending")
    p += _xsave_problems(state)
    p += _msr_problems(state, amd64)
    p += _debug_problems(state, amd64)
    if not canonical(cr2):
        p.append(f"CR2 {cr2:#x} is not canonical")
    return p


def _segments(state: bytes) -> dict[str, Segment]:
    return {name: Segment(*SEGMENT.unpack_from(state, SREGS_AT + i * SEGMENT.size))
            for i, name in enumerate(SEGMENTS)}


def _segment_problems(state: bytes, want: Expected) -> list[str]:
    p = []
    amd64 = want.profile == "amd64"
    seg = _segments(state)
    dpl = 3 if amd64 else 0
    code = flat_segment(0x23 if amd64 else 0x08, True, dpl, amd64)
    data = flat_segment(0x1B if amd64 else 0x10, False, dpl, amd64)
    if seg["cs"] != code:
        p.append(f"CS {seg['cs'].selector:#x} (DPL {seg['cs'].dpl}) is not the profile's code segment")
    if seg["ss"] != data:
        p.append(f"SS {seg['ss'].selector:#x} is not the profile's stack segment")
    for name in ("ds", "es", "fs", "gs"):
        s = seg[name]
        null = s.selector < 4 and s.unusable == 1
        flat = s.selector & ~3 == data.selector & ~3 and s.attributes() == data.attributes()
        base_ok = s.base == 0 or (name in ("fs", "gs") and (canonical(s.base) if amd64 else s.base < 1 << 32))
        if not (null or (flat and base_ok)):
            p.append(f"{name.upper()} (selector {s.selector:#x}, base {s.base:#x}) is neither null nor the "
                     f"profile's data segment")
    tr = seg["tr"]
    tss_base, tss_limit, tss_selector = want.tss
    want_tr = Segment(tss_base, tss_limit, tss_selector, 11, 1, 0, 0, 0, 0, 0, 0, 0)
    if amd64 and tr != want_tr:
        p.append("TR is not the sandbox's TSS")
    if not amd64 and not (tr.type == 11 and tr.present == 1 and (tr.dpl, tr.db, tr.s, tr.l, tr.g, tr.avl,
                                                                  tr.unusable) == (0,) * 7
                          and tr.base < 1 << 32 and 0x67 <= tr.limit <= 0xFFFFF
                          and tr.selector & 7 == 0 and tr.selector):
        p.append("TR is not a busy 32-bit TSS")
    if seg["ldt"] != Segment(0, 0xFFFF, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0):
        p.append("LDTR is not the reset value (hlsandbox guests have no LDT)")
    gdt = DTABLE.unpack_from(state, DTABLES_AT)
    idt = DTABLE.unpack_from(state, DTABLES_AT + DTABLE.size)
    if amd64 and (gdt != want.gdt or idt != want.idt):
        p.append("GDTR/IDTR are not the sandbox's tables")
    if not amd64 and (gdt[0] >> 32 or idt[0] >> 32):
        p.append("GDTR/IDTR bases are beyond 32 bits")
    return p


def _xsave_problems(state: bytes) -> list[str]:
    p = []
    x = XSAVE_AT
    mxcsr, = struct.unpack_from("<I", state, x + 24)
    if mxcsr >> 16:
        p.append(f"MXCSR {mxcsr:#x} sets reserved bits")
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", state, x + 512)
    if xstate_bv & ~(XSTATE_LEGACY | XSTATE_PKRU):
        p.append(f"XSAVE header: state components {xstate_bv:#x} beyond x87, SSE and PKRU")
    if xcomp_bv or any(state[x + 528:x + 576]):
        p.append("XSAVE header: compacted format or reserved bytes set")
    if any(state[x + 576:x + PKRU_AT]) or any(state[x + PKRU_AT + 4:x + XSAVE_SIZE]):
        p.append("XSAVE: extended state beyond x87, SSE and PKRU")
    return p


def _msr_problems(state: bytes, amd64: bool) -> list[str]:
    n, pad = struct.unpack_from("<II", state, MSRS_AT)
    if n > len(MSR_INDICES) or pad:
        return [f"MSR count {n} is invalid"]
    p = []
    for i in range(len(MSR_INDICES)):
        index, reserved, value = MSR.unpack_from(state, MSRS_AT + 8 + i * MSR.size)
        if i >= n:
            continue  # beyond the count: not loaded (KVM did not know the MSR where it was saved)
        if index != MSR_INDICES[i] or reserved:
            p.append(f"MSR entry {i} is {index:#x}, expected {MSR_INDICES[i]:#x}")
            continue
        reset = PAT_RESET if index == 0x277 else 0
        if amd64:
            if value != reset:  # a CPL3 guest cannot write MSRs
                p.append(f"MSR {index:#x} = {value:#x}, a CPL3 guest's is {reset:#x}")
        elif index == 0x277:
            if any(b not in (0, 1, 4, 5, 6, 7) for b in value.to_bytes(8, "little")):
                p.append(f"PAT {value:#x} holds an invalid memory type")
        elif index in (0x175, 0x176, 0xC0000082, 0xC0000083, 0xC0000102) and not canonical(value):
            p.append(f"MSR {index:#x} = {value:#x} is not canonical")
        elif index == 0x174 and value >> 32:
            p.append(f"IA32_SYSENTER_CS {value:#x} is beyond 32 bits")
    return p


def _debug_problems(state: bytes, amd64: bool) -> list[str]:
    *db, dr6, dr7, flags = DEBUG.unpack_from(state, DEBUG_AT)[:7]
    reserved = DEBUG.unpack_from(state, DEBUG_AT)[7:]
    if flags or any(reserved):
        return ["debug registers: flags or reserved fields set"]
    if amd64:
        if db != [0, 0, 0, 0] or (dr6, dr7) != (DR6_RESET, DR7_RESET):
            return ["debug registers differ from a new vCPU's (a CPL3 guest cannot set them)"]
        return []
    if any(a >> 32 for a in db) or dr6 >> 32 or dr7 >> 32:
        return ["debug registers beyond 32 bits"]
    return []
