/* hl_internal.h - declarations shared by the SDK's own files (not guest API). */
#ifndef HL_INTERNAL_H
#define HL_INTERNAL_H

#include "hlguest.h"

/* `out imm8, al`: the only way out of the VM. The "memory" clobber makes the
 * compiler finish every record write before the exit and re-read buffer
 * memory the host changed after it; without it records could be half written
 * or stale. A macro, because the port must be an immediate. */
#define HL_OUT(port) __asm__ volatile("outb %%al, %0" ::"N"(port), "a"(0) : "memory")

/* The functions every guest call runs (dispatch, record decoding and encoding) go in
 * .text.hot, together: the first call of a sandbox created from a snapshot pays a
 * shadow-MMU fault (~5 us on kvm-pvm) for each distinct page it touches. */
#define HL_HOT __attribute__((hot))

_Static_assert(HL_PEB_PROFILE * 8 == 128, "PEB offsets of docs/abi.md");

/* Optional: an API layer's set-up, run before hyperlight_main (weak). */
void hl_api_init(void) __attribute__((weak));

/* ---- libc_glue.c: the C library's system ---- */

/* Sets up the thread block the host points FS at; first thing at entry. */
void hl_libc_init(uint64_t seed);
/* Sends what the guest left in stdout's buffer (after init and each call). */
HL_HOT void hl_libc_after_call(void);

/* ---- buffers.c: stacks of records ---- */

typedef struct {
  uint8_t *base;
  uint64_t size;
} hl_buffer;

extern hl_buffer hl_input_buffer;  /* host -> guest */
extern hl_buffer hl_output_buffer; /* guest -> host */

/* Empties a buffer (top = 8). */
HL_HOT void hl_buffer_reset(hl_buffer *b);

/* Builds one record in place on top of a buffer. Every hl_put_* checks the
 * room left; once something does not fit, `ok` stays false and
 * hl_record_end() leaves the buffer unchanged. */
typedef struct {
  hl_buffer *buf;
  uint64_t start; /* offset of the record header (the old top) */
  uint64_t pos;   /* offset of the next payload byte */
  uint64_t limit; /* one past the last payload byte that fits */
  uint8_t kind;
  bool ok;
} hl_writer;

HL_HOT bool hl_record_begin(hl_writer *w, hl_buffer *b, uint8_t kind);
HL_HOT bool hl_record_end(hl_writer *w);
uint64_t hl_writer_room(const hl_writer *w);
HL_HOT void hl_put(hl_writer *w, const void *p, uint64_t n);
HL_HOT void hl_put_u8(hl_writer *w, uint8_t x);
void hl_put_u16(hl_writer *w, uint16_t x);
void hl_put_u32(hl_writer *w, uint32_t x);
void hl_put_name(hl_writer *w, const char *s, uint64_t len);
void hl_put_str(hl_writer *w, const char *s, uint64_t len);
/* Puts as much of s as fits while keeping `reserve` bytes free, cut at a
 * UTF-8 character boundary; returns the number of bytes of s written. */
uint32_t hl_put_str_fit(hl_writer *w, const char *s, uint64_t len, uint64_t reserve);
HL_HOT void hl_put_value(hl_writer *w, const hl_value *v);

/* A validated record on top of a buffer. */
typedef struct {
  uint64_t start; /* offset of its header: the top after a pop */
  uint8_t kind;
  uint32_t len;
  const uint8_t *payload;
} hl_record;

/* Checks top, back-pointer and length of the top record; false if bad. */
HL_HOT bool hl_record_peek(const hl_buffer *b, hl_record *r);
HL_HOT void hl_record_pop(hl_buffer *b, const hl_record *r);

/* Reads a payload front to back; `ok` turns false on any overrun or bad
 * encoding and stays false. */
typedef struct {
  const uint8_t *p;
  uint64_t len;
  uint64_t pos;
  bool ok;
} hl_reader;

HL_HOT void hl_reader_init(hl_reader *r, const hl_record *rec);
HL_HOT bool hl_reader_done(const hl_reader *r); /* ok and everything consumed */
HL_HOT uint8_t hl_get_u8(hl_reader *r);
uint16_t hl_get_u16(hl_reader *r);
uint32_t hl_get_u32(hl_reader *r);
HL_HOT const char *hl_get_name(hl_reader *r, uint16_t *len);
const char *hl_get_str(hl_reader *r, uint32_t *len);
HL_HOT bool hl_valid_type(uint8_t tag);
HL_HOT void hl_get_value_data(hl_reader *r, hl_type type, hl_value *v);
void hl_get_value(hl_reader *r, hl_value *v);

/* Pushes ERROR(code, message) on the output buffer, truncating the message
 * to fit; if nothing fits, empties the buffer and tries again. False only if
 * even an empty-message record does not fit in an empty buffer. */
bool hl_push_error(uint32_t code, const char *msg, uint64_t len);

/* ---- runtime.c ---- */

extern int hl_min_log_level;
/* Address of the GuestCounter (PEB offset 120); NULL if the host gave none. */
extern const volatile uint64_t *hl_guest_counter_ptr;

/* ---- alloc.c ---- */

void hl_heap_init(void *start, uint64_t size);

/* ---- libc.c: a small fixed-size message builder ---- */

typedef struct {
  char text[256];
  size_t len; /* excludes the NUL; text is always NUL-terminated */
} hl_msg;

void hl_msg_init(hl_msg *m);
void hl_msg_mem(hl_msg *m, const char *s, size_t n);
void hl_msg_str(hl_msg *m, const char *s);
void hl_msg_int(hl_msg *m, int64_t v);
const char *hl_type_name(hl_type t);

#endif
