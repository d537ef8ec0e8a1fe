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

cdef enum:
    PORT_HALT = 108  # docs/abi.md


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
            self.input.push_call_c(name, tags, args)
            self.output.clear()
            self.run_until_halt(generation)
        finally:
            self.vm.end_c()
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
        except BaseException:
            self.poisoned = True
            raise


cdef size_t copy_back(VirtualMachine vm, SharedMemory dst, SharedMemory src,
                      const uint64_t[:, ::1] ranges) except? 0:
    """Copies back, from the snapshot image `src`, every page of the dirty-logged slots the
    guest wrote since the last harvest, then each (host offset, size) range. Costs what was
    written, not the slots' sizes. Returns the pages copied."""
    cdef size_t i, n, off
    cdef uint64_t gpa, size
    if dst.size != src.size or dst.base == NULL or src.base == NULL:
        raise ValueError("snapshot image and guest memory differ in size or are closed")
    for i in range(<size_t>ranges.shape[0]):
        gpa, size = ranges[i, 0], ranges[i, 1]
        if gpa > dst.size or size > dst.size - gpa:
            raise ValueError(f"restore range {gpa:#x}+{size:#x} is outside guest memory")
    vm.harvest_c()
    n = vm.n_dirty
    for i in range(n):
        off = vm.dirty[i] * 4096  # a host-memory page of a logged slot
        if off + 4096 <= dst.size:
            memcpy(dst.base + off, src.base + off, 4096)
    vm.n_dirty = 0
    for i in range(<size_t>ranges.shape[0]):
        memcpy(dst.base + ranges[i, 0], src.base + ranges[i, 0], ranges[i, 1])
        n += ranges[i, 1] // 4096
    return n


def restore_pages(VirtualMachine vm, SharedMemory dst, SharedMemory src, const uint64_t[:, ::1] ranges):
    """copy_back() for Python: the restore of a profile without the trampoline (i686)."""
    return copy_back(vm, dst, src, ranges)


def fast_restore(VirtualMachine vm, SharedMemory dst, SharedMemory src, const uint64_t[:, ::1] ranges, const uint8_t[::1] state, uint64_t trampoline,
                 uint64_t target_offset, uint64_t fxsave_offset):
    """The restore of the snapshot a sandbox took or restored last, with the vCPU claimed:
    copies back what the guest can have written, stages the registers in kvm_run and
    points RIP at the restore trampoline (mem/trampoline.py) with the snapshot's FPU image
    and RIP, so nothing here is a vCPU ioctl. Returns the pages copied."""
    if state.shape[0] != sizeof(hl_vcpu_state):
        raise ValueError("vCPU state has the wrong size")
    if target_offset + 8 > 4096 or fxsave_offset + 512 > 4096 or fxsave_offset % 16 or trampoline + 4096 > dst.size:
        raise ValueError("restore trampoline is outside guest memory")
    cdef size_t n = copy_back(vm, dst, src, ranges)
    cdef const hl_vcpu_state *st = <const hl_vcpu_state *>&state[0]
    cdef uint64_t rip = hl_state_rip(st)
    memcpy(dst.base + trampoline + target_offset, &rip, 8)
    memcpy(dst.base + trampoline + fxsave_offset, hl_state_fxsave(st), 512)
    hl_stage_registers(vm.run_ptr, st, trampoline)
    return n
