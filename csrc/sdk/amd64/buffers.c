/* buffers.c - stacks of records in the input/output buffers, and the value
 * encoding (docs/abi.md, "Buffers" and "Values").
 *
 * Everything here treats the buffers as untrusted memory the host may have
 * left in any state: every offset is checked before it is used, and nothing
 * is ever written past a buffer's end. Payload fields are unaligned, so they
 * are copied with memcpy. */
#include "hl_internal.h"

hl_buffer hl_input_buffer;
hl_buffer hl_output_buffer;

#define RECORD_HEADER 8 /* u32 length, u8 kind, 3 reserved bytes */
#define BACK_POINTER 8

static uint64_t align8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static uint64_t read_u64(const uint8_t *p) {
  uint64_t x;
  memcpy(&x, p, 8);
  return x;
}

static void write_u64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }

static uint64_t get_top(const hl_buffer *b) { return read_u64(b->base); }

/* A top is usable if it is 8-aligned and inside the buffer, past the top
 * field itself. */
static bool valid_top(const hl_buffer *b, uint64_t top) {
  return top >= 8 && top <= b->size && (top & 7) == 0;
}

void hl_buffer_reset(hl_buffer *b) {
  if (b->base != NULL && b->size >= 8) write_u64(b->base, 8);
}

/* ---- writing ---- */

bool hl_record_begin(hl_writer *w, hl_buffer *b, uint8_t kind) {
  w->buf = b;
  w->kind = kind;
  w->ok = false;
  w->start = w->pos = w->limit = 0;
  if (b->base == NULL || b->size < 8) return false;
  uint64_t top = get_top(b);
  if (!valid_top(b, top) || b->size - top < RECORD_HEADER + BACK_POINTER) return false;
  /* The padded payload must fit between the header and the back-pointer. */
  uint64_t max_payload = (b->size - top - RECORD_HEADER - BACK_POINTER) & ~(uint64_t)7;
  if (max_payload > UINT32_MAX) max_payload = UINT32_MAX & ~(uint64_t)7;
  w->start = top;
  w->pos = top + RECORD_HEADER;
  w->limit = w->pos + max_payload;
  w->ok = true;
  return true;
}

uint64_t hl_writer_room(const hl_writer *w) { return w->ok ? w->limit - w->pos : 0; }

void hl_put(hl_writer *w, const void *p, uint64_t n) {
  if (!w->ok || n > w->limit - w->pos) {
    w->ok = false;
    return;
  }
  memcpy(w->buf->base + w->pos, p, n);
  w->pos += n;
}

void hl_put_u8(hl_writer *w, uint8_t x) { hl_put(w, &x, 1); }
void hl_put_u16(hl_writer *w, uint16_t x) { hl_put(w, &x, 2); }
void hl_put_u32(hl_writer *w, uint32_t x) { hl_put(w, &x, 4); }

static void put_nul(hl_writer *w) { hl_put_u8(w, 0); }

void hl_put_name(hl_writer *w, const char *s, uint64_t len) {
  if (len > UINT16_MAX) {
    w->ok = false;
    return;
  }
  hl_put_u16(w, (uint16_t)len);
  hl_put(w, s, len);
  put_nul(w);
}

void hl_put_str(hl_writer *w, const char *s, uint64_t len) {
  if (len > UINT32_MAX) {
    w->ok = false;
    return;
  }
  hl_put_u32(w, (uint32_t)len);
  hl_put(w, s, len);
  put_nul(w);
}

uint32_t hl_put_str_fit(hl_writer *w, const char *s, uint64_t len, uint64_t reserve) {
  const uint64_t overhead = 5; /* u32 length + NUL */
  uint64_t room = hl_writer_room(w);
  if (room < reserve + overhead) {
    w->ok = false;
    return 0;
  }
  uint64_t n = room - reserve - overhead;
  if (len <= n) {
    n = len;
  } else {
    /* Do not split a multi-byte character: back off while s[n], the first
     * byte left out, is a continuation byte. */
    while (n > 0 && ((uint8_t)s[n] & 0xC0) == 0x80) n--;
  }
  hl_put_str(w, s, n);
  return (uint32_t)n;
}

void hl_put_value(hl_writer *w, const hl_value *v) {
  if ((unsigned)v->type > HL_BYTES) {
    w->ok = false;
    return;
  }
  hl_put_u8(w, (uint8_t)v->type);
  switch (v->type) {
  case HL_VOID:
    break;
  case HL_I32:
  case HL_U32:
  case HL_F32:
    hl_put(w, &v->u32, 4); /* the union shares the bytes */
    break;
  case HL_I64:
  case HL_U64:
  case HL_F64:
    hl_put(w, &v->u64, 8);
    break;
  case HL_BOOL:
    hl_put_u8(w, v->b ? 1 : 0);
    break;
  case HL_STR:
    hl_put_str(w, v->str, v->len);
    break;
  case HL_BYTES:
    hl_put_u32(w, v->len);
    hl_put(w, v->bytes, v->len);
    break;
  }
}

