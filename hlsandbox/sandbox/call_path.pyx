# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-call hot path in Cython: claim the vCPU, write the CALL record, run until
HALT, read the result. Exits other than HALT (host calls, logs, prints, faults) go
to the sandbox's Python handler, which serves them or raises to end the call."""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from ..func.wire cimport RecordStack
from libc.stdint cimport uint8_t
from ..hypervisor.kvm cimport (VirtualMachine, hl_vcpu_state, hl_stage_registers, hl_state_fxsave,
                               hl_state_rip)
from ..mem.shared_memory cimport SharedMemory

from ..errors import ExecutionCanceled

from ..abi cimport HL_PORT_HALT as PORT_HALT


cdef class CallPath:
    """Binds a sandbox's VM, buffers and exit handler for fast calls."""

    cdef VirtualMachine vm
    cdef RecordStack input, output
    cdef object serve  # serve(rc, generation): handles one non-HALT exit or raises
    cdef public bint poisoned  # set when a call ends other than by HALT

    def __init__(self, VirtualMachine vm, RecordStack input, RecordStack output, serve):
        self.vm = vm
        self.input = input
        self.output = output
        self.serve = serve

    cpdef uint64_t begin(self) except 0:
        """Claims the vCPU for a call (raises if one is running); returns its generation."""
        return self.vm.begin_c()

    cpdef end(self):
        self.vm.end_c()

    def call(self, bytes name, tuple tags, int ret_tag, tuple args):
        """One guest call; the caller has checked the function exists and the sandbox
        is not poisoned."""
        cdef uint64_t generation = self.vm.begin_c()
        try:
            return self._claimed_call(generation, name, tags, ret_tag, args)
        finally:
            self.vm.end_c()

    def call_restoring(self, bytes name, tuple tags, int ret_tag, tuple args, RestorePlan plan):
        """call(), then, whatever happened, the restore `plan` while the vCPU is still
        claimed: the per-request clean guest, with no Python between call and restore."""
        cdef uint64_t generation = self.vm.begin_c()
        try:
            return self._claimed_call(generation, name, tags, ret_tag, args)
        finally:
            try:
                plan.apply(self.vm)
                self.poisoned = False
            finally:
                self.vm.end_c()

    def restore(self, RestorePlan plan):
        """The fast restore `plan` with the vCPU claimed (raises if a call is running);
        the sandbox is no longer poisoned."""
        self.vm.begin_c()
        try:
            plan.apply(self.vm)
            self.poisoned = False
        finally:
            self.vm.end_c()

    cdef object _claimed_call(self, uint64_t generation, bytes name, tuple tags, int ret_tag, tuple args):
        self.input.push_call_c(name, tags, args)
        self.output.clear()
        self.run_until_halt(generation)
        # Decode while the vCPU is still claimed: once end_c() runs, close() in another
        # thread may unmap guest memory (a GC pass or a GuestError's __init__ can
        # switch threads in the middle of the decode).
        return self.output.pop_result_c(ret_tag)

    cpdef run_until_halt(self, uint64_t generation):
        """Runs until the guest halts; the vCPU must be claimed with begin(). Anything
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
