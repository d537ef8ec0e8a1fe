/* hl_internal.h - declarations shared by the SDK's own files (not guest API). */
#ifndef HL_INTERNAL_H
#define HL_INTERNAL_H

#include "hlguest.h"
#include "hl_records.h" /* the record stacks (sdk/common/records.c), HL_HOT */

/* `out imm8, al`: the only way out of the VM. The "memory" clobber makes the
 * compiler finish every record write before the exit and re-read buffer
 * memory the host changed after it; without it records could be half written
 * or stale. A macro, because the port must be an immediate. */
#define HL_OUT(port) __asm__ volatile("outb %%al, %0" ::"N"(port), "a"(0) : "memory")

/* ---- hot.c: the hot-mode mailbox (docs/abi.md, "Hot mode") ---- */

/* The mailbox's layout and states are hl_abi.h's (HL_HOT_*). */
typedef struct {
  uint64_t state;
  uint64_t pad0[7];
  uint64_t mode;
  uint64_t spin_ticks;
  uint64_t host_waiting;
  uint64_t pad1[5];
} hl_mailbox_t;
_Static_assert(sizeof(hl_mailbox_t) == HL_HOT_MAILBOX_SIZE, "hl_abi.h: mailbox size");
_Static_assert(__builtin_offsetof(hl_mailbox_t, state) == HL_HOT_STATE, "hl_abi.h: mailbox state");
_Static_assert(__builtin_offsetof(hl_mailbox_t, mode) == HL_HOT_MODE, "hl_abi.h: mailbox mode");
_Static_assert(__builtin_offsetof(hl_mailbox_t, spin_ticks) == HL_HOT_SPIN, "hl_abi.h: mailbox spin");
_Static_assert(__builtin_offsetof(hl_mailbox_t, host_waiting) == HL_HOT_WAITING, "hl_abi.h: mailbox waiting");

extern volatile hl_mailbox_t *hl_mailbox;
void hl_hot_init(uint64_t mailbox);
__attribute__((hot)) void hl_exit_slow(unsigned port);
/* After an `out` that resumed: waits in the mailbox if the host re-armed it. */
__attribute__((hot)) void hl_exit_rearmed(unsigned port);

/* An exit that resumes (HALT, CALL_FUNCTION, LOG, PRINT): `out` when cold,
 * the mailbox when the host keeps the sandbox hot. */
#define HL_EXIT(port)                                                                                   \
  do {                                                                                                \
    volatile hl_mailbox_t *mb_ = hl_mailbox;                                                            \
    if (mb_ != NULL && __atomic_load_n(&mb_->mode, __ATOMIC_RELAXED) == HL_HOT_ON) hl_exit_slow(port); \
    else {                                                                                            \
      HL_OUT(port);                                                                                   \
      if (mb_ != NULL) hl_exit_rearmed(port);                                                         \
    }                                                                                                 \
  } while (0)

_Static_assert(HL_PEB_PROFILE * 8 == 128, "PEB offsets of docs/abi.md");

/* Optional: an API layer's set-up, run before hyperlight_main (weak). */
void hl_api_init(void) __attribute__((weak));

/* ---- libc_glue.c: the C library's system ---- */

/* Sets up the thread block the host points FS at; first thing at entry. */
void hl_libc_init(uint64_t seed);
/* Sends what the guest left in stdout's buffer (after init and each call). */
HL_HOT void hl_libc_after_call(void);

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
