/* libc_os.c - the C library's operating-system calls, for a guest that has no
 * operating system (docs/guests.md, "The C library").
 *
 * musl makes raw `syscall`s, which fault in a guest (docs/abi.md). Each
 * function here replaces the musl function of the same name, so the linker
 * never pulls musl's: files, sockets, processes, signals and threads fail
 * with -1 (or NULL) and errno = ENOSYS; the clocks ask the host (a built-in
 * raw host function); exit and abort end the call with GuestAborted. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hl_internal.h"

#define NOSYS(ret) \
  do {             \
    errno = ENOSYS; \
    return ret;    \
  } while (0)

/* ---- files ---- */

int open(const char *path, int flags, ...) { (void)path; (void)flags; NOSYS(-1); }
int openat(int dir, const char *path, int flags, ...) { (void)dir; (void)path; (void)flags; NOSYS(-1); }
int creat(const char *path, mode_t mode) { (void)path; (void)mode; NOSYS(-1); }
int close(int fd) { (void)fd; NOSYS(-1); }
ssize_t read(int fd, void *buf, size_t n) { (void)fd; (void)buf; (void)n; NOSYS(-1); }
off_t lseek(int fd, off_t off, int whence) { (void)fd; (void)off; (void)whence; NOSYS(-1); }
int dup(int fd) { (void)fd; NOSYS(-1); }
int dup2(int a, int b) { (void)a; (void)b; NOSYS(-1); }
int fcntl(int fd, int cmd, ...) { (void)fd; (void)cmd; NOSYS(-1); }
int ioctl(int fd, int req, ...) { (void)fd; (void)req; NOSYS(-1); }
int stat(const char *restrict p, struct stat *restrict st) { (void)p; (void)st; NOSYS(-1); }
int lstat(const char *restrict p, struct stat *restrict st) { (void)p; (void)st; NOSYS(-1); }
int fstat(int fd, struct stat *st) { (void)fd; (void)st; NOSYS(-1); }
int access(const char *p, int mode) { (void)p; (void)mode; NOSYS(-1); }
int unlink(const char *p) { (void)p; NOSYS(-1); }
int rmdir(const char *p) { (void)p; NOSYS(-1); }
int mkdir(const char *p, mode_t mode) { (void)p; (void)mode; NOSYS(-1); }
int remove(const char *p) { (void)p; NOSYS(-1); }
int rename(const char *a, const char *b) { (void)a; (void)b; NOSYS(-1); }
int chdir(const char *p) { (void)p; NOSYS(-1); }
char *getcwd(char *buf, size_t n) { (void)buf; (void)n; NOSYS(NULL); }
DIR *opendir(const char *p) { (void)p; NOSYS(NULL); }
int isatty(int fd) { (void)fd; errno = ENOTTY; return 0; }

/* write(2) to stdout and stderr prints, like the stdio streams. */
ssize_t write(int fd, const void *buf, size_t n) {
  if (fd != 1 && fd != 2) NOSYS(-1);
  const char *p = buf;
  size_t left = n;
  while (left > 0) {
    int32_t done = hl_print_n(p, left);
    if (done <= 0) break;
    p += done;
    left -= (size_t)done;
  }
  return (ssize_t)(n - left);
}

FILE *fopen(const char *restrict p, const char *restrict mode) { (void)p; (void)mode; NOSYS(NULL); }
FILE *freopen(const char *restrict p, const char *restrict mode, FILE *restrict f) {
  (void)p; (void)mode; (void)f; NOSYS(NULL);
}
FILE *fdopen(int fd, const char *mode) { (void)fd; (void)mode; NOSYS(NULL); }
FILE *tmpfile(void) { NOSYS(NULL); }
char *tmpnam(char *buf) { (void)buf; NOSYS(NULL); }
FILE *popen(const char *cmd, const char *mode) { (void)cmd; (void)mode; NOSYS(NULL); }
int pclose(FILE *f) { (void)f; NOSYS(-1); }

/* ---- memory mappings (the heap is malloc's) ---- */

void *mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) {
  (void)a; (void)n; (void)prot; (void)flags; (void)fd; (void)off;
  errno = ENOSYS;
  return MAP_FAILED;
}
int munmap(void *a, size_t n) { (void)a; (void)n; NOSYS(-1); }
int mprotect(void *a, size_t n, int prot) { (void)a; (void)n; (void)prot; NOSYS(-1); }
void *sbrk(intptr_t n) { (void)n; errno = ENOMEM; return (void *)-1; }

/* ---- processes, signals, threads ---- */

