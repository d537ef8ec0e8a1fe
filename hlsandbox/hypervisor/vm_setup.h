/* vm_setup.h - creating a VM's vCPU while a helper thread registers its memory slots.
 *
 * On kvm-pvm every KVM_SET_USER_MEMORY_REGION waits for an SRCU grace period
 * (about 55 us, mostly idle waiting), and a VM's slots are registered one
 * after the other (KVM holds the VM's slots lock throughout). The vCPU side
 * costs about as much: KVM_CREATE_VCPU (40 us while any vCPU exists on the
 * machine, 210 us otherwise), KVM_SET_CPUID2 (60 us), loading a snapshot's FPU
 * state, mapping kvm_run and the dirty ring. A process-wide helper thread
 * registers the slots while the caller does the vCPU side, so a sandbox's three
 * slots cost what the longer of the two costs.
 *
 * The helper serves one VM at a time: a creation that finds it busy (another
 * thread is creating a VM) does everything itself, so concurrent creations
 * never queue behind it. A child after fork() starts its own helper; where no
 * thread can be started, everything runs in line. HL_SETUP_SERIAL asks for
 * the in-line order (for measuring the difference). */
#ifndef HL_VM_SETUP_H
#define HL_VM_SETUP_H
#include <errno.h>
#include <linux/futex.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kvm_shim.h"

/* The slots of one VM, and how registering them went. */
struct hl_slot_job {
  int vm_fd, n;
  const struct kvm_userspace_memory_region *regions;
  int failed; /* index of the slot KVM refused, -1 if none */
  int err;    /* its errno */
};

static void hl_add_slots(struct hl_slot_job *j) {
  j->failed = -1;
  j->err = 0;
  for (int i = 0; i < j->n; i++) {
    if (ioctl(j->vm_fd, KVM_SET_USER_MEMORY_REGION, &j->regions[i]) < 0) {
      j->failed = i;
      j->err = errno;
      return;
    }
  }
}

enum { HL_HELPER_IDLE, HL_HELPER_POSTED, HL_HELPER_DONE };

static struct {
  pthread_mutex_t claim; /* held from posting a job until its result is read */
  uint32_t word;         /* futex: HL_HELPER_* */
  pid_t pid;             /* the process whose helper thread exists (0: none yet) */
  struct hl_slot_job *job;
} hl_helper = {PTHREAD_MUTEX_INITIALIZER, HL_HELPER_IDLE, 0, 0};

