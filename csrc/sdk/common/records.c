/* records.c - stacks of records in the input/output buffers and the value
 * encoding (docs/abi.md, "Buffers" and "Values"): the one implementation of the
 * wire format on the guest side, compiled into amd64 and i686 guests.
 *
 * Everything here treats the buffers as untrusted memory the host may have
 * left in any state: every offset is checked before it is used, and nothing
 * is ever written past a buffer's end. Payload fields are unaligned, so they
 * are copied with memcpy (__builtin_memcpy: inlined for fixed sizes even in
 * the freestanding i686 build). */
#include "hl_records.h"

hl_buffer hl_input_buffer;
hl_buffer hl_output_buffer;

#define RECORD_HEADER HL_RECORD_HEADER
#define BACK_POINTER HL_RECORD_BACK_POINTER
#define EMPTY_TOP HL_BUFFER_EMPTY_TOP

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* A u64 offset field of the ABI (a top or back-pointer); false if it does not
 * fit in size_t (on i686: a nonzero high half). */
static bool load_offset(const uint8_t *p, size_t *out) {
#if SIZE_MAX > UINT32_MAX
  uint64_t x;
  __builtin_memcpy(&x, p, 8);
  *out = x;
  return true;
#else
  uint32_t half[2];
  __builtin_memcpy(half, p, 8);
  *out = half[0];
  return half[1] == 0;
#endif
}

static void store_offset(uint8_t *p, size_t x) {
  uint64_t v = x; /* zero-extended on i686: two 32-bit stores, no FPU */
  __builtin_memcpy(p, &v, 8);
}

/* The top of b if it is usable: 8-aligned, inside the buffer, past the top
 * field itself. */
static bool get_top(const hl_buffer *b, size_t *top) {
  if (b->base == NULL || b->size < EMPTY_TOP || !load_offset(b->base, top)) return false;
  return *top >= EMPTY_TOP && *top <= b->size && (*top & 7) == 0;
}

void hl_buffer_reset(hl_buffer *b) {
  if (b->base != NULL && b->size >= EMPTY_TOP) store_offset(b->base, EMPTY_TOP);
}

/* ---- writing ---- */

bool hl_record_begin(hl_writer *w, hl_buffer *b, uint8_t kind) {
  size_t top;
  w->buf = b;
  w->kind = kind;
  w->ok = false;
  w->start = w->pos = w->limit = 0;
  if (!get_top(b, &top) || b->size - top < RECORD_HEADER + BACK_POINTER) return false;
  /* The padded payload must fit between the header and the back-pointer. */
  size_t max_payload = (b->size - top - RECORD_HEADER - BACK_POINTER) & ~(size_t)7;
#if SIZE_MAX > UINT32_MAX
  if (max_payload > UINT32_MAX) max_payload = UINT32_MAX & ~(size_t)7; /* the header's u32 length */
#endif
  w->start = top;
  w->pos = top + RECORD_HEADER;
  w->limit = w->pos + max_payload;
  w->ok = true;
  return true;
}

size_t hl_writer_room(const hl_writer *w) { return w->ok ? w->limit - w->pos : 0; }

void hl_put(hl_writer *w, const void *p, uint64_t n) {
  if (!w->ok || n > w->limit - w->pos) {
    w->ok = false;
    return;
  }
  __builtin_memcpy(w->buf->base + w->pos, p, (size_t)n);
  w->pos += (size_t)n;
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
  size_t n = (size_t)(room - reserve - overhead);
  if (len <= n) {
    n = (size_t)len;
  } else {
    /* Do not split a multi-byte character: back off while s[n], the first
     * byte left out, is a continuation byte. */
    while (n > 0 && ((uint8_t)s[n] & 0xC0) == 0x80) n--;
  }
  hl_put_str(w, s, n);
  return (uint32_t)n;
}

bool hl_record_end(hl_writer *w) {
  if (!w->ok) return false;
  uint8_t *base = w->buf->base;
  size_t len = w->pos - w->start - RECORD_HEADER;
  size_t end = w->start + RECORD_HEADER + align8(len);
  __builtin_memset(base + w->pos, 0, end - w->pos); /* padding; begin() reserved it */
  uint32_t len32 = (uint32_t)len;
  uint8_t header[RECORD_HEADER] = {0};
  __builtin_memcpy(header, &len32, 4);
  header[4] = w->kind;
  __builtin_memcpy(base + w->start, header, RECORD_HEADER);
  store_offset(base + end, w->start);
  store_offset(base, end + BACK_POINTER); /* publish: the new top */
  return true;
}

/* ---- reading ---- */

bool hl_record_peek(const hl_buffer *b, hl_record *r) {
  size_t top, p;
  if (!get_top(b, &top) || top < EMPTY_TOP + RECORD_HEADER + BACK_POINTER) return false;
  if (!load_offset(b->base + top - BACK_POINTER, &p)) return false;
  if (p < EMPTY_TOP || (p & 7) != 0 || p > top - RECORD_HEADER - BACK_POINTER) return false;
  uint32_t len;
  __builtin_memcpy(&len, b->base + p, 4);
  size_t room = top - p - RECORD_HEADER - BACK_POINTER; /* a multiple of 8 */
  if (len > room || align8(len) != room) return false;    /* len first: align8 cannot wrap */
  r->start = p;
  r->kind = b->base[p + 4];
  r->len = len;
  r->payload = b->base + p + RECORD_HEADER;
  return true;
}

