/* hot.c - hot mode: exits through the mailbox instead of `out` (docs/abi.md,
 * "Hot mode").
 *
 * While the host keeps a sandbox hot, its vCPU stays inside the guest on a
 * host thread of its own. An exit (HALT after a call, a host call, a log
 * record, a print) is then posted in the mailbox, and the guest spins until
 * the host resumes it: no VM exit on either side. After spin_ticks without an
 * answer, when the host asks it to, or when the host is blocked waiting, the
 * guest parks: it marks the exit PARKED and executes the ordinary `out`, so
 * the host's vCPU thread returns from KVM_RUN and nothing spins.
 *
 * x86-64 orders stores with stores and loads with loads (TSO): the records
 * written before the releasing store of `state` are visible to whoever sees
 * that store. The post is an xchg (a full fence) because the guest then
 * reads host_waiting, which the host writes before reading `state`: a
 * store-then-load on both sides, the one pattern TSO reorders. */
#include "hl_internal.h"

volatile hl_mailbox_t *hl_mailbox;

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

static inline void out_dx(unsigned port) {
  __asm__ volatile("outb %%al, %%dx" ::"d"((uint16_t)port), "a"(0) : "memory");
}

void hl_hot_init(uint64_t mailbox) {
  if (mailbox == 0 || (mailbox & 63) != 0) return; /* no mailbox: always cold */
  hl_mailbox = (volatile hl_mailbox_t *)(uintptr_t)mailbox;
}

/* Spins until the host answers the exit posted in `state` (`posted`), or parks.
 * A parked guest resumed with `state` still `posted` has been re-armed by the
 * host (a restore left it waiting for the next call): it waits again. */
HL_HOT static void wait_for_answer(volatile hl_mailbox_t *mb, unsigned port, uint64_t posted) {
  for (;;) {
    uint64_t limit = mb->spin_ticks;
    uint64_t start = rdtsc();
    bool park = __atomic_load_n(&mb->host_waiting, __ATOMIC_ACQUIRE) != 0;
    for (uint32_t i = 0;; i++) {
      if (__atomic_load_n(&mb->state, __ATOMIC_ACQUIRE) == HL_HOT_RESUMED) return;
      if (park || __atomic_load_n(&mb->mode, __ATOMIC_RELAXED) != HL_HOT_ON ||
          ((i & 63) == 0 && rdtsc() - start > limit))
        break;
      __builtin_ia32_pause();
    }
    uint64_t expect = posted;
    uint64_t parked = HL_HOT_PARKED | ((uint64_t)port << 8);
    if (!__atomic_compare_exchange_n(&mb->state, &expect, parked, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) &&
        expect == HL_HOT_RESUMED)
      return; /* the host answered first */
    /* Parked (or the state is not the host's doing: park anyway, the host decides). */
    out_dx(port); /* the host resumes us with KVM_RUN once it has answered */
    if (__atomic_load_n(&mb->state, __ATOMIC_ACQUIRE) != posted) return;
  }
}

HL_HOT void hl_exit_slow(unsigned port) {
  volatile hl_mailbox_t *mb = hl_mailbox;
  uint64_t posted = HL_HOT_POSTED | ((uint64_t)port << 8);
  __atomic_exchange_n(&mb->state, posted, __ATOMIC_SEQ_CST); /* publishes the records; full fence */
  wait_for_answer(mb, port, posted);
}

HL_HOT void hl_exit_rearmed(unsigned port) {
  volatile hl_mailbox_t *mb = hl_mailbox;
  uint64_t posted = HL_HOT_POSTED | ((uint64_t)port << 8);
  if (__atomic_load_n(&mb->state, __ATOMIC_ACQUIRE) == posted) wait_for_answer(mb, port, posted);
}
