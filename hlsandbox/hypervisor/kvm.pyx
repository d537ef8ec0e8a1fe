# cython: language_level=3, boundscheck=False, wraparound=False
"""KVM in Cython: the VM, its vCPU and memory slot, and the run loop.

KVM_RUN runs without the GIL. The hot path sets no registers: the guest's
dispatch loop resumes from its last `out` (docs/abi.md), so a call is one
KVM_RUN and one exit. Cancellation is a signal to the vCPU thread plus
`immediate_exit`, so a kill that lands just before KVM_RUN is not lost."""
import os
import weakref

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from libc.stdlib cimport calloc, realloc, free
from posix.unistd cimport close as c_close
from posix.mman cimport munmap, MAP_FAILED
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (PyThread_allocate_lock, PyThread_free_lock, PyThread_acquire_lock,
                               PyThread_release_lock, PyLockStatus, PY_LOCK_ACQUIRED, PY_LOCK_INTR,
                               NOWAIT_LOCK)
from libc.math cimport isfinite

from .device cimport cancel_signal, create_vm_fd, kvm_fd, vcpu_mmap_size
from .linux_kvm cimport (
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_SYNC_REGS,
    KVM_CHECK_EXTENSION,
    KVM_EXIT_DIRTY_RING_FULL,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_RESET_DIRTY_RINGS,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
)
import time

from ..errors import (HyperlightError, KvmUnavailable, SandboxBusy, SandboxClosed,
                      UsedAfterFork)
from .device import fd_exhausted
from . import vcpu_state as _vcpu_state

cdef extern from "errno.h":
    int errno
    int EINTR, EAGAIN, EMFILE, ENFILE

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                             int intr_flag) nogil

WAIT_DEFAULT = -2.0  # claim(): wait as long as the VM's max_wait says
cdef double _WAIT_DEFAULT = -2.0

# Every live VM, so a forked child can mark those of its parent unusable (no per-call check).
_live = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for vm in list(_live):
        (<VirtualMachine>vm)._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil

cdef extern from "unistd.h" nogil:
    int usleep(unsigned int usec)

cdef extern from "sys/ioctl.h" nogil:
    int ioctl(int fd, unsigned long request, ...)

# What run() returns besides a port number (0..65535) for `out` (RunExit in kvm.pxd).
EXIT_CANCELED = RUN_CANCELED
EXIT_MMIO = RUN_MMIO
EXIT_SHUTDOWN = RUN_SHUTDOWN
EXIT_INTERNAL_ERROR = RUN_INTERNAL_ERROR
EXIT_HLT = RUN_HLT
EXIT_BAD_IO = RUN_BAD_IO
EXIT_FAIL_ENTRY = RUN_FAIL_ENTRY
EXIT_OTHER = RUN_OTHER

cdef int terminal_exit_code(uint32_t reason) noexcept nogil:
    """run()'s code for an exit that ends a run (MMIO, shutdown, internal error, HLT, failed
    entry, anything else): shared by the cold run loop and hot mode's vCPU thread."""
    if reason == KVM_EXIT_MMIO:
        return RUN_MMIO
    if reason == KVM_EXIT_SHUTDOWN:
        return RUN_SHUTDOWN
    if reason == KVM_EXIT_INTERNAL_ERROR:
        return RUN_INTERNAL_ERROR
    if reason == KVM_EXIT_HLT:
        return RUN_HLT
    if reason == KVM_EXIT_FAIL_ENTRY:
        return RUN_FAIL_ENTRY
    return RUN_OTHER


# What VirtualMachine.load_state loads.
LOAD_REGS, LOAD_SREGS, LOAD_FPU, LOAD_MSRS, LOAD_DEBUG = 1, 2, 4, 8, 16
LOAD_ALL = 31

