cdef int kvm_fd() except -1
cdef int vcpu_mmap_size() noexcept
cdef int create_vm_fd(int kfd) noexcept
cdef int cancel_signal() noexcept