void hl_record_pop(hl_buffer *b, const hl_record *r) { store_offset(b->base, r->start); }

void hl_reader_init(hl_reader *r, const hl_record *rec) {
  r->p = rec->payload;
  r->len = rec->len;
  r->pos = 0;
  r->ok = true;
}

bool hl_reader_done(const hl_reader *r) { return r->ok && r->pos == r->len; }

/* Returns a pointer to the next n bytes and consumes them, or NULL. n is a
 * u64 so that a length + 1 cannot wrap on i686. */
HL_HOT static const uint8_t *take(hl_reader *r, uint64_t n) {
  if (!r->ok || n > r->len - r->pos) {
    r->ok = false;
    return NULL;
  }
  const uint8_t *p = r->p + r->pos;
  r->pos += (size_t)n;
  return p;
}

uint8_t hl_get_u8(hl_reader *r) {
  const uint8_t *p = take(r, 1);
  return p ? *p : 0;
}

uint16_t hl_get_u16(hl_reader *r) {
  uint16_t x = 0;
  const uint8_t *p = take(r, 2);
  if (p) __builtin_memcpy(&x, p, 2);
  return x;
}

uint32_t hl_get_u32(hl_reader *r) {
  uint32_t x = 0;
  const uint8_t *p = take(r, 4);
  if (p) __builtin_memcpy(&x, p, 4);
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

/* ---- values (amd64: hl_value has float members) ---- */

#if HL_RECORDS_VALUES
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

bool hl_valid_type(uint8_t tag) { return tag <= HL_BYTES; }

void hl_get_value_data(hl_reader *r, hl_type type, hl_value *v) {
  const uint8_t *p;
  __builtin_memset(v, 0, sizeof *v);
  v->type = type;
  switch (type) {
  case HL_VOID:
    break;
  case HL_I32:
  case HL_U32:
  case HL_F32:
    if ((p = take(r, 4)) != NULL) __builtin_memcpy(&v->u32, p, 4);
    break;
  case HL_I64:
  case HL_U64:
  case HL_F64:
    if ((p = take(r, 8)) != NULL) __builtin_memcpy(&v->u64, p, 8);
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
    __builtin_memset(v, 0, sizeof *v);
    return;
  }
  hl_get_value_data(r, (hl_type)tag, v);
}
#endif

/* ---- records both runtimes push ---- */

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

bool hl_push_print(const char *text, uint64_t len, uint32_t *sent) {
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_PRINT);
  *sent = hl_put_str_fit(&w, text, len, 0);
  return hl_record_end(&w);
}

/* ---- raw host calls ---- */

static uint32_t raw_local(const uint8_t **resp, uint32_t *resp_len, uint32_t status, const char *msg) {
  *resp = (const uint8_t *)msg;
  *resp_len = (uint32_t)__builtin_strlen(msg);
  return status;
}

static uint32_t raw_request(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp,
                            uint32_t *resp_len) {
  if (req == NULL && req_len != 0) return raw_local(resp, resp_len, HL_RAW_MALFORMED, "raw host call: NULL request");
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_RAW_CALL);
  hl_put_u32(&w, fn_id);
  hl_put(&w, req, req_len);
  if (!hl_record_end(&w))
    return raw_local(resp, resp_len, HL_RAW_TOO_LARGE, "raw host call: request does not fit in the output buffer");
  return HL_RAW_OK;
}

static uint32_t raw_reply(const uint8_t **resp, uint32_t *resp_len) {
  hl_record rec;
  if (!hl_record_peek(&hl_input_buffer, &rec))
    return raw_local(resp, resp_len, HL_RAW_MALFORMED,
                     "malformed reply to a raw host call: bad top, back-pointer or length");
  hl_record_pop(&hl_input_buffer, &rec); /* the bytes stay until the next push */
  if (rec.kind != HL_REC_RAW_RESULT)
    return raw_local(resp, resp_len, HL_RAW_MALFORMED, "reply to a raw host call is not a RAW_RESULT record");
  if (rec.len < 4)
    return raw_local(resp, resp_len, HL_RAW_MALFORMED, "malformed RAW_RESULT record: shorter than its status");
  uint32_t status;
  __builtin_memcpy(&status, rec.payload, 4);
  if (status != HL_RAW_OK && status != HL_RAW_UNKNOWN_ID && status != HL_RAW_RAISED && status != HL_RAW_TOO_LARGE)
    return raw_local(resp, resp_len, HL_RAW_MALFORMED, "malformed RAW_RESULT record: unknown status");
  *resp = rec.payload + 4;
  *resp_len = rec.len - 4;
  return status;
}

uint32_t hl_raw_call(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp, uint32_t *resp_len,
                     void (*exit_to_host)(void)) {
  const uint8_t *ignored_resp;
  uint32_t ignored_len;
  if (resp == NULL) resp = &ignored_resp;
  if (resp_len == NULL) resp_len = &ignored_len;
  uint32_t status = raw_request(fn_id, req, req_len, resp, resp_len);
  if (status != HL_RAW_OK) return status;
  exit_to_host(); /* the host pops the RAW_CALL and pushes a RAW_RESULT on the input buffer */
  return raw_reply(resp, resp_len);
}
