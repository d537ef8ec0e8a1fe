/* floor_common.h - what both raw C floors (floor.c, snapfloor.c) share: failing
 * loudly, a watchdog flag for a stuck KVM_RUN, a monotonic clock, and statistics
 * that agree with the Python side's. Each program defines FLOOR_NAME first. */
#pragma once
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, FLOOR_NAME ": ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}
#define CHECK(rc, what)                                                           \
  do {                                                                            \
    if ((rc) < 0) fail("%s failed: %s (errno %d)", what, strerror(errno), errno); \
  } while (0)

/* A watchdog: SIGALRM without SA_RESTART makes a stuck KVM_RUN return EINTR.
 * Armed once per figure (not per iteration: alarm() is a syscall). */
static volatile sig_atomic_t g_alarm;
static void on_alarm(int s) { (void)s; g_alarm = 1; }

static inline uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}
/* Percentiles use linear interpolation between closest ranks (numpy's default),
 * so Python-side statistics on the same samples agree. */
static double quantile(const uint64_t *sorted, int n, double q) {
  double pos = q * (n - 1);
  int lo = (int)pos, hi = lo + 1 < n ? lo + 1 : lo;
  return sorted[lo] + (sorted[hi] - (double)sorted[lo]) * (pos - lo);
}
/* Sorts the samples and prints `<name><suffix> median p10 p90 n` in microseconds. */
static void report(const char *name, const char *suffix, uint64_t *ns, int n) {
  qsort(ns, n, sizeof *ns, cmp_u64);
  printf("%s%s %.3f %.3f %.3f %d\n", name, suffix, quantile(ns, n, 0.5) / 1e3, quantile(ns, n, 0.1) / 1e3,
         quantile(ns, n, 0.9) / 1e3, n);
  fflush(stdout);
}