int system(const char *cmd) {
  if (cmd == NULL) return 0; /* no command processor */
  NOSYS(-1);
}
pid_t fork(void) { NOSYS(-1); }
int execve(const char *p, char *const argv[], char *const envp[]) { (void)p; (void)argv; (void)envp; NOSYS(-1); }
int execv(const char *p, char *const argv[]) { (void)p; (void)argv; NOSYS(-1); }
int execvp(const char *p, char *const argv[]) { (void)p; (void)argv; NOSYS(-1); }
pid_t waitpid(pid_t pid, int *status, int options) { (void)pid; (void)status; (void)options; NOSYS(-1); }
int pipe(int fds[2]) { (void)fds; NOSYS(-1); }
pid_t getpid(void) { return 1; }
pid_t getppid(void) { return 0; }
uid_t getuid(void) { return 0; }
int kill(pid_t pid, int sig) { (void)pid; (void)sig; NOSYS(-1); }
int raise(int sig) {
  (void)sig;
  hl_abort(HL_ERR_GENERIC, "raise(): signals do not exist in a guest");
}
int sigaction(int sig, const struct sigaction *restrict a, struct sigaction *restrict old) {
  (void)sig; (void)a; (void)old; NOSYS(-1);
}
void (*signal(int sig, void (*fn)(int)))(int) { (void)sig; (void)fn; errno = ENOSYS; return SIG_ERR; }
int pthread_create(pthread_t *restrict t, const pthread_attr_t *restrict a, void *(*fn)(void *),
                   void *restrict arg) {
  (void)t; (void)a; (void)fn; (void)arg;
  return ENOSYS; /* pthread functions return the error */
}
int socket(int domain, int type, int proto) { (void)domain; (void)type; (void)proto; NOSYS(-1); }
int connect(int fd, const struct sockaddr *a, socklen_t n) { (void)fd; (void)a; (void)n; NOSYS(-1); }
int bind(int fd, const struct sockaddr *a, socklen_t n) { (void)fd; (void)a; (void)n; NOSYS(-1); }
int listen(int fd, int n) { (void)fd; (void)n; NOSYS(-1); }
int accept(int fd, struct sockaddr *restrict a, socklen_t *restrict n) { (void)fd; (void)a; (void)n; NOSYS(-1); }

/* A guest has no process to end: exit ends the call with GuestAborted, after the
 * atexit handlers and a flush of stdout (musl's exit calls _Exit last). */
_Noreturn void _Exit(int code) {
  hl_libc_after_call();
  hl_abort(code, "the guest called exit()");
}
_Noreturn void abort(void) {
  hl_libc_after_call();
  hl_abort(HL_ERR_GENERIC, "the guest called abort()");
}

/* ---- time: the host's clocks ---- */

/* Reply of the built-in raw host function HL_RAW_FN_CLOCK (docs/abi.md):
 * realtime, monotonic and process-CPU nanoseconds as three i64. */
static int host_clock(clockid_t clk, int64_t *ns) {
  const uint8_t *resp;
  uint32_t len;
  if (hl_call_host_raw(HL_RAW_FN_CLOCK, NULL, 0, &resp, &len) != HL_RAW_OK || len != 24) NOSYS(-1);
  int64_t v[3];
  memcpy(v, resp, sizeof v);
  switch (clk) {
  case CLOCK_REALTIME:
  case CLOCK_REALTIME_COARSE:
    *ns = v[0];
    return 0;
  case CLOCK_MONOTONIC:
  case CLOCK_MONOTONIC_RAW:
  case CLOCK_MONOTONIC_COARSE:
  case CLOCK_BOOTTIME:
    *ns = v[1];
    return 0;
  case CLOCK_PROCESS_CPUTIME_ID:
  case CLOCK_THREAD_CPUTIME_ID:
    *ns = v[2];
    return 0;
  }
  errno = EINVAL;
  return -1;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
  int64_t ns;
  if (host_clock(clk, &ns) != 0) return -1;
  ts->tv_sec = ns / 1000000000;
  ts->tv_nsec = ns % 1000000000;
  return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
  (void)tz;
  int64_t ns;
  if (host_clock(CLOCK_REALTIME, &ns) != 0) return -1;
  if (tv != NULL) {
    tv->tv_sec = ns / 1000000000;
    tv->tv_usec = ns % 1000000000 / 1000;
  }
  return 0;
}

time_t time(time_t *t) {
  int64_t ns;
  time_t now = host_clock(CLOCK_REALTIME, &ns) == 0 ? (time_t)(ns / 1000000000) : (time_t)-1;
  if (t != NULL) *t = now;
  return now;
}

clock_t clock(void) {
  int64_t ns;
  if (host_clock(CLOCK_PROCESS_CPUTIME_ID, &ns) != 0) return (clock_t)-1;
  return (clock_t)(ns / (1000000000 / CLOCKS_PER_SEC));
}

/* No sleeping: a guest that waits holds its vCPU; fail instead. */
int nanosleep(const struct timespec *req, struct timespec *rem) { (void)req; (void)rem; NOSYS(-1); }
unsigned sleep(unsigned s) { errno = ENOSYS; return s; }
int usleep(unsigned us) { (void)us; NOSYS(-1); }
