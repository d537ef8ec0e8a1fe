from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from cpython.pythread cimport PyThread_type_lock

cdef extern from "pthread.h" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()
    int pthread_kill(pthread_t thread, int sig)
    int pthread_equal(pthread_t a, pthread_t b)

from .linux_kvm cimport (
    kvm_dirty_gfn,
    kvm_dtable,
    kvm_regs,
    kvm_run,
    kvm_segment,
    kvm_sregs,
    kvm_userspace_memory_region,
)


# The project's C helpers (kvm_shim.h: small static functions over the kernel's structs;
# vm_setup.h: VM creation on a helper thread) and the VirtualMachine class.
cdef extern from "kvm_shim.h" nogil:
    uint8_t hl_io_direction(kvm_run *r)
    uint16_t hl_io_port(kvm_run *r)
    uint8_t hl_io_size(kvm_run *r)
    uint32_t hl_io_count(kvm_run *r)
    uint8_t hl_io_byte(kvm_run *r)
    uint64_t hl_mmio_addr(kvm_run *r)
    uint32_t hl_mmio_len(kvm_run *r)
    uint8_t hl_mmio_is_write(kvm_run *r)
    uint32_t hl_internal_suberror(kvm_run *r)
    uint32_t hl_internal_ndata(kvm_run *r)
    uint64_t hl_internal_data(kvm_run *r, int i)
    uint64_t hl_fail_entry_reason(kvm_run *r)
    int hl_set_supported_cpuid(int kvm_fd, int vcpu_fd)
    struct hl_vcpu_state:
        kvm_regs regs
        kvm_sregs sregs
    int hl_save_state(int vcpu, hl_vcpu_state *s)
    int hl_load_state(int vcpu, kvm_run *run, const hl_vcpu_state *s, int sync, int what)
    int hl_state_same_parts(const hl_vcpu_state *a, const hl_vcpu_state *b, int what)
    int hl_enable_dirty_ring(int vm_fd, uint32_t bytes)
    void hl_stage_registers(kvm_run *run, const hl_vcpu_state *s, uint64_t rip)
    const uint8_t *hl_state_fxsave(const hl_vcpu_state *s)
    uint64_t hl_state_rip(const hl_vcpu_state *s)
    int hl_gfn_dirty(kvm_dirty_gfn *e)
    void hl_gfn_collected(kvm_dirty_gfn *e)
    int hl_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap)

cdef extern from "vm_setup.h" nogil:
    struct hl_vm_setup:
        int kvm_fd, vm_fd, nslots, flags
        const kvm_userspace_memory_region *regions
        const hl_vcpu_state *state
        int parts
        size_t run_size, ring_bytes
        int vcpu_fd
        void *run
        void *ring
        const char *step
        int err, failed_slot
    int hl_setup_vm(hl_vm_setup *s)
    int HL_SETUP_SERIAL, HL_SETUP_NO_CPUID


# What run() returns besides a port number (0..65535) for `out` (kvm.EXIT_* in Python).
cdef enum RunExit:
    RUN_CANCELED = -1
    RUN_MMIO = -2
    RUN_SHUTDOWN = -3
    RUN_INTERNAL_ERROR = -4
    RUN_HLT = -5
    RUN_BAD_IO = -6
    RUN_FAIL_ENTRY = -7
    RUN_OTHER = -8

cdef int terminal_exit_code(uint32_t reason) noexcept nogil


cdef class VirtualMachine:
    cdef int vm_fd, vcpu_fd
    cdef kvm_run *run_ptr
    cdef object memory  # keeps the guest memory mapped while KVM uses it
    cdef pthread_t thread  # the thread that claimed the vCPU (claim)
    cdef public pthread_t signal_thread  # the thread running KVM_RUN, which kill() signals
    cdef bint cancel_requested
    cdef readonly bint active  # a call is running; changed only with the GIL held
    cdef readonly uint64_t generation  # counts calls, so a late kill cannot hit a later call
    cdef readonly bint closed
    cdef readonly bint forked  # created by the parent of this (forked) process: unusable here
    cdef bint closing  # close() has begun: calls waiting for the vCPU give up
    cdef PyThread_type_lock call_lock  # held from claim() to release(): one call at a time
    cdef public double max_wait  # seconds claim() waits for the vCPU by default; < 0: no limit
    cdef object __weakref__
    # Dirty-page tracking of the slots that log: the dirty ring when KVM has it, else bitmaps.
    cdef int nslots
    cdef uint64_t slot_pages[8]
    cdef uint64_t slot_host_page[8]  # host-memory page index of each slot's first page
    cdef bint slot_logged[8]
    cdef kvm_dirty_gfn *ring
    cdef uint32_t ring_entries, ring_fetch
    cdef uint64_t *bitmap  # fallback: one bitmap, reused for each logged slot
    cdef uint64_t *dirty  # host-memory page indices written, collected since the last take
    cdef size_t n_dirty, cap_dirty
    cdef readonly bint uses_dirty_ring
    cdef readonly bint sync_regs
    cdef int at_reset  # LOAD_FPU/LOAD_MSRS parts still as in a new vCPU (load_state skips loading them again)
    cdef const hl_vcpu_state *reset  # a new vCPU's state, of the same CPUID kind as this one

    cdef int harvest_c(self) except -1
    cdef int _add_dirty(self, uint64_t page) except -1

    cdef void _release(self) noexcept
    cdef void _check(self) except *
    cdef _set_mode(self, uint64_t cr0, uint64_t cr4, uint64_t efer, uint64_t cr3, uint16_t cs, uint16_t ds,
                   uint8_t dpl, bint long_mode, uint64_t gdt, uint16_t gdt_limit, uint64_t idt,
                   uint16_t idt_limit, uint64_t tss, uint32_t tss_limit, uint16_t tss_selector)
    cdef uint64_t claim(self, double wait=*) except 0
    cdef void _wait_turn(self, double wait) except *
    cdef void release(self) noexcept
    cpdef int run(self) except? -100
