/* kvm_shim.h - accessors for the anonymous unions of struct kvm_run and the
 * variable-length KVM structs, which Cython cannot declare directly. */
#ifndef HL_KVM_SHIM_H
#define HL_KVM_SHIM_H
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

static inline uint8_t hl_io_direction(struct kvm_run *r) { return r->io.direction; }
static inline uint16_t hl_io_port(struct kvm_run *r) { return r->io.port; }
static inline uint8_t hl_io_size(struct kvm_run *r) { return r->io.size; }
static inline uint32_t hl_io_count(struct kvm_run *r) { return r->io.count; }
static inline uint8_t hl_io_byte(struct kvm_run *r) { return *((uint8_t *)r + r->io.data_offset); }
static inline uint64_t hl_mmio_addr(struct kvm_run *r) { return r->mmio.phys_addr; }
static inline uint32_t hl_mmio_len(struct kvm_run *r) { return r->mmio.len; }
static inline uint8_t hl_mmio_is_write(struct kvm_run *r) { return r->mmio.is_write; }
static inline uint32_t hl_internal_suberror(struct kvm_run *r) { return r->internal.suberror; }
static inline uint32_t hl_internal_ndata(struct kvm_run *r) { return r->internal.ndata; }
static inline uint64_t hl_internal_data(struct kvm_run *r, int i) { return r->internal.data[i]; }
static inline uint64_t hl_fail_entry_reason(struct kvm_run *r) { return r->fail_entry.hardware_entry_failure_reason; }
static inline uint32_t hl_system_event_type(struct kvm_run *r) { return r->system_event.type; }
static inline struct kvm_regs *hl_sync_regs(struct kvm_run *r) { return &r->s.regs.regs; }
static inline struct kvm_sregs *hl_sync_sregs(struct kvm_run *r) { return &r->s.regs.sregs; }

/* KVM_GET_SUPPORTED_CPUID on the system fd, then KVM_SET_CPUID2 on the vCPU:
 * without it guest physical addresses stop at 36 bits on kvm-pvm. */
static inline int hl_set_supported_cpuid(int kvm_fd, int vcpu_fd) {
  int nent = 128, rc;
  for (;;) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
    if (!c) return -ENOMEM;
    c->nent = nent;
    rc = ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
    if (rc < 0 && errno == E2BIG && nent < 4096) { free(c); nent *= 2; continue; }
    if (rc == 0) rc = ioctl(vcpu_fd, KVM_SET_CPUID2, c);
    rc = rc < 0 ? -errno : 0;
    free(c);
    return rc;
  }
}

/* The cancellation signal's handler does nothing: its only job is to make
 * KVM_RUN return -EINTR in the thread it is sent to. */
static void hl_cancel_handler(int sig) { (void)sig; }
static inline int hl_install_cancel_handler(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hl_cancel_handler; /* no SA_RESTART: KVM_RUN must return EINTR */
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, 0);
}
#endif
