/* hl32.c - the i686-profile runtime: PEB, the two record stacks, raw host
 * calls, print, abort, end of init (docs/abi.md).
 *
 * The buffers are untrusted memory: every offset is checked before use and
 * nothing is written past a buffer's end. docs/abi.md's offsets and lengths
 * are u64; on i686 every buffer lies below 4 GiB, so the runtime keeps them
 * in u32 and treats a nonzero high half as a malformed value. All arithmetic
 * is 32-bit (no 64-bit division: there is no 32-bit libgcc). */
#include "hl32.h"

#include <stdbool.h>

/* ---- ABI constants: csrc/sdk/common/hl_abi.h ---- */

#define PORT_CALL_FUNCTION HL_PORT_CALL_FUNCTION
#define PORT_ABORT HL_PORT_ABORT
#define PORT_PRINT HL_PORT_PRINT
#define PORT_HALT HL_PORT_HALT
#define RECORD_HEADER HL_RECORD_HEADER
#define BACK_POINTER HL_RECORD_BACK_POINTER

/* `out imm8, al`, the way out of the VM. The "memory" clobber makes the
 * compiler finish every record write before the exit and re-read what the
 * host changed after it. A macro: the port must be an immediate. */
#define OUT(port) __asm__ volatile("outb %%al, %0" ::"N"(port), "a"((uint8_t)0) : "memory")

/* ---- state ---- */

typedef struct {
  uint8_t *base;
  uint32_t size;
} buffer;

static buffer input;  /* host -> guest */
static buffer output; /* guest -> host */
static const volatile uint32_t *peb32;
static const volatile uint32_t *counter32; /* the GuestCounter as two u32 halves */
static uint32_t seed_value, page_size_value, min_log_level_value;

const volatile uint64_t *hl32_peb(void) { return (const volatile uint64_t *)peb32; }
uint32_t hl32_seed(void) { return seed_value; }
uint32_t hl32_page_size(void) { return page_size_value; }
uint32_t hl32_min_log_level(void) { return min_log_level_value; }

uint64_t hl32_guest_counter(void) {
  if (counter32 == NULL) return 0;
  /* Two 32-bit loads (no 64-bit or FPU load); the host writes the counter
   * only while the guest is stopped, so the halves cannot tear. */
  uint32_t lo = counter32[0], hi = counter32[1];
  return (uint64_t)hi << 32 | lo;
}

/* ---- small helpers ---- */

static uint32_t align8(uint32_t n) { return (n + 7) & ~7u; }

static uint32_t load_u32(const uint8_t *p) {
  uint32_t x;
  __builtin_memcpy(&x, p, 4); /* unaligned payload fields; inlined */
  return x;
}

static void store_u32(uint8_t *p, uint32_t x) { __builtin_memcpy(p, &x, 4); }

/* A u64 field of the ABI that must fit in 32 bits; false if it does not. */
static bool load_u64_as_u32(const uint8_t *p, uint32_t *out) {
  *out = load_u32(p);
  return load_u32(p + 4) == 0;
}

static void store_u64(uint8_t *p, uint32_t x) {
  store_u32(p, x);
  store_u32(p + 4, 0);
}

/* ---- record stacks ---- */

static void buffer_reset(buffer *b) {
  if (b->base != NULL) store_u64(b->base, 8);
}

/* The top of b if it is usable: 8-aligned, past the top field, inside. */
static bool get_top(const buffer *b, uint32_t *top) {
  if (b->base == NULL || !load_u64_as_u32(b->base, top)) return false;
  return *top >= 8 && *top <= b->size && (*top & 7) == 0;
}

/* Builds one record in place on top of a buffer; once something does not
 * fit, ok stays false and writer_end() leaves the buffer unchanged. */
typedef struct {
  buffer *b;
  uint32_t start; /* offset of the header: the old top */
  uint32_t pos;   /* offset of the next payload byte */
  uint32_t limit; /* one past the last payload byte that fits */
  uint8_t kind;
  bool ok;
} writer;

static void writer_begin(writer *w, buffer *b, uint8_t kind) {
  uint32_t top;
  w->b = b;
  w->kind = kind;
  w->ok = false;
  w->start = w->pos = w->limit = 0;
  if (!get_top(b, &top) || b->size - top < RECORD_HEADER + BACK_POINTER) return;
  w->start = top;
  w->pos = top + RECORD_HEADER;
  /* The padded payload must fit between the header and the back-pointer. */
  w->limit = w->pos + ((b->size - top - RECORD_HEADER - BACK_POINTER) & ~7u);
  w->ok = true;
}

static uint32_t writer_room(const writer *w) { return w->ok ? w->limit - w->pos : 0; }

