/* string.c - the C library functions every freestanding guest needs (the
 * compiler also emits calls to memcpy/memset/memmove for struct copies),
 * compiled into i686 guests (amd64 guests have the C library's).
 *
 * The copy functions use `rep movsb`/`rep stosb`, which the kvm-pvm emulator
 * handles for 32-bit code. Written as C loops,
 * GCC could turn them back into calls to themselves. */
#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n) {
  void *d = dst;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
  if (d <= s || d - s >= n) return memcpy(dst, src, n);
  /* dst overlaps the end of src: copy backwards (DF=1), then restore DF=0,
   * which the SysV ABI requires at every call. */
  uint8_t *dl = (uint8_t *)dst + n - 1;
  const uint8_t *sl = (const uint8_t *)src + n - 1;
  __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(dl), "+S"(sl), "+c"(n) : : "memory", "cc");
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  void *d = dst;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const uint8_t *x = a, *y = b;
  for (size_t i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

size_t strlen(const char *s) {
  const char *p = s;
  while (*p) p++;
  return (size_t)(p - s);
}
