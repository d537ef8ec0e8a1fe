/* kvm_shim.h - accessors for the anonymous unions of struct kvm_run and the
 * variable-length KVM structs, which Cython cannot declare directly. */
#ifndef HL_KVM_SHIM_H
#define HL_KVM_SHIM_H
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
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

/* KVM_GET_SUPPORTED_CPUID on the system fd (once per process: it costs ~370 us on
 * kvm-pvm), then KVM_SET_CPUID2 on the vCPU: the guest's view of the CPU on hardware
 * KVM and for CPL0 guests, and the guest's physical address width (36 bits without a
 * table). Runs without the GIL: a mutex guards the cache fill. */
static struct kvm_cpuid2 *hl_supported_cpuid;
static pthread_mutex_t hl_cpuid_lock = PTHREAD_MUTEX_INITIALIZER;
static inline int hl_set_supported_cpuid(int kvm_fd, int vcpu_fd) {
  int nent = 128, rc = 0;
  pthread_mutex_lock(&hl_cpuid_lock);
  while (!hl_supported_cpuid) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
    if (!c) { rc = -ENOMEM; break; }
    c->nent = nent;
    if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
      int err = errno;
      free(c);
      if (err == E2BIG && nent < 4096) { nent *= 2; continue; }
      rc = -err;
      break;
    }
    hl_supported_cpuid = c;
  }
  pthread_mutex_unlock(&hl_cpuid_lock);
  if (rc < 0) return rc;
  return ioctl(vcpu_fd, KVM_SET_CPUID2, hl_supported_cpuid) < 0 ? -errno : 0;
}

/* ---- vCPU state for snapshots ------------------------------------------- */

/* MSRs a snapshot carries. A CPL3 guest cannot write MSRs; these are saved so a
 * sandbox created from a snapshot file gets the exact state it was taken in. */
#define HL_NMSRS 9
static const uint32_t hl_msr_indices[HL_NMSRS] = {
    0x174, 0x175, 0x176,                         /* SYSENTER_CS/ESP/EIP */
    0x277,                                       /* PAT */
    0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, /* STAR, LSTAR, CSTAR, SFMASK */
    0xC0000102,                                  /* KERNEL_GS_BASE */
};

struct hl_vcpu_state {
  struct kvm_regs regs;
  struct kvm_sregs sregs;
  struct kvm_xsave xsave; /* 4096 bytes: x87, SSE, AVX state */
  uint32_t nmsrs, pad;
  struct kvm_msr_entry msrs[HL_NMSRS];
  struct kvm_debugregs debugregs; /* DR0-3, DR6, DR7: a CPL0 (i686) guest can set them */
};

static inline int hl_save_state(int vcpu, struct hl_vcpu_state *s) {
  struct { struct kvm_msrs h; struct kvm_msr_entry e[HL_NMSRS]; } m;
  memset(s, 0, sizeof *s);
  if (ioctl(vcpu, KVM_GET_REGS, &s->regs) < 0) return -errno;
  if (ioctl(vcpu, KVM_GET_SREGS, &s->sregs) < 0) return -errno;
  if (ioctl(vcpu, KVM_GET_XSAVE, &s->xsave) < 0) return -errno;
  memset(&m, 0, sizeof m);
  m.h.nmsrs = HL_NMSRS;
  for (int i = 0; i < HL_NMSRS; i++) m.e[i].index = hl_msr_indices[i];
  int n = ioctl(vcpu, KVM_GET_MSRS, &m);
  if (n < 0) return -errno;
  s->nmsrs = (uint32_t)n; /* KVM stops at the first MSR it does not know */
  memcpy(s->msrs, m.e, sizeof m.e);
  if (ioctl(vcpu, KVM_GET_DEBUGREGS, &s->debugregs) < 0) return -errno;
  return 0;
}

/* What hl_load_state loads. */
#define HL_LOAD_REGS 1
#define HL_LOAD_SREGS 2
#define HL_LOAD_FPU 4
#define HL_LOAD_MSRS 8
#define HL_LOAD_DEBUG 16

/* Loads parts of a saved state. General and segment registers go through
 * kvm_run's sync area when `sync` (applied by the next KVM_RUN, no ioctl);
 * the FPU state needs KVM_SET_XSAVE and MSRs KVM_SET_MSRS. */
