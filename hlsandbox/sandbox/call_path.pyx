# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-call hot path in Cython: claim the vCPU, write the CALL record, run until
HALT, read the result. Exits other than HALT (host calls, logs, prints, faults) go
to the sandbox's Python handler, which serves them or raises to end the call."""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from ..func.wire cimport RecordStack
from ..hypervisor.kvm cimport VirtualMachine
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


def restore_pages(VirtualMachine vm, SharedMemory dst, SharedMemory src, uint64_t slot_gpa, list ranges):
    """Copies back, from the snapshot image `src`, every page of the dirty-logged slot
    (at slot_gpa) the guest wrote since the last harvest, then each (gpa, size) range.
    Costs what was written, not the slot's size. Returns the pages copied."""
    cdef size_t i, n, off, total = 0
    cdef uint64_t gpa, size
    if dst.size != src.size or dst.base == NULL or src.base == NULL:
        raise ValueError("snapshot image and guest memory differ in size or are closed")
    vm.harvest_c()
    n = vm.n_dirty
    for i in range(n):
        off = slot_gpa + vm.dirty[i] * 4096  # harvest_c only keeps pages inside the slot
        memcpy(dst.base + off, src.base + off, 4096)
    vm.n_dirty = 0
    total = n
    for gpa, size in ranges:
        if gpa > dst.size or size > dst.size - gpa:
            raise ValueError(f"restore range {gpa:#x}+{size:#x} is outside guest memory")
        memcpy(dst.base + gpa, src.base + gpa, size)
        total += size // 4096
    return total
