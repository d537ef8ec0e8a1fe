/* A guest that uses the C library: stdio, stdlib, string, ctype, math,
 * setjmp, errno, time, what fails without an OS (tests/sdk/test_libc.py). */
#define _GNU_SOURCE /* asprintf */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hlguest.h"

static char out[512];

static hl_value format(const hl_value *args) {
  snprintf(out, sizeof out, "%d|%5.2f|%g|%e|%s|%x|%lld", args[0].i32, args[1].f64, args[1].f64, args[1].f64,
           args[2].str, 255, -1234567890123LL);
  return hl_str(out);
}

static hl_value print_it(const hl_value *args) {
  printf("printf says %s and %.3f\n", args[0].str, 2.5);
  fputs("to stderr\n", stderr);
  return hl_void();
}

static hl_value echo(const hl_value *args) { return args[0]; }

static hl_value parse_double(const hl_value *args) { return hl_f64(strtod(args[0].str, NULL)); }

static hl_value math_fn(const hl_value *args) {
  double x = args[0].f64;
  return hl_f64(sin(x) + cos(x) + sqrt(fabs(x)) + pow(x, 2.0) + log1p(fabs(x)) + exp(-x * x));
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* malloc, qsort, bsearch, realloc, free: sorts the bytes, returns them. */
static hl_value sort_bytes(const hl_value *args) {
  uint32_t n = args[0].len;
  int *v = malloc(n * sizeof *v + 1);
  for (uint32_t i = 0; i < n; i++) v[i] = args[0].bytes[i];
  qsort(v, n, sizeof *v, cmp_int);
  int key = v[0];
  if (n && bsearch(&key, v, n, sizeof *v, cmp_int) == NULL) hl_abort(1, "bsearch");
  unsigned char *r = calloc(n + 1, 1);
  for (uint32_t i = 0; i < n; i++) r[i] = (unsigned char)v[i];
  r = realloc(r, n + 64);
  free(v);
  static unsigned char keep[4096];
  memcpy(keep, r, n);
  free(r);
  return hl_bytes(keep, n);
}

static jmp_buf jb;
static __attribute__((noinline)) void jump(int v) { longjmp(jb, v); }

static hl_value errno_and_jumps(const hl_value *args) {
  (void)args;
  errno = 0;
  strtol("99999999999999999999999", NULL, 10);
  int e = errno;
  int j = setjmp(jb);
  if (j == 0) jump(7);
  int up = toupper('q') == 'Q' && isdigit('7') && !isalpha('1');
  return hl_i32(e * 1000 + j * 10 + up);
}

/* Operating-system features fail in the guest with errno = ENOSYS. */
static hl_value no_os(const hl_value *args) {
  (void)args;
  int fails = 0;
  errno = 0;
  fails += fopen("/etc/passwd", "r") == NULL && errno == ENOSYS;
  errno = 0;
  fails += open("/x", O_RDONLY) == -1 && errno == ENOSYS;
  errno = 0;
  fails += socket(AF_INET, SOCK_STREAM, 0) == -1 && errno == ENOSYS;
  errno = 0;
  fails += fork() == -1 && errno == ENOSYS;
  errno = 0;
  fails += system("ls") == -1 && errno == ENOSYS;
  errno = 0;
  fails += remove("/x") == -1 && errno == ENOSYS;
  pthread_t t;
  fails += pthread_create(&t, NULL, NULL, NULL) == ENOSYS;
  fails += getenv("HOME") == NULL;
  return hl_i32(fails);
}

/* time(), clock_gettime() and clock() read the host's clocks. */
static hl_value clocks(const hl_value *args) {
  (void)args;
  struct timespec mono;
  if (clock_gettime(CLOCK_MONOTONIC, &mono) != 0) return hl_i64(-1);
  if (clock() == (clock_t)-1) return hl_i64(-2);
  struct timespec real;
  clock_gettime(CLOCK_REALTIME, &real);
  if (real.tv_sec != time(NULL) && real.tv_sec + 1 != time(NULL)) return hl_i64(-3);
  return hl_i64((int64_t)real.tv_sec);
}

static hl_value call_exit(const hl_value *args) {
  printf("unflushed before exit");
  exit(args[0].i32);
}

static hl_value call_abort(const hl_value *args) {
  (void)args;
  abort();
}

static hl_value raw_syscall(const hl_value *args) {
  long ret, nr = args[0].i32;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
  return hl_i64(ret);
}

/* With -fstack-protector-strong this function checks its canary (at %fs:0x28). */
static hl_value protected_copy(const hl_value *args) {
  char buf[64];
  snprintf(buf, sizeof buf, "%s", args[0].str);
  return hl_str(buf);
}

/* Functions that allocate: strdup, strndup, asprintf, open_memstream. */
static hl_value allocating(const hl_value *args) {
  char *a = strdup(args[0].str);
  char *b = strndup(args[0].str, 3);
  char *c = NULL;
  if (asprintf(&c, "%s|%s|%d", a, b, 42) < 0) return hl_str("asprintf failed");
  static char keep[256];
  snprintf(keep, sizeof keep, "%s", c);
  free(a);
  free(b);
  free(c);
  return hl_str(keep);
}

void hyperlight_main(void) {
  static const hl_type p_fmt[] = {HL_I32, HL_F64, HL_STR};
  static const hl_type p_str[] = {HL_STR};
  static const hl_type p_f64[] = {HL_F64};
  static const hl_type p_bytes[] = {HL_BYTES};
  hl_register("Format", format, HL_STR, 3, p_fmt);
  hl_register("Print", print_it, HL_VOID, 1, p_str);
  hl_register("ParseDouble", parse_double, HL_F64, 1, p_str);
  hl_register("Math", math_fn, HL_F64, 1, p_f64);
  hl_register("SortBytes", sort_bytes, HL_BYTES, 1, p_bytes);
  hl_register("ErrnoAndJumps", errno_and_jumps, HL_I32, 0, NULL);
  hl_register("Echo", echo, HL_STR, 1, p_str);
  static const hl_type p_i32[] = {HL_I32};
  hl_register("NoOs", no_os, HL_I32, 0, NULL);
  hl_register("Allocating", allocating, HL_STR, 1, p_str);
  hl_register("Clocks", clocks, HL_I64, 0, NULL);
  hl_register("Exit", call_exit, HL_VOID, 1, p_i32);
  hl_register("Abort", call_abort, HL_VOID, 0, NULL);
  hl_register("RawSyscall", raw_syscall, HL_I64, 1, p_i32);
  hl_register("ProtectedCopy", protected_copy, HL_STR, 1, p_str);
}
