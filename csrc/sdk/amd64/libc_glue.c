/* libc_glue.c - what the guest's C library (musl, from the ziglang package;
 * docs/guests.md) needs from a system the guest does not have.
 *
 * - The thread pointer: musl reads errno, the locale and the stack
 *   protector's canary through %fs. hl_tcb is the thread control block; the
 *   host points FS at it when the ELF has this symbol (docs/abi.md).
 * - stdout and stderr: musl's FILE write hooks are replaced so bytes go out
 *   as PRINT records to the sandbox's writer instead of a writev syscall.
 * - The heap: malloc and friends are the SDK's allocator (alloc.c).
 *
 * The layouts below are musl's internal ABI for the pinned ziglang version
 * (struct pthread, struct _IO_FILE's first fields); tests/sdk exercise both. */
#include <errno.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hl_internal.h"

/* musl's struct pthread (x86_64, TLS below the thread pointer), up to the
 * fields its code reads in a single-threaded static program. */
struct hl_musl_thread {
  struct hl_musl_thread *self; /* %fs:0 */
  uintptr_t *dtv;
  void *prev, *next;
  uintptr_t sysinfo;
  uintptr_t canary; /* %fs:0x28, the stack protector's */
  int tid;
  int errno_val;
  int detach_state, cancel;
  unsigned char canceldisable, cancelasync, flags;
  unsigned char *map_base;
  size_t map_size;
  void *stack;
  size_t stack_size, guard_size;
  void *result, *cancelbuf, **tsd;
  void *robust_head;
  long robust_off;
  void *robust_pending;
  int h_errno_val, timer_id;
  locale_t locale;
  int killlock[1];
  char *dlerror_buf;
  void *stdio_locks;
};
_Static_assert(__builtin_offsetof(struct hl_musl_thread, canary) == 0x28, "canary at %fs:0x28");
_Static_assert(__builtin_offsetof(struct hl_musl_thread, locale) == 168, "musl struct pthread layout");

/* Room to spare past musl's struct; 64-byte aligned like a cache line. */
__attribute__((aligned(64), used)) union {
  struct hl_musl_thread t;
  unsigned char room[512];
} hl_tcb;

extern const struct __locale_struct __c_locale; /* musl: the C locale */

void hl_libc_init(uint64_t seed) {
  hl_tcb.t.self = &hl_tcb.t;
  hl_tcb.t.locale = (locale_t)&__c_locale;
  hl_tcb.t.tid = 1;
  /* A canary with a zero low byte (as glibc and musl do): string overflows
   * cannot reproduce it. */
  hl_tcb.t.canary = (seed * 0x9E3779B97F4A7C15ULL) & ~(uintptr_t)0xff;
}

/* ---- stdio ---- */

/* musl's struct _IO_FILE, its first fields. */
struct hl_musl_file {
  unsigned flags;
  unsigned char *rpos, *rend;
  int (*close)(FILE *);
  unsigned char *wend, *wpos;
  unsigned char *mustbezero_1;
  unsigned char *wbase;
  size_t (*read)(FILE *, unsigned char *, size_t);
  size_t (*write)(FILE *, const unsigned char *, size_t);
  long (*seek)(FILE *, long, int);
  unsigned char *buf;
  size_t buf_size;
  FILE *prev, *next;
  int fd;
  int pipe_pid;
  long lockcount;
  int mode;
  volatile int lock;
  int lbf;
};
#define HL_F_ERR 32

static void print_all(const unsigned char *p, size_t n) {
  while (n > 0) {
    int32_t done = hl_print_n((const char *)p, n);
    if (done <= 0) return;
    p += done;
    n -= (size_t)done;
  }
}

/* Replaces musl's writev-based writer for every FILE: stdout and stderr
 * print; any other descriptor cannot exist (fopen fails with ENOSYS). */
size_t __stdio_write(FILE *file, const unsigned char *buf, size_t len) {
  struct hl_musl_file *f = (struct hl_musl_file *)file;
  if (f->fd != 1 && f->fd != 2) {
    f->wpos = f->wbase = f->wend = 0;
    f->flags |= HL_F_ERR;
    errno = EBADF;
    return 0;
  }
  print_all(f->wbase, (size_t)(f->wpos - f->wbase));
  print_all(buf, len);
  f->wend = f->buf + f->buf_size;
  f->wpos = f->wbase = f->buf;
  return len;
}

/* stdout: musl asks the terminal whether to line-buffer (an ioctl). The
 * guest's stdout stays line-buffered, as on a terminal; what is left without
 * a newline goes out at the end of each guest call (hl_libc_after_call). */
size_t __stdout_write(FILE *file, const unsigned char *buf, size_t len) {
  ((struct hl_musl_file *)file)->write = __stdio_write;
  return __stdio_write(file, buf, len);
}

/* Defined (musl's stdout.c) only if the guest uses stdout: a weak reference
 * costs nothing to a guest that does not. stderr is unbuffered. */
extern FILE *const __stdout_used __attribute__((weak));

void hl_libc_after_call(void) {
  if (&__stdout_used == NULL) return;
  struct hl_musl_file *f = (struct hl_musl_file *)__stdout_used;
  if (f != NULL && f->wpos != f->wbase) __stdio_write((FILE *)f, NULL, 0);
}

size_t __stdio_read(FILE *file, unsigned char *buf, size_t len) {
  (void)buf;
  (void)len;
  ((struct hl_musl_file *)file)->flags |= HL_F_ERR;
  errno = ENOSYS;
  return 0;
}

long __stdio_seek(FILE *file, long off, int whence) {
  (void)file;
  (void)off;
  (void)whence;
  errno = ESPIPE;
  return -1;
}

int __stdio_close(FILE *file) {
  (void)file;
  return 0;
}

/* ---- heap ---- */

void *malloc(size_t n) { return hl_malloc(n); }
void *calloc(size_t n, size_t size) { return hl_calloc(n, size); }
void *realloc(void *p, size_t n) { return hl_realloc(p, n); }
void free(void *p) { hl_free(p); }

/* zig's C library implements these with its own page allocator (mmap); the
 * guest's come from the heap like every other allocation. */
char *strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = hl_malloc(n);
  return d ? memcpy(d, s, n) : NULL;
}

char *strndup(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  char *d = hl_malloc(n + 1);
  if (d == NULL) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}