static void put(writer *w, const void *p, uint32_t n) {
  if (!w->ok || n > w->limit - w->pos) {
    w->ok = false;
    return;
  }
  memcpy(w->b->base + w->pos, p, n);
  w->pos += n;
}

static void put_u32(writer *w, uint32_t x) { put(w, &x, 4); }

/* Puts a str (u32 length, bytes, NUL) with as much of s as fits, cut at a
 * UTF-8 character boundary; returns the number of bytes of s written. */
static uint32_t put_str_fit(writer *w, const char *s, uint32_t len) {
  uint32_t room = writer_room(w);
  if (room < 5) {
    w->ok = false;
    return 0;
  }
  uint32_t n = room - 5;
  if (len <= n) {
    n = len;
  } else {
    while (n > 0 && ((uint8_t)s[n] & 0xC0) == 0x80) n--; /* s[n] is the first byte left out */
  }
  put_u32(w, n);
  put(w, s, n);
  put(w, "", 1);
  return n;
}

static bool writer_end(writer *w) {
  if (!w->ok) return false;
  uint8_t *base = w->b->base;
  uint32_t len = w->pos - w->start - RECORD_HEADER;
  uint32_t end = w->start + RECORD_HEADER + align8(len);
  memset(base + w->pos, 0, end - w->pos); /* padding; begin() reserved it */
  uint8_t header[RECORD_HEADER] = {0};
  store_u32(header, len);
  header[4] = w->kind;
  memcpy(base + w->start, header, RECORD_HEADER);
  store_u64(base + end, w->start);
  store_u64(base, end + BACK_POINTER); /* publish: the new top */
  return true;
}

/* A validated record on top of a buffer. */
typedef struct {
  uint32_t start; /* offset of its header: the top after a pop */
  uint8_t kind;
  uint32_t len;
  const uint8_t *payload;
} record;

/* Checks top, back-pointer and length of the top record and pops it (its
 * bytes stay until the next push); false, buffer unchanged, if bad. */
static bool record_pop(buffer *b, record *r) {
  uint32_t top, p;
  if (!get_top(b, &top) || top < 8 + RECORD_HEADER + BACK_POINTER) return false;
  if (!load_u64_as_u32(b->base + top - BACK_POINTER, &p)) return false;
  if (p < 8 || (p & 7) != 0 || p > top - RECORD_HEADER - BACK_POINTER) return false;
  uint32_t len = load_u32(b->base + p);
  uint32_t room = top - p - RECORD_HEADER - BACK_POINTER; /* a multiple of 8 */
  if (len > room || align8(len) != room) return false;
  r->start = p;
  r->kind = b->base[p + 4];
  r->len = len;
  r->payload = b->base + p + RECORD_HEADER;
  store_u64(b->base, p);
  return true;
}

/* ---- talking to the host ---- */

static uint32_t local_status(const uint8_t **resp, uint32_t *resp_len, uint32_t status, const char *msg) {
  *resp = (const uint8_t *)msg;
  *resp_len = strlen(msg);
  return status;
}

uint32_t hl32_call_raw(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp, uint32_t *resp_len) {
  const uint8_t *ignored_resp;
  uint32_t ignored_len;
  if (resp == NULL) resp = &ignored_resp;
  if (resp_len == NULL) resp_len = &ignored_len;
  if (req == NULL && req_len != 0)
    return local_status(resp, resp_len, HL32_RAW_MALFORMED, "hl32_call_raw: NULL request");

  writer w;
  writer_begin(&w, &output, HL_REC_RAW_CALL);
  put_u32(&w, fn_id);
  put(&w, req, req_len);
  if (!writer_end(&w))
    return local_status(resp, resp_len, HL32_RAW_TOO_LARGE, "hl32_call_raw: request does not fit in the output buffer");

  OUT(PORT_CALL_FUNCTION); /* the host pops the RAW_CALL and pushes a RAW_RESULT on the input buffer */

  record r;
  if (!record_pop(&input, &r))
    return local_status(resp, resp_len, HL32_RAW_MALFORMED,
                        "malformed reply to a raw host call: bad top, back-pointer or length");
  if (r.kind != HL_REC_RAW_RESULT)
    return local_status(resp, resp_len, HL32_RAW_MALFORMED, "reply to a raw host call is not a RAW_RESULT record");
  if (r.len < 4)
    return local_status(resp, resp_len, HL32_RAW_MALFORMED, "malformed RAW_RESULT record: shorter than its status");
  uint32_t status = load_u32(r.payload);
  if (status != HL32_RAW_OK && status != HL32_RAW_UNKNOWN_ID && status != HL32_RAW_RAISED &&
      status != HL32_RAW_TOO_LARGE)
    return local_status(resp, resp_len, HL32_RAW_MALFORMED, "malformed RAW_RESULT record: unknown status");
  *resp = r.payload + 4;
  *resp_len = r.len - 4;
  return status;
}