static inline int hl_load_state(int vcpu, struct kvm_run *run, const struct hl_vcpu_state *s, int sync,
                                int what) {
  if (sync) {
    if (what & HL_LOAD_REGS) {
      run->s.regs.regs = s->regs;
      run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
    }
    if (what & HL_LOAD_SREGS) {
      run->s.regs.sregs = s->sregs;
      run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
    }
  } else {
    if ((what & HL_LOAD_SREGS) && ioctl(vcpu, KVM_SET_SREGS, &s->sregs) < 0) return -errno;
    if ((what & HL_LOAD_REGS) && ioctl(vcpu, KVM_SET_REGS, &s->regs) < 0) return -errno;
  }
  if ((what & HL_LOAD_FPU) && ioctl(vcpu, KVM_SET_XSAVE, &s->xsave) < 0) return -errno;
  if ((what & HL_LOAD_MSRS) && s->nmsrs) {
    struct { struct kvm_msrs h; struct kvm_msr_entry e[HL_NMSRS]; } m;
    memset(&m, 0, sizeof m);
    m.h.nmsrs = s->nmsrs > HL_NMSRS ? HL_NMSRS : s->nmsrs;
    memcpy(m.e, s->msrs, sizeof m.e);
    int set = ioctl(vcpu, KVM_SET_MSRS, &m);
    if (set < 0) return -errno;
    if ((uint32_t)set != m.h.nmsrs) return -EINVAL; /* KVM stops at the first value it refuses */
  }
  if ((what & HL_LOAD_DEBUG) && ioctl(vcpu, KVM_SET_DEBUGREGS, &s->debugregs) < 0) return -errno;
  return 0;
}

/* Which of the FPU, MSR and debug register parts (HL_LOAD_FPU, HL_LOAD_MSRS, HL_LOAD_DEBUG) of `what` hold the same
 * values in a and b: loading those into a vCPU that already has them changes nothing. */
static inline int hl_state_same_parts(const struct hl_vcpu_state *a, const struct hl_vcpu_state *b, int what) {
  int same = 0;
  if ((what & HL_LOAD_FPU) && !memcmp(&a->xsave, &b->xsave, sizeof a->xsave)) same |= HL_LOAD_FPU;
  if ((what & HL_LOAD_MSRS) && a->nmsrs == b->nmsrs && a->nmsrs <= HL_NMSRS &&
      !memcmp(a->msrs, b->msrs, a->nmsrs * sizeof a->msrs[0]))
    same |= HL_LOAD_MSRS;
  if ((what & HL_LOAD_DEBUG) && !memcmp(&a->debugregs, &b->debugregs, sizeof a->debugregs)) same |= HL_LOAD_DEBUG;
  return same;
}

/* The fast restore: stages the snapshot's general registers (RIP replaced by the
 * restore trampoline's address) and segment registers in kvm_run's sync area. */
static inline void hl_stage_registers(struct kvm_run *run, const struct hl_vcpu_state *s, uint64_t rip) {
  run->s.regs.regs = s->regs;
  run->s.regs.regs.rip = rip;
  run->s.regs.sregs = s->sregs;
  run->kvm_dirty_regs |= KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
}
static inline const uint8_t *hl_state_fxsave(const struct hl_vcpu_state *s) { return (const uint8_t *)&s->xsave; }
static inline uint64_t hl_state_rip(const struct hl_vcpu_state *s) { return s->regs.rip; }

/* ---- dirty page tracking -------------------------------------------------- */

static inline int hl_enable_dirty_ring(int vm_fd, uint32_t bytes) {
  struct kvm_enable_cap cap;
  memset(&cap, 0, sizeof cap);
  cap.cap = KVM_CAP_DIRTY_LOG_RING;
  cap.args[0] = bytes;
  return ioctl(vm_fd, KVM_ENABLE_CAP, &cap) < 0 ? -errno : 0;
}

/* The ring's flags are shared with KVM: acquire on read, release on reset. */
static inline int hl_gfn_dirty(struct kvm_dirty_gfn *e) {
  return (__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY) != 0;
}
static inline void hl_gfn_collected(struct kvm_dirty_gfn *e) {
  __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
}

static inline int hl_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap) {
  struct kvm_dirty_log d;
  memset(&d, 0, sizeof d);
  d.slot = slot;
  d.dirty_bitmap = bitmap;
  return ioctl(vm_fd, KVM_GET_DIRTY_LOG, &d) < 0 ? -errno : 0;
}
#endif
