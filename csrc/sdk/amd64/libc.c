/* libc.c - small string helpers for the SDK's messages (memcpy and friends
 * are musl's). */
#include "hl_internal.h"

char *hl_itoa(int64_t v, char *buf) {
  char tmp[20];
  int n = 0;
  /* Negate as unsigned so INT64_MIN works. */
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  char *p = buf;
  if (v < 0) *p++ = '-';
  while (n > 0) *p++ = tmp[--n];
  *p = '\0';
  return buf;
}

/* ---- messages ---- */

void hl_msg_init(hl_msg *m) {
  m->len = 0;
  m->text[0] = '\0';
}

/* Appends what fits; the text stays NUL-terminated. */
void hl_msg_mem(hl_msg *m, const char *s, size_t n) {
  size_t room = sizeof m->text - 1 - m->len;
  if (n > room) n = room;
  memcpy(m->text + m->len, s, n);
  m->len += n;
  m->text[m->len] = '\0';
}

void hl_msg_str(hl_msg *m, const char *s) { hl_msg_mem(m, s, strlen(s)); }

void hl_msg_int(hl_msg *m, int64_t v) {
  char buf[21];
  hl_msg_str(m, hl_itoa(v, buf));
}

/* The names of docs/abi.md and hlsandbox.func.types. A switch, not a table
 * of pointers, so it needs no relocations. */
const char *hl_type_name(hl_type t) {
  switch (t) {
  case HL_VOID: return "void";
  case HL_I32: return "i32";
  case HL_U32: return "u32";
  case HL_I64: return "i64";
  case HL_U64: return "u64";
  case HL_F32: return "f32";
  case HL_F64: return "f64";
  case HL_BOOL: return "bool";
  case HL_STR: return "str";
  case HL_BYTES: return "bytes";
  }
  return "invalid type";
}