uint32_t hl32_print(const char *text) {
  if (text == NULL) text = "";
  uint32_t len = strlen(text);
  if (len == 0) return 0;
  writer w;
  writer_begin(&w, &output, HL_REC_PRINT);
  uint32_t n = put_str_fit(&w, text, len);
  if (!writer_end(&w)) return 0;
  OUT(PORT_PRINT);
  return n;
}

static bool push_error(uint32_t code, const char *msg) {
  writer w;
  writer_begin(&w, &output, HL_REC_ERROR);
  put_u32(&w, code);
  put_str_fit(&w, msg, strlen(msg));
  return writer_end(&w);
}

void hl32_abort(uint32_t code, const char *msg) {
  if (msg == NULL) msg = "";
  buffer_reset(&output);
  push_error(code, msg);
  /* The host never resumes an aborted guest; if it does, abort again. */
  for (;;) OUT(PORT_ABORT);
}

void hl32_halt_init(void) {
  writer w;
  writer_begin(&w, &output, HL_REC_FUNCTION_TABLE);
  uint16_t count = 0; /* an i686 guest has no guest functions */
  put(&w, &count, 2);
  if (!writer_end(&w)) hl32_abort(1, "hl32_halt_init: no room for the function table in the output buffer");
  /* The host never resumes an i686 guest for calls; if it does, halt again. */
  for (;;) OUT(PORT_HALT);
}

/* ---- init ---- */

/* With no trustworthy PEB there is no buffer to put a message in. */
static __attribute__((noreturn)) void abort_without_record(void) {
  for (;;) OUT(PORT_ABORT);
}

/* Reads a buffer's address and size from the PEB; false unless both fit in
 * 32 bits, the address is 8-aligned, the size is at least 64 and the buffer
 * ends below 4 GiB. */
static bool peb_buffer(int addr_field, buffer *b) {
  uint32_t addr = peb32[2 * addr_field], addr_hi = peb32[2 * addr_field + 1];
  uint32_t size = peb32[2 * addr_field + 2], size_hi = peb32[2 * addr_field + 3];
  if (addr_hi != 0 || size_hi != 0 || addr == 0 || (addr & 7) != 0 || size < 64 || size > 0xFFFFFFFFu - addr)
    return false;
  b->base = (uint8_t *)addr;
  b->size = size;
  return true;
}

/* Called by _start (start32.S) with the registers of docs/abi.md. */
__attribute__((noreturn, used)) void hl32_main(const uint64_t *peb, uint32_t seed, uint32_t page_size,
                                               uint32_t min_log_level);

void hl32_main(const uint64_t *peb, uint32_t seed, uint32_t page_size, uint32_t min_log_level) {
  peb32 = (const volatile uint32_t *)peb;
  if (peb32 == NULL || peb32[2 * HL_PEB_MAGIC_F] != HL_PEB_MAGIC_LO || peb32[2 * HL_PEB_MAGIC_F + 1] != HL_PEB_MAGIC_HI)
    abort_without_record();
  if (!peb_buffer(HL_PEB_OUTPUT_ADDR, &output)) abort_without_record();
  buffer_reset(&output); /* from here on hl32_abort can report */

  if (peb32[2 * HL_PEB_VERSION] != HL_ABI_VERSION || peb32[2 * HL_PEB_VERSION + 1] != 0)
    hl32_abort(1, "unsupported ABI version in the PEB (want 2)");
  if (peb32[2 * HL_PEB_PROFILE] != HL_PROFILE_I686 || peb32[2 * HL_PEB_PROFILE + 1] != 0)
    hl32_abort(1, "the PEB's profile is not i686");
  if (!peb_buffer(HL_PEB_INPUT_ADDR, &input)) hl32_abort(1, "bad input buffer in the PEB");
  buffer_reset(&input);

  uint32_t counter = peb32[2 * HL_PEB_COUNTER_ADDR], counter_hi = peb32[2 * HL_PEB_COUNTER_ADDR + 1];
  if (counter_hi != 0 || (counter & 7) != 0 || counter > 0xFFFFFFF8u)
    hl32_abort(1, "bad GuestCounter address in the PEB");
  counter32 = counter != 0 ? (const volatile uint32_t *)counter : NULL;

  seed_value = seed;
  page_size_value = page_size;
  min_log_level_value = min_log_level;

  guest32_main();
  hl32_halt_init();
}

/* ---- freestanding helpers ---- */

/* memcpy, memset, memcmp, strlen: csrc/sdk/common/string.c. */

char *hl32_utoa(uint32_t v, char *buf) {
  char tmp[10];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10); /* 32-bit division: no libgcc needed */
    v /= 10;
  } while (v != 0);
  char *p = buf;
  while (n > 0) *p++ = tmp[--n];
  *p = '\0';
  return buf;
}