cdef enum:
    HL_LOAD_REGS = 1
    HL_LOAD_SREGS = 2
    HL_LOAD_FPU_MSRS = 4 | 8 | 16  # the parts loaded with vCPU ioctls: FPU, MSRs, debug registers
DIRTY_RING_ENTRIES = 4096  # 64 KiB a vCPU; a fuller ring makes KVM exit and we harvest
# HLSANDBOX_SERIAL_VM_SETUP=1: register memory slots before creating the vCPU, in line,
# instead of on the helper thread of vm_setup.h (to measure what the overlap saves).
cdef bint _serial_setup = os.environ.get("HLSANDBOX_SERIAL_VM_SETUP") == "1"


def _set_serial_setup(bint serial) -> bool:
    """Tests and benchmarks: choose the in-line VM setup (True) or the helper thread; returns
    the previous choice."""
    global _serial_setup
    old = _serial_setup
    _serial_setup = serial
    return old


# The FPU state and MSRs of a vCPU that has not run, read once per process for vCPUs with
# and without a CPUID table ([1] and [0]; what KVM exports may depend on the table):
# loading a snapshot whose parts equal them into a new vCPU skips those vCPU ioctls (a
# CPL3 guest cannot change MSRs, so amd64 snapshots never need KVM_SET_MSRS there).
cdef hl_vcpu_state _reset_states[2]
cdef bint _have_reset_state[2]
cdef inline void _flat_segment(kvm_segment *s, uint16_t selector, bint code, uint8_t dpl, bint long_mode):
    """A flat 4 GiB segment: 64-bit code (L=1) or 32-bit (D/B=1) code or data."""
    memset(s, 0, sizeof(kvm_segment))
    s.base = 0
    s.limit = 0xffffffff
    s.selector = selector
    s.type = 11 if code else 3
    s.present = 1
    s.dpl = dpl
    s.s = 1
    s.g = 1
    s.l = 1 if code and long_mode else 0
    s.db = 0 if code and long_mode else 1


