/* format32.c - string and formatting functions for i686 guests, which have
 * no C library (hl32.h lists them). Integer formats only: the i686 profile
 * runs without x87 or SSE (-mgeneral-regs-only), so there is no %f.
 *
 * No 64-bit division either (there is no 32-bit libgcc): u64 values are
 * converted by shift-and-subtract long division. */
#include <stdarg.h>
#include <stdbool.h>

#include "hl32.h"

/* ---- strings ---- */

size_t strnlen(const char *s, size_t max) {
  size_t n = 0;
  while (n < max && s[n]) n++;
  return n;
}

int strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n) {
  for (; n > 0; n--, a++, b++)
    if (*a != *b || !*a) return (unsigned char)*a - (unsigned char)*b;
  return 0;
}

char *strcpy(char *restrict d, const char *restrict s) {
  char *r = d;
  while ((*d++ = *s++)) {}
  return r;
}

char *strncpy(char *restrict d, const char *restrict s, size_t n) {
  size_t i = 0;
  for (; i < n && s[i]; i++) d[i] = s[i];
  for (; i < n; i++) d[i] = '\0';
  return d;
}

char *strcat(char *restrict d, const char *restrict s) {
  strcpy(d + strlen(d), s);
  return d;
}

char *strchr(const char *s, int c) {
  for (;; s++) {
    if (*s == (char)c) return (char *)s;
    if (!*s) return NULL;
  }
}

char *strrchr(const char *s, int c) {
  const char *found = NULL;
  for (;; s++) {
    if (*s == (char)c) found = s;
    if (!*s) return (char *)found;
  }
}

char *strstr(const char *h, const char *n) {
  size_t len = strlen(n);
  for (; *h; h++)
    if (strncmp(h, n, len) == 0) return (char *)h;
  return len == 0 ? (char *)h : NULL;
}

/* ---- formatting ---- */

typedef struct {
  char *buf;
  size_t size; /* room including the NUL */
  size_t len;  /* what would have been written */
} out_t;

static void emit(out_t *o, char c) {
  if (o->len + 1 < o->size) o->buf[o->len] = c;
  o->len++;
}

static void emit_n(out_t *o, char c, int n) {
  while (n-- > 0) emit(o, c);
}

/* v / 10 and v % 10 without 64-bit division. */
static uint64_t divmod(uint64_t v, uint32_t base, uint32_t *rem) {
  uint64_t q = 0;
  uint32_t r = 0;
  for (int i = 63; i >= 0; i--) {
    r = (r << 1) | (uint32_t)((v >> i) & 1);
    if (r >= base) {
      r -= base;
      q |= (uint64_t)1 << i;
    }
  }
  *rem = r;
  return q;
}

static void emit_number(out_t *o, uint64_t v, bool negative, uint32_t base, bool upper, int width, int precision,
                        bool left, char pad, const char *prefix) {
  char digits[24];
  int n = 0;
  const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  while (v != 0) {
    uint32_t r;
    v = base == 16 ? (r = (uint32_t)(v & 15), v >> 4) : base == 8 ? (r = (uint32_t)(v & 7), v >> 3)
                                                                   : divmod(v, base, &r);
    digits[n++] = set[r];
  }
  if (precision < 0 && n == 0) digits[n++] = '0';
  int zeros = precision > n ? precision - n : 0;
  int plen = (negative ? 1 : 0) + (int)strlen(prefix);
  int total = plen + zeros + n;
  if (precision < 0 && pad == '0' && !left && width > total) zeros += width - total, total = width;
  if (!left) emit_n(o, ' ', width - total);
  if (negative) emit(o, '-');
  for (const char *p = prefix; *p; p++) emit(o, *p);
  emit_n(o, '0', zeros);
  while (n > 0) emit(o, digits[--n]);
  if (left) emit_n(o, ' ', width - total);
}

int vsnprintf(char *restrict buf, size_t size, const char *restrict fmt, va_list ap) {
  out_t o = {buf, size, 0};
  for (const char *p = fmt; *p; p++) {
    if (*p != '%') {
      emit(&o, *p);
      continue;
    }
    const char *start = p++;
    bool left = false, alt = false;
    char pad = ' ';
    for (;; p++) {
      if (*p == '-') left = true;
      else if (*p == '0') pad = '0';
      else if (*p == '#') alt = true;
      else if (*p != ' ' && *p != '+') break;
    }
    int width = 0, precision = -1;
    if (*p == '*') {
      width = va_arg(ap, int);
      if (width < 0) left = true, width = -width;
      p++;
    } else {
      while (*p >= '0' && *p <= '9') width = width * 10 + (*p++ - '0');
    }
    if (*p == '.') {
      p++;
      precision = 0;
      if (*p == '*') {
        precision = va_arg(ap, int);
        p++;
      } else {
        while (*p >= '0' && *p <= '9') precision = precision * 10 + (*p++ - '0');
      }
    }
    int longs = 0;
    bool size_t_arg = false;
    for (;; p++) {
      if (*p == 'l') longs++;
      else if (*p == 'z' || *p == 't' || *p == 'j') size_t_arg = *p != 'j', longs += *p == 'j' ? 2 : 0;
      else if (*p != 'h') break;
    }
    switch (*p) {
    case 'd':
    case 'i': {
      int64_t v = longs >= 2 ? va_arg(ap, long long) : longs == 1 ? va_arg(ap, long) : va_arg(ap, int);
      if (size_t_arg) v = (int32_t)v;
      uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
      emit_number(&o, mag, v < 0, 10, false, width, precision, left, pad, "");
      break;
    }
    case 'u':
    case 'x':
    case 'X':
    case 'o': {
      uint64_t v = longs >= 2 ? va_arg(ap, unsigned long long)
                              : longs == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
      uint32_t base = *p == 'u' ? 10 : *p == 'o' ? 8 : 16;
      const char *prefix = alt && v != 0 ? (*p == 'x' ? "0x" : *p == 'X' ? "0X" : *p == 'o' ? "0" : "") : "";
      emit_number(&o, v, false, base, *p == 'X', width, precision, left, pad, prefix);
      break;
    }
    case 'p':
      emit_number(&o, (uintptr_t)va_arg(ap, void *), false, 16, false, width, -1, left, ' ', "0x");
      break;
    case 'c': {
      if (!left) emit_n(&o, ' ', width - 1);
      emit(&o, (char)va_arg(ap, int));
      if (left) emit_n(&o, ' ', width - 1);
      break;
    }
    case 's': {
      const char *s = va_arg(ap, const char *);
      if (s == NULL) s = "(null)";
      int n = (int)(precision >= 0 ? strnlen(s, (size_t)precision) : strlen(s));
      if (!left) emit_n(&o, ' ', width - n);
      for (int i = 0; i < n; i++) emit(&o, s[i]);
      if (left) emit_n(&o, ' ', width - n);
      break;
    }
    case '%':
      emit(&o, '%');
      break;
    default: /* unsupported (e.g. %f): written out as it is */
      for (const char *q = start; q <= p && *q; q++) emit(&o, *q);
      if (!*p) p--;
      break;
    }
  }
  if (size > 0) buf[o.len < size ? o.len : size - 1] = '\0';
  return (int)o.len;
}

int snprintf(char *restrict buf, size_t size, const char *restrict fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

int printf(const char *restrict fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  hl32_print(buf); /* longer output is cut at 511 bytes */
  return n;
}

int puts(const char *s) {
  hl32_print(s);
  hl32_print("\n");
  return 0;
}
