/* hl32.h - a minimal runtime for i686-profile guests (docs/abi.md, "i686
 * profile (no paging)"), separate from the amd64 SDK in csrc/sdk/amd64/.
 *
 * Such a guest runs once, during evolve(): it starts in 32-bit protected
 * mode at CPL0 without paging, does its work (raw host calls, prints), then
 * ends init with hl32_halt_init(). It registers no guest functions.
 *
 * Constraints (../shared/docs/platform.md): on kvm-pvm every 32-bit
 * instruction is emulated, and x87, SSE and 32-bit `iret` are not: build
 * with -mgeneral-regs-only, use integers only, and no 64-bit division (there
 * is no 32-bit libgcc for __udivdi3 and friends). */
#ifndef HL32_H
#define HL32_H

#include <stddef.h>
#include <stdint.h>

#include "hl_abi.h"

/* The guest's own entry: called once by the runtime after it has checked
 * the PEB and set up the buffers. Returning from it is the same as calling
 * hl32_halt_init(). */
void guest32_main(void);

/* ---- host calls ---- */

/* Raw host call statuses: HL_RAW_* of hl_abi.h (docs/abi.md, "Raw host calls"). */
enum {
  HL32_RAW_OK = HL_RAW_OK,
  HL32_RAW_UNKNOWN_ID = HL_RAW_UNKNOWN_ID,
  HL32_RAW_RAISED = HL_RAW_RAISED,
  HL32_RAW_TOO_LARGE = HL_RAW_TOO_LARGE,
  HL32_RAW_MALFORMED = HL_RAW_MALFORMED,
};

/* Calls the raw host function fn_id with the request bytes: pushes a
 * RAW_CALL record on the output buffer, `out 101`, pops the RAW_RESULT from
 * the input buffer. Returns its status; *resp and *resp_len (may be NULL) get
 * the response bytes, which point into the input buffer and stay valid until
 * the next host call. If the request does not fit the output buffer the
 * status is HL32_RAW_TOO_LARGE and nothing is sent; on HL32_RAW_MALFORMED
 * (or that case) the response is a message of the runtime's. */
uint32_t hl32_call_raw(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp, uint32_t *resp_len);

/* Prints NUL-terminated text through the host's writer (PRINT record,
 * `out 103`); returns the number of bytes sent (text that does not fit the
 * output buffer is cut). */
uint32_t hl32_print(const char *text);

/* Ends init: pushes an empty FUNCTION_TABLE record and executes `out 108`.
 * The host never resumes an i686 guest for calls; if it does, it halts
 * again. */
__attribute__((noreturn)) void hl32_halt_init(void);

/* Aborts: evolve() raises GuestAborted(code, msg) (ERROR record, `out 102`). */
__attribute__((noreturn)) void hl32_abort(uint32_t code, const char *msg);

/* ---- what the host passed ---- */

/* The GuestCounter (a u64 only the host writes, between runs; PEB offset
 * 120), read afresh; 0 if the host gave no counter address. */
uint64_t hl32_guest_counter(void);

/* The PEB (u64 fields; on i686 every address is in the low 32 bits). */
const volatile uint64_t *hl32_peb(void);
uint32_t hl32_seed(void); /* the low 32 bits of the host's seed (ebx) */
uint32_t hl32_page_size(void);
uint32_t hl32_min_log_level(void);

/* ---- freestanding helpers: strings and integer formatting (format32.c) ---- */

#include <stdarg.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
void *memmove(void *dst, const void *src, size_t n);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *restrict d, const char *restrict s);
char *strncpy(char *restrict d, const char *restrict s, size_t n);
char *strcat(char *restrict d, const char *restrict s);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);
char *strstr(const char *h, const char *n);

/* printf-style formatting of integers, characters, strings and pointers
 * (flags - 0 #, width, precision, * and the h l ll z j t modifiers); no
 * floating point: %f and other conversions are written out as they are.
 * printf prints through hl32_print (at most 511 bytes a call). */
int vsnprintf(char *restrict buf, size_t size, const char *restrict fmt, va_list ap);
int snprintf(char *restrict buf, size_t size, const char *restrict fmt, ...) __attribute__((format(printf, 3, 4)));
int printf(const char *restrict fmt, ...) __attribute__((format(printf, 1, 2)));
int puts(const char *s);

/* Formats v in decimal into buf (at least 11 bytes); returns buf. */
char *hl32_utoa(uint32_t v, char *buf);

#endif
