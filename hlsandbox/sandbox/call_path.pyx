# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-call hot path in Cython: claim the vCPU, write the CALL record, run until
HALT, read the result. Exits other than HALT (host calls, logs, prints, faults) go
to the sandbox's Python handler, which serves them or raises to end the call."""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from ..abi cimport HL_PORT_HALT as PORT_HALT
from ..func.wire cimport RecordStack
from ..hypervisor.kvm cimport VirtualMachine, hl_stage_registers, hl_state_fxsave, hl_state_rip, hl_vcpu_state
from ..mem.shared_memory cimport SharedMemory

from functools import partial

from ..errors import ExecutionCanceled, PoisonedSandbox
from .watchdog import WATCHDOG


cdef class CallPath:
    """Binds a sandbox's VM, buffers and exit handler for fast calls."""

    cdef VirtualMachine vm
    cdef RecordStack input, output
    cdef object serve  # serve(rc, generation): handles one non-HALT exit or raises
    cdef public object on_timeout  # on_timeout(generation): a call's time limit passed
    cdef public bint poisoned  # set when a call ends other than by HALT
    # The snapshot restored last and the generation of the claim that restored it, both set
    # while the vCPU is claimed: if the VM's generation has not moved on, no call has run
    # since and the snapshot's registers are staged, not yet in the vCPU.
    cdef public object pending
    cdef public uint64_t pending_generation

    def __init__(self, VirtualMachine vm, RecordStack input, RecordStack output, serve, on_timeout):
        self.vm = vm
        self.input = input
        self.output = output
        self.serve = serve
        self.on_timeout = on_timeout

    cpdef uint64_t claim(self, double wait=-2.0) except 0:
        """Claims the vCPU for a call, waiting for one running in another thread (`wait`:
        seconds, < 0 no limit, -2 the VM's max_wait); returns its generation."""
        return self.vm.claim(wait)

    cpdef release(self):
        self.vm.release()

    def call(self, bytes name, tuple tags, int ret_tag, tuple args, double wait=-2.0):
        """One guest call; the caller has checked the function exists and the sandbox
        is not poisoned. `wait` as for claim()."""
        cdef uint64_t generation = self.vm.claim(wait)
        try:
            if self.poisoned:  # by the call this one waited for
                raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
            return self._claimed_call(generation, name, tags, ret_tag, args)
        finally:
            self.vm.release()

    def call_limited(self, bytes name, tuple tags, int ret_tag, tuple args, double wait, double timeout, out):
        """call() with a time limit of `timeout` seconds (<= 0: none; on_timeout() stops
        the call when it passes) and, if `out` is not None, the bytes result decoded into
        the writable buffer `out` (returns its length)."""
        cdef uint64_t generation = self.vm.claim(wait)
        try:
            if self.poisoned:  # by the call this one waited for
                raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
            return claimed_limited_call(self, self.input, self.output, generation, name, tags, ret_tag, args,
                                        timeout, out)
        finally:
            self.vm.release()

    def call_restoring(self, bytes name, tuple tags, int ret_tag, tuple args, RestorePlan plan,
                       double wait=-2.0):
        """call(), then, whatever happened, the restore `plan` while the vCPU is still
        claimed: the per-request clean guest, with no Python between call and restore."""
        cdef uint64_t generation = self.vm.claim(wait)
        if self.poisoned:  # by the call this one waited for
            self.vm.release()
            raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
        try:
            return self._claimed_call(generation, name, tags, ret_tag, args)
        finally:
            try:
                plan.apply(self.vm)
                self.poisoned = False
                self.pending, self.pending_generation = plan.snapshot, self.vm.generation
            finally:
                self.vm.release()

    def restore(self, RestorePlan plan):
        """The fast restore `plan` with the vCPU claimed (raises if a call is running);
        the sandbox is no longer poisoned."""
        self.vm.claim()
        try:
            plan.apply(self.vm)
            self.poisoned = False
            self.pending, self.pending_generation = plan.snapshot, self.vm.generation
        finally:
            self.vm.release()

    cdef object _claimed_call(self, uint64_t generation, bytes name, tuple tags, int ret_tag, tuple args):
        self.input.push_call(name, tags, args)
        self.output.clear()
        self.run_until_halt(generation)
        # Decode while the vCPU is still claimed: once release() runs, close() in another
        # thread may unmap guest memory (a GC pass or a GuestError's __init__ can
        # switch threads in the middle of the decode).
        return self.output.pop_result(ret_tag)

    cpdef run_until_halt(self, uint64_t generation):
        """Runs until the guest halts; the vCPU must be claimed with claim(). Anything
        else that ends the run (a fault, an abort, a kill, an error serving an exit)
        leaves the guest mid-call: the sandbox is poisoned."""
        cdef int rc
        try:
            while True:
                rc = self.vm.run()
                if rc == PORT_HALT:
                    return
                self.serve(rc, generation)
        except BaseException as e:
            self.poisoned = True
            if not isinstance(e, ExecutionCanceled) and self.vm.run_ptr != NULL:
                # KVM holds the instruction of the last exit (an `in`'s data, a string
                # I/O) until the next KVM_RUN and would finish it from its saved state
                # over whatever a restore sets: finish it now, without running the guest.
                # (serve() has already read the exit details and registers.)
                self.vm.complete_pending_exit()
            raise


