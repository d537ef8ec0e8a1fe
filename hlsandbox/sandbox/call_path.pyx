# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-call hot path in Cython: claim the vCPU, write the CALL record, run until
HALT, read the result. Exits other than HALT (host calls, logs, prints, faults) go
to the sandbox's Python handler, which serves them or raises to end the call."""
from ..func.wire cimport RecordStack
from libc.stdint cimport uint64_t
from ..hypervisor.kvm cimport VirtualMachine

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