static inline void hl_futex_wait(uint32_t *word, uint32_t expected) {
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
static inline void hl_futex_wake(uint32_t *word) { syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }

static void *hl_helper_main(void *arg) {
  (void)arg;
  for (;;) {
    uint32_t w;
    while ((w = __atomic_load_n(&hl_helper.word, __ATOMIC_ACQUIRE)) != HL_HELPER_POSTED) hl_futex_wait(&hl_helper.word, w);
    hl_add_slots(hl_helper.job);
    __atomic_store_n(&hl_helper.word, HL_HELPER_DONE, __ATOMIC_RELEASE);
    hl_futex_wake(&hl_helper.word);
  }
  return NULL;
}

/* Starts this process's helper thread with every signal blocked (signals such as the
 * cancellation signal are for the threads that run vCPUs). Caller holds the claim. */
static int hl_helper_start(void) {
  pthread_attr_t attr;
  pthread_t thread;
  sigset_t all, old;
  if (pthread_attr_init(&attr) != 0) return -1;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 << 10);
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int rc = pthread_create(&thread, &attr, hl_helper_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (rc != 0) return -1;
  hl_helper.word = HL_HELPER_IDLE;
  hl_helper.pid = getpid();
  return 0;
}

/* Hands the job to the helper: 1 if it took it (then call hl_helper_wait), 0 if the
 * caller must do it (helper busy or unavailable). */
static int hl_helper_post(struct hl_slot_job *j) {
  if (pthread_mutex_trylock(&hl_helper.claim) != 0) return 0;
  if (hl_helper.pid != getpid() && hl_helper_start() != 0) {
    pthread_mutex_unlock(&hl_helper.claim);
    return 0;
  }
  hl_helper.job = j;
  __atomic_store_n(&hl_helper.word, HL_HELPER_POSTED, __ATOMIC_RELEASE);
  hl_futex_wake(&hl_helper.word);
  return 1;
}

static void hl_helper_wait(void) {
  uint32_t w;
  while ((w = __atomic_load_n(&hl_helper.word, __ATOMIC_ACQUIRE)) != HL_HELPER_DONE) hl_futex_wait(&hl_helper.word, w);
  __atomic_store_n(&hl_helper.word, HL_HELPER_IDLE, __ATOMIC_RELAXED);
  hl_helper.job = NULL;
  pthread_mutex_unlock(&hl_helper.claim);
}

#define HL_SETUP_SERIAL 1   /* everything on the calling thread */
#define HL_SETUP_NO_CPUID 2 /* leave the vCPU's CPUID table empty (see kvm.pyx, set_cpuid) */

/* What hl_setup_vm does and what it got. On failure `step` names what failed and `err`
 * is its errno; every resource created so far is in the struct for the caller to free. */
struct hl_vm_setup {
  int kvm_fd, vm_fd, nslots, flags;
  const struct kvm_userspace_memory_region *regions;
  const struct hl_vcpu_state *state; /* NULL, or a state whose `parts` (HL_LOAD_FPU, HL_LOAD_MSRS) to load */
  int parts;
  size_t run_size, ring_bytes; /* ring_bytes 0: no dirty ring to map */
  int vcpu_fd;
  void *run, *ring;
  const char *step;
  int err, failed_slot;
};

/* The vCPU side: vCPU 0, its CPUID (unless HL_SETUP_NO_CPUID), then the state's parts
 * (after the CPUID, which decides the XSAVE features KVM exposes), kvm_run and the
 * dirty ring. */
static void hl_setup_vcpu(struct hl_vm_setup *s) {
  int rc;
  s->vcpu_fd = ioctl(s->vm_fd, KVM_CREATE_VCPU, 0);
  if (s->vcpu_fd < 0) {
    s->step = "KVM_CREATE_VCPU";
    s->err = errno;
  } else if (!(s->flags & HL_SETUP_NO_CPUID) && (rc = hl_set_supported_cpuid(s->kvm_fd, s->vcpu_fd)) < 0) {
    s->step = "KVM_SET_CPUID2";
    s->err = -rc;
  } else if (s->state && s->parts && (rc = hl_load_state(s->vcpu_fd, NULL, s->state, 0, s->parts)) < 0) {
    s->step = "loading the vCPU state";
    s->err = -rc;
  } else if ((s->run = mmap(NULL, s->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->vcpu_fd, 0)) == MAP_FAILED) {
    s->step = "mmap of kvm_run";
    s->err = errno;
  } else if (s->ring_bytes &&
             (s->ring = mmap(NULL, s->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->vcpu_fd,
                             KVM_DIRTY_LOG_PAGE_OFFSET * 4096)) == MAP_FAILED) {
    s->step = "mmap of the dirty ring";
    s->err = errno;
  }
}

/* Registers the slots and sets up vCPU 0, on two threads when the helper is free.
 * Returns 0 or -1. */
static int hl_setup_vm(struct hl_vm_setup *s) {
  struct hl_slot_job job = {s->vm_fd, s->nslots, s->regions, -1, 0};
  int helped = !(s->flags & HL_SETUP_SERIAL) && hl_helper_post(&job);
  s->vcpu_fd = -1;
  s->run = s->ring = MAP_FAILED;
  s->step = NULL;
  s->err = 0;
  s->failed_slot = -1;
  if (!helped) hl_add_slots(&job);
  if (helped || job.failed < 0) hl_setup_vcpu(s);
  if (helped) hl_helper_wait(); /* always: the job lives on this stack */
  if (job.failed >= 0) { /* a refused slot is the first thing to report */
    s->step = "KVM_SET_USER_MEMORY_REGION";
    s->err = job.err;
    s->failed_slot = job.failed;
  }
  return s->step ? -1 : 0;
}
#endif