def claimed_limited_call(path, RecordStack input, RecordStack output, uint64_t generation, bytes name,
                         tuple tags, int ret_tag, tuple args, double timeout, out):
    """The body of call_limited() (CallPath and HotPath), the vCPU claimed by the caller."""
    token = WATCHDOG.arm(timeout, partial(path.on_timeout, generation)) if timeout > 0 else None
    try:
        input.push_call(name, tags, args)
        output.clear()
        path.run_until_halt(generation)
    finally:
        if token is not None:
            WATCHDOG.disarm(token)
    # Decoded before the caller's release(), as in CallPath._claimed_call().
    if out is None:
        return output.pop_result(ret_tag)
    return output.pop_result_into(out)


cdef size_t copy_back(VirtualMachine vm, SharedMemory dst, SharedMemory src,
                      const uint64_t[::1] ranges) except? 0:
    """Copies back, from the snapshot image `src`, every page of the dirty-logged slots the
    guest wrote since the last harvest, then each range of `ranges` (host offset, size
    pairs, flat). Costs what was written, not the slots' sizes. Returns the pages copied."""
    cdef size_t i, n, off, nranges = <size_t>ranges.shape[0] // 2
    cdef uint64_t gpa, size
    if dst.size != src.size or dst.base == NULL or src.base == NULL:
        raise ValueError("snapshot image and guest memory differ in size or are closed")
    if ranges.shape[0] % 2:
        raise ValueError("restore ranges are (host offset, size) pairs")
    for i in range(nranges):
        gpa, size = ranges[2 * i], ranges[2 * i + 1]
        if gpa > dst.size or size > dst.size - gpa:
            raise ValueError(f"restore range {gpa:#x}+{size:#x} is outside guest memory")
    vm.harvest_c()
    n = vm.n_dirty
    for i in range(n):
        off = vm.dirty[i] * 4096  # a host-memory page of a logged slot
        if off + 4096 <= dst.size:
            memcpy(dst.base + off, src.base + off, 4096)
    vm.n_dirty = 0
    for i in range(nranges):
        memcpy(dst.base + ranges[2 * i], src.base + ranges[2 * i], ranges[2 * i + 1])
        n += ranges[2 * i + 1] // 4096
    return n


def restore_pages(VirtualMachine vm, SharedMemory dst, SharedMemory src, const uint64_t[::1] ranges):
    """copy_back() for Python: the restore of a profile without the trampoline (i686)."""
    return copy_back(vm, dst, src, ranges)


cdef class RestorePlan:
    """What a fast restore of one snapshot into one sandbox copies and stages."""

    cdef SharedMemory dst, src
    cdef const uint64_t[::1] ranges
    cdef bytes state
    cdef uint64_t trampoline, target_offset, fxsave_offset
    cdef public object snapshot  # what the plan restores (CallPath.pending after it)

    def __init__(self, SharedMemory dst, SharedMemory src, const uint64_t[::1] ranges, bytes state,
                 uint64_t trampoline, uint64_t target_offset, uint64_t fxsave_offset):
        if len(state) != sizeof(hl_vcpu_state):
            raise ValueError("vCPU state has the wrong size")
        if (target_offset + 8 > 4096 or fxsave_offset + 512 > 4096 or fxsave_offset % 16
                or trampoline + 4096 > dst.size):
            raise ValueError("restore trampoline is outside guest memory")
        self.dst, self.src, self.ranges, self.state = dst, src, ranges, state
        self.trampoline, self.target_offset, self.fxsave_offset = trampoline, target_offset, fxsave_offset

    cdef int apply(self, VirtualMachine vm) except -1:
        """Copies back what the guest can have written, stages the registers in kvm_run
        and points RIP at the restore trampoline (mem/trampoline.py) with the snapshot's
        FPU image and RIP: no vCPU ioctl. The vCPU must be claimed."""
        copy_back(vm, self.dst, self.src, self.ranges)
        cdef const hl_vcpu_state *st = <const hl_vcpu_state *><const char *>self.state
        cdef uint64_t rip = hl_state_rip(st)
        memcpy(self.dst.base + self.trampoline + self.target_offset, &rip, 8)
        memcpy(self.dst.base + self.trampoline + self.fxsave_offset, hl_state_fxsave(st), 512)
        hl_stage_registers(vm.run_ptr, st, self.trampoline)
        return 0
