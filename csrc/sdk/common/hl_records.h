/* hl_records.h - the record stacks of the input and output buffers (docs/abi.md,
 * "Buffers"), for both guest runtimes: records.c is compiled into amd64 and
 * i686 guests alike.
 *
 * Offsets are size_t: u64 on amd64; on i686 every buffer lies below 4 GiB, so
 * the ABI's u64 offsets are kept in 32 bits and a nonzero high half is a
 * malformed value. The code needs no floating point and no 64-bit division
 * (i686 builds with -mgeneral-regs-only and without libgcc). Typed values
 * (hl_value, with floats) belong to the amd64 SDK's hlguest.h: their encoding
 * is compiled only where HL_RECORDS_VALUES is 1 (amd64). */
#ifndef HL_RECORDS_H
#define HL_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hl_abi.h"

#if defined(__x86_64__)
#define HL_RECORDS_VALUES 1
#include "hlguest.h" /* hl_value, hl_type */
#else
#define HL_RECORDS_VALUES 0
#endif

/* The functions every guest call runs (dispatch, record decoding and encoding) go in
 * .text.hot, together: the first call of a sandbox created from a snapshot pays a
 * shadow-MMU fault (~5 us on kvm-pvm) for each distinct page it touches. */
#define HL_HOT __attribute__((hot))

typedef struct {
  uint8_t *base;
  size_t size;
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
  size_t start; /* offset of the record header (the old top) */
  size_t pos;   /* offset of the next payload byte */
  size_t limit; /* one past the last payload byte that fits */
  uint8_t kind;
  bool ok;
} hl_writer;

HL_HOT bool hl_record_begin(hl_writer *w, hl_buffer *b, uint8_t kind);
HL_HOT bool hl_record_end(hl_writer *w);
size_t hl_writer_room(const hl_writer *w);
HL_HOT void hl_put(hl_writer *w, const void *p, uint64_t n);
HL_HOT void hl_put_u8(hl_writer *w, uint8_t x);
void hl_put_u16(hl_writer *w, uint16_t x);
void hl_put_u32(hl_writer *w, uint32_t x);
void hl_put_name(hl_writer *w, const char *s, uint64_t len);
void hl_put_str(hl_writer *w, const char *s, uint64_t len);
/* Puts as much of s as fits while keeping `reserve` bytes free, cut at a
 * UTF-8 character boundary; returns the number of bytes of s written. */
uint32_t hl_put_str_fit(hl_writer *w, const char *s, uint64_t len, uint64_t reserve);

/* A validated record on top of a buffer. */
typedef struct {
  size_t start; /* offset of its header: the top after a pop */
  uint8_t kind;
  uint32_t len;
  const uint8_t *payload;
} hl_record;

/* Checks top, back-pointer and length of the top record; false if bad. */
HL_HOT bool hl_record_peek(const hl_buffer *b, hl_record *r);
/* Pops the record hl_record_peek() returned; its bytes stay until the next push. */
HL_HOT void hl_record_pop(hl_buffer *b, const hl_record *r);

/* Reads a payload front to back; `ok` turns false on any overrun or bad
 * encoding and stays false. */
typedef struct {
  const uint8_t *p;
  size_t len;
  size_t pos;
  bool ok;
} hl_reader;

HL_HOT void hl_reader_init(hl_reader *r, const hl_record *rec);
HL_HOT bool hl_reader_done(const hl_reader *r); /* ok and everything consumed */
HL_HOT uint8_t hl_get_u8(hl_reader *r);
uint16_t hl_get_u16(hl_reader *r);
uint32_t hl_get_u32(hl_reader *r);
HL_HOT const char *hl_get_name(hl_reader *r, uint16_t *len);
const char *hl_get_str(hl_reader *r, uint32_t *len);

#if HL_RECORDS_VALUES
HL_HOT void hl_put_value(hl_writer *w, const hl_value *v);
HL_HOT bool hl_valid_type(uint8_t tag);
HL_HOT void hl_get_value_data(hl_reader *r, hl_type type, hl_value *v);
void hl_get_value(hl_reader *r, hl_value *v);
#endif

/* Pushes ERROR(code, message) on the output buffer, truncating the message
 * to fit; if nothing fits, empties the buffer and tries again. False only if
 * even an empty-message record does not fit in an empty buffer. */
bool hl_push_error(uint32_t code, const char *msg, uint64_t len);

/* Pushes PRINT(text) on the output buffer, cut to what fits; *sent gets the
 * number of bytes of text in it. False if no record was pushed. */
bool hl_push_print(const char *text, uint64_t len, uint32_t *sent);

/* A raw host call (docs/abi.md, "Raw host calls"): pushes RAW_CALL(fn_id, request)
 * on the output buffer, leaves the guest through `exit_to_host` (the runtime's
 * CALL_FUNCTION exit), pops the RAW_RESULT from the input buffer and returns its
 * status with the response bytes, which stay valid until the next host call.
 * A request that cannot be sent or a bad reply gives another status with a
 * message of ours in *resp. `resp` and `resp_len` may be NULL. */
uint32_t hl_raw_call(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp, uint32_t *resp_len,
                     void (*exit_to_host)(void));

#endif
