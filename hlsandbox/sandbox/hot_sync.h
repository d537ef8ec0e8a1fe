/* hot_sync.h - the few primitives Cython has no syntax for, used by hot_path.pyx:
 * x86-64 atomics on the mailbox (docs/abi.md, "Hot mode"), pause, rdtsc, futexes,
 * and the signal mask of the vCPU thread. */
#ifndef HL_HOT_SYNC_H
#define HL_HOT_SYNC_H

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t hl_load_acquire(volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void hl_store_release(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* A store followed by a full fence (xchg): for the Dekker pair host_waiting / state. */
static inline void hl_store_fence(volatile uint64_t *p, uint64_t v) { __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
/* lock cmpxchg: 1 if *p was `expect` and is now `desired`; else *seen gets what *p held. */
static inline int hl_cas(volatile uint64_t *p, uint64_t expect, uint64_t desired, uint64_t *seen) {
  int ok = __atomic_compare_exchange_n(p, &expect, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  *seen = expect;
  return ok;
}
static inline uint32_t hl_load32(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void hl_store32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int hl_load_int(volatile int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void hl_pause(void) { __builtin_ia32_pause(); }
static inline uint64_t hl_rdtsc(void) { return __builtin_ia32_rdtsc(); }

static inline uint64_t hl_now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Waits while *p == v, at most ns nanoseconds (0: no limit); returns on a wake, a signal or the time. */
static inline void hl_hot_futex_wait(volatile uint32_t *p, uint32_t v, uint64_t ns) {
  struct timespec t = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  syscall(SYS_futex, (uint32_t *)p, FUTEX_WAIT_PRIVATE, v, ns ? &t : NULL, NULL, 0);
}
static inline void hl_hot_futex_wake(volatile uint32_t *p) {
  syscall(SYS_futex, (uint32_t *)p, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The vCPU thread takes no process signal but the cancellation signal: Ctrl-C and the
 * like go to the threads that run Python. */
static inline void hl_block_signals_but(int sig) {
  sigset_t s;
  sigfillset(&s);
  sigdelset(&s, sig);
  pthread_sigmask(SIG_SETMASK, &s, NULL);
}

#endif
