# The kernel's KVM API (linux/kvm.h): only the structs, fields, ioctls and constants
# hlsandbox uses. The project's own C helpers are declared in kvm.pxd.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "linux/kvm.h" nogil:
    struct kvm_regs:
        uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp
        uint64_t r8, r9, r10, r11, r12, r13, r14, r15
        uint64_t rip, rflags
    struct kvm_segment:
        uint64_t base
        uint32_t limit
        uint16_t selector
        uint8_t type, present, dpl, db, s, l, g, avl, unusable
    struct kvm_dtable:
        uint64_t base
        uint16_t limit
    struct kvm_sregs:
        kvm_segment cs, ds, es, fs, gs, ss, tr, ldt
        kvm_dtable gdt, idt
        uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base
    struct kvm_userspace_memory_region:
        uint32_t slot, flags
        uint64_t guest_phys_addr, memory_size, userspace_addr
    struct kvm_run:
        uint8_t request_interrupt_window, immediate_exit
        uint32_t exit_reason
        uint64_t kvm_valid_regs, kvm_dirty_regs
    unsigned long KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE
    unsigned long KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, KVM_RUN
    unsigned long KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_ENABLE_CAP
    int KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_SYNC_REGS, KVM_CAP_USER_MEMORY
    int KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_HLT, KVM_EXIT_SHUTDOWN, KVM_EXIT_INTERNAL_ERROR
    int KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTR, KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_IO_OUT
    struct kvm_dirty_gfn:
        uint32_t flags, slot
        uint64_t offset
    unsigned long KVM_RESET_DIRTY_RINGS
    int KVM_CAP_DIRTY_LOG_RING, KVM_EXIT_DIRTY_RING_FULL, KVM_DIRTY_LOG_PAGE_OFFSET, KVM_MEM_LOG_DIRTY_PAGES