bool hl_record_end(hl_writer *w) {
  if (!w->ok) return false;
  uint8_t *base = w->buf->base;
  uint64_t len = w->pos - w->start - RECORD_HEADER;
  uint64_t end = w->start + RECORD_HEADER + align8(len);
  memset(base + w->pos, 0, end - w->pos); /* padding; begin() reserved it */
  uint32_t len32 = (uint32_t)len;
  uint8_t header[RECORD_HEADER] = {0};
  memcpy(header, &len32, 4);
  header[4] = w->kind;
  memcpy(base + w->start, header, RECORD_HEADER);
  write_u64(base + end, w->start);
  write_u64(base, end + BACK_POINTER); /* publish: the new top */
  return true;
}

/* ---- reading ---- */

bool hl_record_peek(const hl_buffer *b, hl_record *r) {
  if (b->base == NULL || b->size < 8) return false;
  uint64_t top = get_top(b);
  if (!valid_top(b, top) || top < 8 + RECORD_HEADER + BACK_POINTER) return false;
  uint64_t p = read_u64(b->base + top - BACK_POINTER);
  if (p < 8 || (p & 7) != 0 || p > top - RECORD_HEADER - BACK_POINTER) return false;
  uint32_t len;
  memcpy(&len, b->base + p, 4);
  if (p + RECORD_HEADER + align8(len) + BACK_POINTER != top) return false;
  r->start = p;
  r->kind = b->base[p + 4];
  r->len = len;
  r->payload = b->base + p + RECORD_HEADER;
  return true;
}

void hl_record_pop(hl_buffer *b, const hl_record *r) { write_u64(b->base, r->start); }

void hl_reader_init(hl_reader *r, const hl_record *rec) {
  r->p = rec->payload;
  r->len = rec->len;
  r->pos = 0;
  r->ok = true;
}

bool hl_reader_done(const hl_reader *r) { return r->ok && r->pos == r->len; }

/* Returns a pointer to the next n bytes and consumes them, or NULL. */
HL_HOT static const uint8_t *take(hl_reader *r, uint64_t n) {
  if (!r->ok || n > r->len - r->pos) {
    r->ok = false;
    return NULL;
  }
  const uint8_t *p = r->p + r->pos;
  r->pos += n;
  return p;
}

uint8_t hl_get_u8(hl_reader *r) {
  const uint8_t *p = take(r, 1);
  return p ? *p : 0;
}

uint16_t hl_get_u16(hl_reader *r) {
  uint16_t x = 0;
  const uint8_t *p = take(r, 2);
  if (p) memcpy(&x, p, 2);
  return x;
}

uint32_t hl_get_u32(hl_reader *r) {
  uint32_t x = 0;
  const uint8_t *p = take(r, 4);
  if (p) memcpy(&x, p, 4);
  return x;
}

/* The bytes of a name or str, which must be followed by a NUL: C code gets
 * them as NUL-terminated strings. */
HL_HOT static const char *get_terminated(hl_reader *r, uint64_t len) {
  const uint8_t *p = take(r, len + 1);
  if (p == NULL) return NULL;
  if (p[len] != 0) {
    r->ok = false;
    return NULL;
  }
  return (const char *)p;
}

const char *hl_get_name(hl_reader *r, uint16_t *len) {
  *len = hl_get_u16(r);
  return r->ok ? get_terminated(r, *len) : NULL;
}

const char *hl_get_str(hl_reader *r, uint32_t *len) {
  *len = hl_get_u32(r);
  return r->ok ? get_terminated(r, *len) : NULL;
}

bool hl_valid_type(uint8_t tag) { return tag <= HL_BYTES; }

void hl_get_value_data(hl_reader *r, hl_type type, hl_value *v) {
  const uint8_t *p;
  memset(v, 0, sizeof *v);
  v->type = type;
  switch (type) {
  case HL_VOID:
    break;
  case HL_I32:
  case HL_U32:
  case HL_F32:
    if ((p = take(r, 4)) != NULL) memcpy(&v->u32, p, 4);
    break;
  case HL_I64:
  case HL_U64:
  case HL_F64:
    if ((p = take(r, 8)) != NULL) memcpy(&v->u64, p, 8);
    break;
  case HL_BOOL: {
    uint8_t b = hl_get_u8(r);
    if (b > 1) r->ok = false;
    v->b = b == 1;
    break;
  }
  case HL_STR:
    v->str = hl_get_str(r, &v->len);
    break;
  case HL_BYTES:
    v->len = hl_get_u32(r);
    v->bytes = take(r, v->len);
    break;
  default:
    r->ok = false;
  }
}

void hl_get_value(hl_reader *r, hl_value *v) {
  uint8_t tag = hl_get_u8(r);
  if (!r->ok || !hl_valid_type(tag)) {
    r->ok = false;
    memset(v, 0, sizeof *v);
    return;
  }
  hl_get_value_data(r, (hl_type)tag, v);
}

/* ---- errors ---- */

static bool try_push_error(uint32_t code, const char *msg, uint64_t len) {
  hl_writer w;
  if (!hl_record_begin(&w, &hl_output_buffer, HL_REC_ERROR)) return false;
  hl_put_u32(&w, code);
  hl_put_str_fit(&w, msg, len, 0);
  return hl_record_end(&w);
}

bool hl_push_error(uint32_t code, const char *msg, uint64_t len) {
  if (msg == NULL) msg = "", len = 0;
  if (try_push_error(code, msg, len)) return true;
  /* The host empties the output buffer before each call, so this only
   * happens if something (a bad top, a full buffer) broke that. */
  hl_buffer_reset(&hl_output_buffer);
  return try_push_error(code, msg, len);
}
