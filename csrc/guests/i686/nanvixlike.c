/* nanvixlike.c - an i686-profile guest in the manner of the Nanvix fork
 * (raw host functions by numeric id, a GuestCounter): it runs once, during
 * evolve(), and registers no functions.
 *
 * 1. writes its own data and code (no paging: the snapshot region is
 *    writable, docs/abi.md) -- data_marker goes 0 -> 0x1686, touches[] is
 *    incremented, and the immediate of patch_target() is rewritten and the
 *    patched code run;
 * 2. reads the GuestCounter (at 0x5E75, also sets IA32_SYSENTER_* and DR0/DR7);
 * 3. raw host call 1 with: counter (u64 LE), data_marker (u32 LE), "N686";
 * 4. raw host call 2 with "ACK:" + call 1's response;
 * 5. raw host call 99 (left unregistered by the tests), then raw host call 2
 *    with "status99=<status>";
 * 6. prints "nanvixlike: done\n" and ends init.
 * Any unexpected outcome aborts: evolve() raises GuestAborted(code, message). */
#include "hl32.h"

/* In .data, not .bss, so its initial 0 is in the file as well as in memory. */
__attribute__((section(".data"))) volatile uint32_t data_marker = 0;
volatile uint32_t touches[4];

/* Code this guest rewrites: `mov $imm32, %eax; ret`, the imm32 at offset 1.
 * Written in assembly so its bytes are known; never called unpatched. */
uint32_t patch_target(void);
__asm__(".text\n"
        ".globl patch_target\n"
        ".type patch_target, @function\n"
        "patch_target:\n"
        "  movl $0x11111111, %eax\n"
        "  ret\n"
        ".size patch_target, . - patch_target\n");

#define PATCHED_VALUE 0x1686c0deu

static void put_u32_le(uint8_t *p, uint32_t x) {
  p[0] = (uint8_t)x;
  p[1] = (uint8_t)(x >> 8);
  p[2] = (uint8_t)(x >> 16);
  p[3] = (uint8_t)(x >> 24);
}

/* Aborts with "<what> failed with status <s>: <response>". */
static __attribute__((noreturn)) void fail(const char *what, uint32_t status, const uint8_t *resp, uint32_t len) {
  static char msg[256];
  uint32_t n = 0;
  char num[11];
  const char *parts[] = {what, " failed with status ", hl32_utoa(status, num), ": "};
  for (uint32_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
    for (const char *s = parts[i]; *s && n < sizeof msg - 1; s++) msg[n++] = *s;
  for (uint32_t i = 0; i < len && n < sizeof msg - 1; i++) /* ASCII only: the host decodes UTF-8 strictly */
    msg[n++] = resp[i] >= 0x20 && resp[i] < 0x7f ? (char)resp[i] : '?';
  msg[n] = '\0';
  hl32_abort(1, msg);
}

static uint8_t scratch[4096 + 4]; /* "ACK:" + a copy of call 1's response */

void guest32_main(void) {
  /* 1. Own data and code. */
  if (data_marker != 0) hl32_abort(1, "data_marker is not 0 at start");
  data_marker = 0x1686;
  for (uint32_t i = 0; i < 4; i++) touches[i] += i + 1;

  volatile uint8_t *code = (volatile uint8_t *)(uintptr_t)&patch_target;
  if (code[0] != 0xb8 || code[5] != 0xc3) hl32_abort(1, "patch_target is not `mov $imm32, %eax; ret`");
  for (uint32_t i = 0; i < 4; i++) code[1 + i] = (uint8_t)(PATCHED_VALUE >> (8 * i));
  /* Call through a volatile pointer so the call cannot be folded away. A
   * jump after the store is all x86 asks of code modifying itself. */
  uint32_t (*volatile fn)(void) = patch_target;
  if (fn() != PATCHED_VALUE) hl32_abort(1, "patched code did not return the patched value");

  /* 2. The GuestCounter. */
  uint64_t counter = hl32_guest_counter();

  /* 2b. CPU state only CPL0 code can set, which a restore must put back: with the
   * counter at 0x5E75, IA32_SYSENTER_CS/ESP/EIP and a DR0 breakpoint (enabled in DR7). */
  if (counter == 0x5E75) {
    __asm__ volatile("wrmsr" ::"c"(0x174), "a"(0x8), "d"(0));
    __asm__ volatile("wrmsr" ::"c"(0x175), "a"(0x12345), "d"(0));
    __asm__ volatile("wrmsr" ::"c"(0x176), "a"(0x6789a), "d"(0));
    /* An execution breakpoint outside guest memory: no instruction ever runs there,
     * wherever the linker puts this guest's code. */
    __asm__ volatile("movl %0, %%dr0\n\tmovl %1, %%dr7" ::"r"(0xFFFFF000u), "r"(0x401u));
  }

  /* 3. Raw host call 1: counter (8 bytes LE), data marker (4), "N686". */
  uint8_t req[16];
  put_u32_le(req, (uint32_t)counter);
  put_u32_le(req + 4, (uint32_t)(counter >> 32));
  put_u32_le(req + 8, data_marker);
  memcpy(req + 12, "N686", 4);
  const uint8_t *resp;
  uint32_t resp_len;
  uint32_t status = hl32_call_raw(1, req, sizeof req, &resp, &resp_len);
  if (status != HL32_RAW_OK) fail("raw host call 1", status, resp, resp_len);

  /* 4. Echo it through raw host call 2, prefixed with "ACK:". */
  if (resp_len > sizeof scratch - 4) hl32_abort(1, "the response of raw host call 1 is larger than 4096 bytes");
  memcpy(scratch, "ACK:", 4);
  memcpy(scratch + 4, resp, resp_len);
  status = hl32_call_raw(2, scratch, 4 + resp_len, &resp, &resp_len);
  if (status != HL32_RAW_OK) fail("raw host call 2 (ACK)", status, resp, resp_len);

  /* 5. An unregistered id: report the status the host gave. */
  uint32_t status99 = hl32_call_raw(99, NULL, 0, &resp, &resp_len);
  char text[32] = "status99=";
  hl32_utoa(status99, text + 9);
  status = hl32_call_raw(2, text, strlen(text), &resp, &resp_len);
  if (status != HL32_RAW_OK) fail("raw host call 2 (status99)", status, resp, resp_len);

  /* 6. Done. */
  hl32_print("nanvixlike: done\n");
  hl32_halt_init();
}
