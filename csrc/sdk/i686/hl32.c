/* hl32.c - the i686-profile runtime: PEB, raw host calls, print, abort, end
 * of init (docs/abi.md). No 64-bit division anywhere: there is no 32-bit
 * libgcc. */
#include "hl32.h"

#include <stdbool.h>

/* The record stacks, raw host calls' encoding and the ERROR/PRINT records are
 * the shared csrc/sdk/common/records.c; here: the exits and the PEB. */
#include "hl_records.h"

/* `out imm8, al`, the way out of the VM. The "memory" clobber makes the
 * compiler finish every record write before the exit and re-read what the
 * host changed after it. A macro: the port must be an immediate. */
#define OUT(port) __asm__ volatile("outb %%al, %0" ::"N"(port), "a"((uint8_t)0) : "memory")

/* ---- state ---- */

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

/* ---- talking to the host ---- */

static void raw_call_exit(void) { OUT(HL_PORT_CALL_FUNCTION); }

uint32_t hl32_call_raw(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp, uint32_t *resp_len) {
  return hl_raw_call(fn_id, req, req_len, resp, resp_len, raw_call_exit);
}

uint32_t hl32_print(const char *text) {
  if (text == NULL) text = "";
  uint32_t len = strlen(text), n;
  if (len == 0 || !hl_push_print(text, len, &n)) return 0;
  OUT(HL_PORT_PRINT);
  return n;
}

void hl32_abort(uint32_t code, const char *msg) {
  if (msg == NULL) msg = "";
  hl_buffer_reset(&hl_output_buffer);
  hl_push_error(code, msg, strlen(msg));
  /* The host never resumes an aborted guest; if it does, abort again. */
  for (;;) OUT(HL_PORT_ABORT);
}

void hl32_halt_init(void) {
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_FUNCTION_TABLE);
  hl_put_u16(&w, 0); /* an i686 guest has no guest functions */
  if (!hl_record_end(&w)) hl32_abort(1, "hl32_halt_init: no room for the function table in the output buffer");
  /* The host never resumes an i686 guest for calls; if it does, halt again. */
  for (;;) OUT(HL_PORT_HALT);
}

/* ---- init ---- */

/* With no trustworthy PEB there is no buffer to put a message in. */
static __attribute__((noreturn)) void abort_without_record(void) {
  for (;;) OUT(HL_PORT_ABORT);
}

/* Reads a buffer's address and size from the PEB; false unless both fit in
 * 32 bits, the address is 8-aligned, the size is at least 64 and the buffer
 * ends below 4 GiB. */
static bool peb_buffer(int addr_field, hl_buffer *b) {
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
  if (!peb_buffer(HL_PEB_OUTPUT_ADDR, &hl_output_buffer)) abort_without_record();
  hl_buffer_reset(&hl_output_buffer); /* from here on hl32_abort can report */

  if (peb32[2 * HL_PEB_VERSION] != HL_ABI_VERSION || peb32[2 * HL_PEB_VERSION + 1] != 0)
    hl32_abort(1, "unsupported ABI version in the PEB (want 2)");
  if (peb32[2 * HL_PEB_PROFILE] != HL_PROFILE_I686 || peb32[2 * HL_PEB_PROFILE + 1] != 0)
    hl32_abort(1, "the PEB's profile is not i686");
  if (!peb_buffer(HL_PEB_INPUT_ADDR, &hl_input_buffer)) hl32_abort(1, "bad input buffer in the PEB");
  hl_buffer_reset(&hl_input_buffer);

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

/* memcpy, memset, memcmp, strlen: string.c. */

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