cdef class VirtualMachine:
    """One VM with one vCPU and guest memory in slot 0 at guest physical address 0.

    The call state (active, generation, cancel flag) changes only while the GIL is
    held, which makes begin/end/kill atomic with respect to each other without a lock;
    only KVM_RUN itself runs without the GIL."""

    def __cinit__(self):
        self.vm_fd = -1
        self.vcpu_fd = -1
        self.run_ptr = NULL
        self.max_wait = -1.0
        self.call_lock = PyThread_allocate_lock()
        if self.call_lock == NULL:
            raise MemoryError()

    def __init__(self, memory, size_t host_address, slots, const uint8_t[::1] initial_state=None,
                 bint set_cpuid=True):
        """memory: an object exporting the guest memory buffer (kept alive), mapped at
        host_address. slots: (guest_physical_address, size, log_dirty, host_offset) tuples,
        at most 8. initial_state: a state from save_state() to start from (as load_state()
        with LOAD_ALL, its FPU state and MSRs loaded while the VM is set up).
        set_cpuid=False leaves the vCPU's CPUID table empty (cpuid_needed() says when
        that is safe): the guest then has 36 physical address bits."""
        cdef int kfd = kvm_fd()
        cdef kvm_userspace_memory_region regions[8]
        cdef hl_vm_setup setup
        cdef int i, rc
        cdef uint64_t gpa, size, host_offset, max_pages = 0
        cdef const hl_vcpu_state *state = NULL
        cdef int mode = 1 if set_cpuid else 0
        cdef hl_vcpu_state *reset = &_reset_states[mode]
        self.memory = memory
        if len(slots) > 8:
            raise ValueError("at most 8 memory slots")
        if initial_state is not None:
            if initial_state.shape[0] != sizeof(hl_vcpu_state):
                raise ValueError(f"vCPU state is {initial_state.shape[0]} bytes, expected {sizeof(hl_vcpu_state)}")
            state = <const hl_vcpu_state *>&initial_state[0]
        memset(regions, 0, sizeof(regions))
        for i, (gpa, size, log, host_offset) in enumerate(slots):
            if gpa % 4096 or size % 4096 or host_offset % 4096 or size == 0:
                raise ValueError(f"slot {i} is not page aligned or empty")
            self.slot_pages[i] = size // 4096
            self.slot_host_page[i] = host_offset // 4096
            self.slot_logged[i] = bool(log)
            if log:
                max_pages = max(max_pages, size // 4096)
            regions[i].slot = i
            regions[i].flags = KVM_MEM_LOG_DIRTY_PAGES if log else 0
            regions[i].guest_phys_addr = gpa
            regions[i].memory_size = size
            regions[i].userspace_addr = host_address + host_offset
        self.nslots = len(slots)
        self.vm_fd = create_vm_fd(kfd)
        if self.vm_fd < 0:
            exhausted = fd_exhausted(errno, "KVM_CREATE_VM")
            if exhausted is not None:
                raise exhausted
            raise KvmUnavailable(f"KVM_CREATE_VM failed: {os.strerror(errno)}")
        try:
            self.sync_regs = ioctl(kfd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) > 0
            if max_pages:
                max_ring = ioctl(self.vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING)
                if max_ring >= DIRTY_RING_ENTRIES * 16 and os.environ.get("HLSANDBOX_DIRTY_BITMAP") != "1":
                    rc = hl_enable_dirty_ring(self.vm_fd, DIRTY_RING_ENTRIES * 16)  # before any vCPU
                    if rc < 0:
                        raise OSError(-rc, f"enabling the KVM dirty ring: {os.strerror(-rc)}")
                    self.uses_dirty_ring = True
                else:
                    self.bitmap = <uint64_t *>calloc((max_pages + 63) // 64 + 1, 8)
                    if self.bitmap == NULL:
                        raise MemoryError()
            memset(&setup, 0, sizeof(setup))
            setup.kvm_fd = kfd
            setup.vm_fd = self.vm_fd
            setup.nslots = self.nslots
            setup.regions = regions
            setup.state = state
            # The first VM of the process reads a new vCPU's state before loading anything.
            setup.parts = 0 if state == NULL or not _have_reset_state[mode] else \
                HL_LOAD_FPU_MSRS & ~hl_state_same_parts(state, reset, HL_LOAD_FPU_MSRS)
            setup.flags = (HL_SETUP_SERIAL if _serial_setup else 0) | (0 if set_cpuid else HL_SETUP_NO_CPUID)
            setup.run_size = vcpu_mmap_size()
            setup.ring_bytes = DIRTY_RING_ENTRIES * 16 if self.uses_dirty_ring else 0
            with nogil:  # vCPU creation and slot registration overlap (vm_setup.h)
                rc = hl_setup_vm(&setup)
            self.vcpu_fd = setup.vcpu_fd
            if setup.run != MAP_FAILED:
                self.run_ptr = <kvm_run *>setup.run
            if setup.ring != MAP_FAILED:
                self.ring = <kvm_dirty_gfn *>setup.ring
                self.ring_entries = DIRTY_RING_ENTRIES
            if rc < 0:
                step = setup.step.decode()
                if setup.failed_slot >= 0:
                    gpa, size = slots[setup.failed_slot][0], slots[setup.failed_slot][1]
                    step += f" (slot {setup.failed_slot}, {size} bytes at {gpa:#x})"
                exhausted = fd_exhausted(setup.err, step)
                if exhausted is not None:
                    raise exhausted
                if step == "KVM_CREATE_VCPU":
                    raise KvmUnavailable(f"KVM_CREATE_VCPU failed: {os.strerror(setup.err)}")
                raise OSError(setup.err, f"{step}: {os.strerror(setup.err)}")
            what = HL_LOAD_REGS | HL_LOAD_SREGS  # staged for the first run (sync regs: no ioctl)
            if not _have_reset_state[mode]:
                rc = hl_save_state(self.vcpu_fd, reset)
                if rc < 0:
                    raise OSError(-rc, f"reading a new vCPU's state: {os.strerror(-rc)}")
                _have_reset_state[mode] = True
                if state != NULL:
                    what |= HL_LOAD_FPU_MSRS & ~hl_state_same_parts(state, reset, HL_LOAD_FPU_MSRS)
            self.reset = reset
            self.at_reset = HL_LOAD_FPU_MSRS & ~(setup.parts | what)
            if state != NULL:
                rc = hl_load_state(self.vcpu_fd, self.run_ptr, state, self.sync_regs, what)
                if rc < 0:
                    raise OSError(-rc, f"loading the vCPU state: {os.strerror(-rc)}")
        except BaseException:
            self._release()
            raise
        _live.add(self)

    def _forget_after_fork(self) -> None:
        """In a forked child: the VM, its vCPU and the call state belong to the parent.
        Drops this process's copies (a running call's thread does not exist here) and makes
        every later use raise UsedAfterFork."""
        self.forked = True
        self.active = False
        self.cancel_requested = False
        # The lock may have been held by a parent thread; a new one (the old one leaks).
        self.call_lock = PyThread_allocate_lock()
        self._release()

    cdef void _release(self) noexcept:
        if self.ring != NULL:
            munmap(self.ring, self.ring_entries * 16)
            self.ring = NULL
        if self.run_ptr != NULL:
            munmap(self.run_ptr, vcpu_mmap_size())
            self.run_ptr = NULL
        if self.vcpu_fd >= 0:
            c_close(self.vcpu_fd)
            self.vcpu_fd = -1
        if self.vm_fd >= 0:
            c_close(self.vm_fd)
            self.vm_fd = -1
        free(self.bitmap)
        self.bitmap = NULL
        free(self.dirty)
        self.dirty = NULL
        self.n_dirty = self.cap_dirty = 0
        self.memory = None

    def check_closable(self) -> None:
        """Raises if the calling thread is inside a call of this VM (a host function)."""
        if self.active and pthread_equal(self.thread, pthread_self()):
            raise HyperlightError("cannot close a sandbox from inside its own call")

    def close(self) -> None:
        """Destroys the VM; a call running in another thread is killed and waited for first,
        calls waiting for the vCPU raise SandboxClosed."""
        self.check_closable()
        self.closing = True
        if self.active:
            self.kill()
            while self.active:
                with nogil:
                    usleep(1000)
        self.closed = True
        self._release()

    def __dealloc__(self):
        self._release()
        if self.call_lock != NULL:
            PyThread_free_lock(self.call_lock)

    cdef void _check(self) except *:
        if self.run_ptr == NULL:
            if self.forked:
                raise UsedAfterFork("this sandbox was created by the parent process before fork(); "
                                    "its VM belongs to the parent: create a new sandbox in the child")
            raise SandboxClosed("the sandbox is closed")

    def setup_long_mode(self, uint64_t cr3, uint64_t gdt, uint16_t gdt_limit, uint64_t idt,
                        uint16_t idt_limit, uint64_t tss, uint32_t tss_limit, uint64_t fs_base=0) -> None:
        """64-bit mode with paging, CS/SS at CPL3, the TSS for faults and I/O permissions;
        `fs_base`: the guest's thread pointer (docs/abi.md), 0 for none."""
        # vcpu_state.py says what each bit of CR0, CR4 and EFER is for
        self._set_mode(_vcpu_state.AMD64_CR0, _vcpu_state.AMD64_CR4, _vcpu_state.AMD64_EFER,
                       cr3, 0x23, 0x1b, 3, True, gdt, gdt_limit, idt, idt_limit, tss, tss_limit, 0x28)
        cdef kvm_sregs s
        if fs_base:
            if ioctl(self.vcpu_fd, KVM_GET_SREGS, &s) < 0:
                raise OSError(errno, "KVM_GET_SREGS")
            s.fs.base = fs_base
            if ioctl(self.vcpu_fd, KVM_SET_SREGS, &s) < 0:
                raise OSError(errno, f"KVM_SET_SREGS: {os.strerror(errno)}")

    def setup_protected_mode(self, uint64_t gdt, uint16_t gdt_limit, uint64_t idt, uint16_t idt_limit,
                             uint64_t tss) -> None:
        """32-bit protected mode without paging at CPL0, flat segments (the i686 profile)."""
        self._set_mode(_vcpu_state.I686_CR0, 0, 0, 0,  # CR0: PE, ET; no paging
                       0x08, 0x10, 0, False, gdt, gdt_limit, idt, idt_limit, tss, 0x67, 0x18)

    cdef _set_mode(self, uint64_t cr0, uint64_t cr4, uint64_t efer, uint64_t cr3, uint16_t cs, uint16_t ds,
                   uint8_t dpl, bint long_mode, uint64_t gdt, uint16_t gdt_limit, uint64_t idt,
                   uint16_t idt_limit, uint64_t tss, uint32_t tss_limit, uint16_t tss_selector):
        """Control registers, flat segments, descriptor tables and a busy TSS in one SET_SREGS."""
        self._check()
        cdef kvm_sregs s
        if ioctl(self.vcpu_fd, KVM_GET_SREGS, &s) < 0:
            raise OSError(errno, "KVM_GET_SREGS")
        s.cr0, s.cr3, s.cr4, s.efer = cr0, cr3, cr4, efer
        _flat_segment(&s.cs, cs, True, dpl, long_mode)
        _flat_segment(&s.ss, ds, False, dpl, long_mode)
        s.ds = s.ss
        s.es = s.ss
        s.fs = s.ss
        s.gs = s.ss
        memset(&s.tr, 0, sizeof(kvm_segment))
        s.tr.base = tss
        s.tr.limit = tss_limit
        s.tr.selector = tss_selector
        s.tr.type = 11  # busy TSS
        s.tr.present = 1
        s.gdt.base = gdt
        s.gdt.limit = gdt_limit
        s.idt.base = idt
        s.idt.limit = idt_limit
        if ioctl(self.vcpu_fd, KVM_SET_SREGS, &s) < 0:
            raise OSError(errno, f"KVM_SET_SREGS: {os.strerror(errno)}")

    def set_regs(self, **values) -> None:
        """Sets general registers by name (others zero, rflags 0x2 unless given)."""
        self._check()
        cdef kvm_regs r
        memset(&r, 0, sizeof(r))
        r.rflags = 2
        d = dict(values)
        r.rax = d.pop("rax", 0); r.rbx = d.pop("rbx", 0); r.rcx = d.pop("rcx", 0); r.rdx = d.pop("rdx", 0)
        r.rsi = d.pop("rsi", 0); r.rdi = d.pop("rdi", 0); r.rsp = d.pop("rsp", 0); r.rbp = d.pop("rbp", 0)
        r.r8 = d.pop("r8", 0); r.r9 = d.pop("r9", 0); r.r10 = d.pop("r10", 0); r.r11 = d.pop("r11", 0)
        r.r12 = d.pop("r12", 0); r.r13 = d.pop("r13", 0); r.r14 = d.pop("r14", 0); r.r15 = d.pop("r15", 0)
        r.rip = d.pop("rip", 0); r.rflags = d.pop("rflags", 2)
        if d:
            raise ValueError(f"unknown registers: {sorted(d)}")
        if ioctl(self.vcpu_fd, KVM_SET_REGS, &r) < 0:
            raise OSError(errno, f"KVM_SET_REGS: {os.strerror(errno)}")

    def get_regs(self) -> dict:
        """The general registers (a vCPU ioctl: not for the hot path)."""
        self._check()
        cdef kvm_regs r
        if ioctl(self.vcpu_fd, KVM_GET_REGS, &r) < 0:
            raise OSError(errno, f"KVM_GET_REGS: {os.strerror(errno)}")
        return dict(rax=r.rax, rbx=r.rbx, rcx=r.rcx, rdx=r.rdx, rsi=r.rsi, rdi=r.rdi, rsp=r.rsp,
                    rbp=r.rbp, r8=r.r8, r9=r.r9, r10=r.r10, r11=r.r11, r12=r.r12, r13=r.r13,
                    r14=r.r14, r15=r.r15, rip=r.rip, rflags=r.rflags)

    def get_sregs(self) -> dict:
        self._check()
        cdef kvm_sregs s
        if ioctl(self.vcpu_fd, KVM_GET_SREGS, &s) < 0:
            raise OSError(errno, f"KVM_GET_SREGS: {os.strerror(errno)}")
        return dict(cr0=s.cr0, cr2=s.cr2, cr3=s.cr3, cr4=s.cr4, efer=s.efer, cs=s.cs.selector,
                    ss=s.ss.selector, cpl=s.cs.dpl)

    # -- running ------------------------------------------------------------------------------

    cdef uint64_t claim(self, double wait=_WAIT_DEFAULT) except 0:
        """Claims the vCPU for a call. A call running in another thread is waited for, up to
        `wait` seconds (< 0: no limit, the default: max_wait), else SandboxBusy."""
        self._check()
        if not PyThread_acquire_lock(self.call_lock, NOWAIT_LOCK):
            self._wait_turn(self.max_wait if wait == _WAIT_DEFAULT else wait)
        if self.closing or self.run_ptr == NULL:
            PyThread_release_lock(self.call_lock)
            self._check()
            raise SandboxClosed("the sandbox was closed while this call waited for it")
        self.active = True
        self.generation += 1
        self.thread = self.signal_thread = pthread_self()
        self.cancel_requested = False
        self.run_ptr.immediate_exit = 0
        return self.generation

    cdef void _wait_turn(self, double wait) except *:
        """Acquires call_lock, held by another call, within `wait` seconds (Ctrl-C works)."""
        cdef PyLockStatus got
        cdef long long us
        if self.active and pthread_equal(self.thread, pthread_self()):
            raise SandboxBusy("the sandbox is already running a call on this thread (a host function "
                              "cannot call into its own sandbox)")
        if wait == 0:
            raise SandboxBusy("the sandbox is already running a call from another thread")
        deadline = time.monotonic() + wait if wait > 0 and isfinite(wait) else None
        while True:
            if deadline is None:
                us = -1
            else:  # at most an hour per wait: any wait fits the lock's limit (the loop goes on)
                us = <long long>min(3.6e9, max(0.0, (deadline - time.monotonic()) * 1e6))
            with nogil:
                got = PyThread_acquire_lock_timed(self.call_lock, us, 1)
            if got == PY_LOCK_ACQUIRED:
                return
            if got == PY_LOCK_INTR or (deadline is not None and time.monotonic() < deadline):
                PyErr_CheckSignals()  # e.g. KeyboardInterrupt
                continue
            raise SandboxBusy(f"the sandbox is already running a call from another thread; "
                              f"waited {wait:g} s for it")

    cdef void release(self) noexcept:
        if self.active:
            PyThread_release_lock(self.call_lock)
        self.active = False
        self.cancel_requested = False
        if self.run_ptr != NULL:
            self.run_ptr.immediate_exit = 0

    def kill(self, generation: int = -1) -> bool:
        """Stops the running call (from any thread); False if no call is running, or if
        `generation` is given and the running call is not that one."""
        if self.forked:
            self._check()
        if not self.active or self.run_ptr == NULL:
            return False
        if generation >= 0 and <uint64_t>generation != self.generation:
            return False
        if self.cancel_requested:  # already on its way: another signal would only slow the exit down
            return True
        self.cancel_requested = True
        self.run_ptr.immediate_exit = 1  # a kill just before KVM_RUN is not lost
        pthread_kill(self.signal_thread, cancel_signal())
        return True

    cpdef int run(self) except? -100:
        """Runs the vCPU until an exit hlsandbox handles: returns the port of an `out`,
        or one of the EXIT_* codes (EXIT_CANCELED after kill())."""
        self._check()
        cdef int rc, err
        cdef uint32_t reason
        cdef kvm_run *run = self.run_ptr
        cdef int fd = self.vcpu_fd
        self.at_reset = 0  # the guest may change its FPU state (and, at CPL0, MSRs)
        while True:
            with nogil:
                rc = ioctl(fd, KVM_RUN, 0)
                err = errno
            if rc < 0:
                if err == EINTR or err == EAGAIN:
                    if self.cancel_requested:
                        return EXIT_CANCELED
                    PyErr_CheckSignals()  # e.g. KeyboardInterrupt on the main thread
                    continue
                raise OSError(err, f"KVM_RUN failed: {os.strerror(err)}")
            reason = run.exit_reason
            if reason == KVM_EXIT_IO:
                if hl_io_direction(run) == KVM_EXIT_IO_OUT and hl_io_size(run) == 1 and hl_io_count(run) == 1:
                    return hl_io_port(run)
                return EXIT_BAD_IO
            if reason == KVM_EXIT_INTR:
                if self.cancel_requested:
                    return EXIT_CANCELED
                PyErr_CheckSignals()
                continue
            if reason == KVM_EXIT_DIRTY_RING_FULL:
                self.harvest_c()
                continue
            return terminal_exit_code(reason)

    def complete_pending_exit(self) -> None:
        """Lets KVM finish the instruction of the last exit (the data of an `in`, an MMIO
        read) without running guest code: KVM_RUN with immediate_exit set (KVM API,
        "immediate_exit"). KVM completes such an operation at the next KVM_RUN from the
        state it saved, whatever userspace set meanwhile (on kvm-pvm an `in` then resumes
        after itself, ignoring a restored RIP): call this after an exit the guest is not
        resumed from, before the vCPU state is changed or saved."""
        self._check()
        cdef int rc = 0, _i
        cdef int fd = self.vcpu_fd
        self.run_ptr.immediate_exit = 1
        for _i in range(64):  # a string instruction may need several exits to finish
            with nogil:
                rc = ioctl(fd, KVM_RUN, 0)
            if rc < 0:
                break
        self.run_ptr.immediate_exit = 1 if self.cancel_requested else 0

    # -- dirty pages and vCPU state (snapshots) ---------------------------------------------

    cdef int _add_dirty(self, uint64_t page) except -1:
        cdef uint64_t *grown
        if self.n_dirty == self.cap_dirty:
            self.cap_dirty = self.cap_dirty * 2 if self.cap_dirty else 1024
            grown = <uint64_t *>realloc(self.dirty, self.cap_dirty * 8)
            if grown == NULL:
                raise MemoryError()
            self.dirty = grown
        self.dirty[self.n_dirty] = page
        self.n_dirty += 1
        return 0

    cdef int harvest_c(self) except -1:
        """Moves the pages KVM logged as written into `dirty` (as host-memory page indices)
        and re-arms logging. With the dirty ring this costs O(pages written), whatever the
        slots' sizes."""
        cdef kvm_dirty_gfn *e
        cdef uint64_t w, bits, i, words
        cdef uint32_t slot
        cdef int n = 0, s
        if self.uses_dirty_ring:
            while True:
                e = &self.ring[self.ring_fetch % self.ring_entries]
                if not hl_gfn_dirty(e):
                    break
                slot = e.slot & 0xffff
                if slot < <uint32_t>self.nslots and self.slot_logged[slot] and e.offset < self.slot_pages[slot]:
                    self._add_dirty(self.slot_host_page[slot] + e.offset)
                hl_gfn_collected(e)
                self.ring_fetch += 1
                n += 1
            if n and ioctl(self.vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0:
                raise OSError(errno, f"KVM_RESET_DIRTY_RINGS: {os.strerror(errno)}")
            return 0
        if self.bitmap == NULL:
            return 0
        for s in range(self.nslots):
            if not self.slot_logged[s]:
                continue
            if hl_get_dirty_log(self.vm_fd, s, self.bitmap) < 0:
                raise OSError(errno, f"KVM_GET_DIRTY_LOG: {os.strerror(errno)}")
            words = (self.slot_pages[s] + 63) // 64
            for w in range(words):
                bits = self.bitmap[w]
                while bits:
                    i = __builtin_ctzll(bits)
                    if w * 64 + i < self.slot_pages[s]:
                        self._add_dirty(self.slot_host_page[s] + w * 64 + i)
                    bits &= bits - 1
        return 0

    def discard_dirty_pages(self) -> None:
        """Forgets the pages written so far (the memory now is the new baseline)."""
        self._check()
        self.harvest_c()
        self.n_dirty = 0

    def save_state(self) -> bytes:
        """Registers, segment registers, FPU/XSAVE state, MSRs and debug registers (vCPU
        ioctls: not hot)."""
        self._check()
        cdef hl_vcpu_state st
        cdef int rc = hl_save_state(self.vcpu_fd, &st)
        if rc < 0:
            raise OSError(-rc, f"saving the vCPU state: {os.strerror(-rc)}")
        return (<char *>&st)[:sizeof(hl_vcpu_state)]

    def load_state(self, const uint8_t[::1] state, int what=LOAD_ALL) -> None:
        """Loads (parts of, see LOAD_*) a state from save_state(); registers take effect
        at the next run."""
        self._check()
        if state.shape[0] != sizeof(hl_vcpu_state):
            raise ValueError(f"vCPU state is {state.shape[0]} bytes, expected {sizeof(hl_vcpu_state)}")
        cdef const hl_vcpu_state *st = <const hl_vcpu_state *>&state[0]
        if self.at_reset:  # loading what the vCPU already holds changes nothing
            what &= ~hl_state_same_parts(st, self.reset, what & self.at_reset)
        self.at_reset &= ~what
        cdef int rc = hl_load_state(self.vcpu_fd, self.run_ptr, st, self.sync_regs, what)
        if rc < 0:
            raise OSError(-rc, f"loading the vCPU state: {os.strerror(-rc)}")

    # -- exit details (read after run() returned) ---------------------------------------------

    @property
    def exit_reason(self) -> int:
        self._check()
        return self.run_ptr.exit_reason

    def io_byte(self) -> int:
        """The byte of the last `out`."""
        self._check()
        return hl_io_byte(self.run_ptr)

    def io_detail(self) -> dict:
        self._check()
        return dict(port=hl_io_port(self.run_ptr), size=hl_io_size(self.run_ptr),
                    count=hl_io_count(self.run_ptr), out=hl_io_direction(self.run_ptr) == KVM_EXIT_IO_OUT)

    def mmio_detail(self) -> dict:
        self._check()
        return dict(address=hl_mmio_addr(self.run_ptr), length=hl_mmio_len(self.run_ptr),
                    write=bool(hl_mmio_is_write(self.run_ptr)))

    def internal_error(self) -> dict:
        self._check()
        n = min(hl_internal_ndata(self.run_ptr), 16)
        return dict(suberror=hl_internal_suberror(self.run_ptr),
                    data=[hl_internal_data(self.run_ptr, i) for i in range(n)])

    def fail_entry_reason(self) -> int:
        self._check()
        return hl_fail_entry_reason(self.run_ptr)


STATE_SIZE = sizeof(hl_vcpu_state)
