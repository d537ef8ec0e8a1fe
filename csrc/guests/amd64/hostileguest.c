/* hostileguest.c - a guest that breaks the ABI on purpose (issue 4).
 *
 * Every function here does something a correct guest never does: corrupts
 * the output buffer's stack pointer, back-pointers or record lengths, claims
 * string lengths past the end of a record, sends invalid UTF-8, touches I/O
 * ports outside the ABI, returns a type other than the one it registered,
 * aborts with a host call half-issued, overflows its stack, touches memory it
 * may not, executes data, runs privileged instructions. The host must turn
 * each of these into a precise exception, poison the sandbox when the call did
 * not end cleanly, and stay healthy itself (tests/sandbox/test_hostile_guest.py).
 *
 * Records are written by hand with the SDK's internal helpers
 * (hl_internal.h), so the dispatcher's own checks (send_result) are bypassed.
 * A function that wrote a broken result executes `out HALT` itself: the host
 * reads the result there. The host must never resume such a guest; if it
 * does, the guest aborts with code 99 so the mistake shows.
 *
 * "A fault inside the fault handler" (a #DF) cannot be provoked from CPL3 in
 * a way that works everywhere: the IDT, GDT, TSS and the CPL0 stacks are
 * supervisor-only pages, the stubs live in read-only code pages, exception
 * delivery from CPL3 always switches to RSP0 from the TSS, and the stubs use
 * no guest-controlled state (not even the guest's rsp). The one path that
 * reaches CPL0 with a guest-chosen stack is `syscall` (EFER.SCE is set):
 * with LSTAR = 0 the CPU fetches from the unmapped null page at CPL0, and a
 * #PF at CPL0 is delivered on the current (guest-chosen) stack; an unusable
 * stack turns that into a #DF on IST1. Privileged(SYSCALL*) exercises it;
 * whatever the platform does with it (kvm-pvm intercepts syscall), the host
 * must report a fault and not hang. The nearest portable cases are faults
 * whose delivery does not depend on the guest's state: FaultWithStack (a
 * fault with rsp pointing anywhere, even non-canonical) and calling the stubs
 * themselves at CPL3 (ExecuteAddress(AddressOf(0))), which faults inside the
 * fault handler's code (its `mov %cr2` is privileged) and is reported as the
 * #GP it is. */
#include "hl_internal.h"

extern const uint8_t hl_exception_stubs[];

/* ---- helpers ---- */

static uint64_t get_u64(const uint8_t *p) {
  uint64_t x;
  memcpy(&x, p, 8);
  return x;
}

static void set_u64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }

static void set_u32(uint8_t *p, uint32_t x) { memcpy(p, &x, 4); }

/* Ends the current call at a hand-written result. The host must not resume
 * a guest whose result it rejected. */
__attribute__((noreturn)) static void halt_here(void) {
  HL_OUT(HL_PORT_HALT);
  hl_abort(99, "the host resumed a guest after rejecting its result");
}

/* Pushes a record with a raw payload on a buffer; returns its offset. */
static uint64_t push_raw(hl_buffer *b, uint8_t kind, const void *payload, uint32_t len) {
  hl_writer w;
  hl_record_begin(&w, b, kind);
  uint64_t start = w.start;
  hl_put(&w, payload, len);
  if (!hl_record_end(&w)) hl_abort(90, "push_raw: record does not fit");
  return start;
}

/* A valid RETURN record holding i32 `v`, pushed by hand; returns its offset. */
static uint64_t push_return_i32(int32_t v) {
  uint8_t payload[5] = {HL_I32};
  memcpy(payload + 1, &v, 4);
  return push_raw(&hl_output_buffer, HL_REC_RETURN, payload, sizeof payload);
}

static uint64_t out_top(void) { return get_u64(hl_output_buffer.base); }

/* ---- corrupt buffers (each registered as returning i32) ---- */

static hl_value corrupt_top(const hl_value *args) {
  push_return_i32(7);
  set_u64(hl_output_buffer.base, args[0].u64);
  halt_here();
}

static hl_value corrupt_back_pointer(const hl_value *args) {
  push_return_i32(7);
  set_u64(hl_output_buffer.base + out_top() - 8, args[0].u64);
  halt_here();
}

static hl_value corrupt_length(const hl_value *args) {
  uint64_t at = push_return_i32(7);
  set_u32(hl_output_buffer.base + at, args[0].u32);
  halt_here();
}

static hl_value corrupt_kind(const hl_value *args) {
  uint64_t at = push_return_i32(7);
  hl_output_buffer.base[at + 4] = (uint8_t)args[0].u32;
  halt_here();
}

/* ---- lengths past the end of the record (declared str / bytes) ---- */

static hl_value return_str_length(const hl_value *args) {
  uint8_t payload[1 + 4 + 3 + 1] = {HL_STR};
  set_u32(payload + 1, args[0].u32); /* the claimed length; 3 bytes follow */
  memcpy(payload + 5, "abc", 4);
  push_raw(&hl_output_buffer, HL_REC_RETURN, payload, sizeof payload);
  halt_here();
}

static hl_value return_bytes_length(const hl_value *args) {
  uint8_t payload[1 + 4 + 3] = {HL_BYTES};
  set_u32(payload + 1, args[0].u32);
  memcpy(payload + 5, "xyz", 3);
  push_raw(&hl_output_buffer, HL_REC_RETURN, payload, sizeof payload);
  halt_here();
}

/* The record claims to run to the very end of the output buffer and the
 * string claims more than that. */
static hl_value return_str_to_buffer_end(const hl_value *args) {
  (void)args;
  uint8_t *base = hl_output_buffer.base;
  uint64_t size = hl_output_buffer.size;
  uint64_t p = 8, len = size - 8 - 8 - 8; /* header at 8, back-pointer at size-8 */
  memset(base + p, 0, 8);
  set_u32(base + p, (uint32_t)len);
  base[p + 4] = HL_REC_RETURN;
  base[p + 8] = HL_STR;
  set_u32(base + p + 9, 0xfffffff0u);
  set_u64(base + size - 8, p);
  set_u64(base, size);
  halt_here();
}

/* ---- invalid UTF-8 ---- */

static const char BAD_UTF8[] = "ok \xc3\x28 \xff\xfe";
#define BAD_UTF8_LEN (sizeof BAD_UTF8 - 1)

static hl_value return_invalid_utf8(const hl_value *args) {
  (void)args;
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_RETURN);
  hl_put_u8(&w, HL_STR);
  hl_put_str(&w, BAD_UTF8, BAD_UTF8_LEN);
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  halt_here();
}

/* variant 0: bad message, 1: bad source file, 2: level 9, 3: a PRINT record
 * sent on the LOG port, 4: a string without its NUL */
static hl_value bad_log(const hl_value *args) {
  uint32_t variant = args[0].u32;
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, variant == 3 ? HL_REC_PRINT : HL_REC_LOG);
  if (variant == 3) {
    hl_put_str(&w, "hello", 5);
  } else {
    hl_put_u8(&w, variant == 2 ? 9 : HL_LOG_ERROR);
    hl_put_u32(&w, 42);
    if (variant == 1)
      hl_put_str(&w, BAD_UTF8, BAD_UTF8_LEN);
    else
      hl_put_str(&w, "hostileguest.c", 14);
    if (variant == 0) {
      hl_put_str(&w, BAD_UTF8, BAD_UTF8_LEN);
    } else if (variant == 4) {
      hl_put_u32(&w, 3);
      hl_put(&w, "abcd", 4); /* 'd' where the NUL belongs */
    } else {
      hl_put_str(&w, "message", 7);
    }
  }
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  HL_OUT(HL_PORT_LOG);
  hl_abort(99, "the host resumed a guest after a malformed log record");
}

static hl_value print_invalid_utf8(const hl_value *args) {
  (void)args;
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_PRINT);
  hl_put_str(&w, BAD_UTF8, BAD_UTF8_LEN);
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  HL_OUT(HL_PORT_PRINT);
  hl_abort(99, "the host resumed a guest after a malformed print record");
}

/* Malformed CALL records on the CALL_FUNCTION port.
 * 0: name is invalid UTF-8; 1: argc 3 but one value; 2: unknown value tag;
 * 3: trailing bytes; 4: bool value 2; 5: name without its NUL;
 * a valid CALL for HostAdd(1, 1), but 6: the input buffer's top is corrupt,
 * 7: the input buffer is full, so the host's reply cannot fit */
static hl_value bad_host_call(const hl_value *args) {
  uint32_t variant = args[0].u32;
  hl_writer w;
  int32_t one = 1;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_CALL);
  if (variant == 0) {
    hl_put_name(&w, BAD_UTF8, BAD_UTF8_LEN);
  } else if (variant == 5) {
    hl_put_u16(&w, 7);
    hl_put(&w, "HostAddX", 8);
  } else {
    hl_put_name(&w, "HostAdd", 7);
  }
  switch (variant) {
  case 1:
    hl_put_u8(&w, 3);
    hl_put_u8(&w, HL_I32);
    hl_put(&w, &one, 4);
    break;
  case 2:
    hl_put_u8(&w, 1);
    hl_put_u8(&w, 42);
    hl_put(&w, &one, 4);
    break;
  case 3:
    hl_put_u8(&w, 0);
    hl_put(&w, "junk", 4);
    break;
  case 4:
    hl_put_u8(&w, 1);
    hl_put_u8(&w, HL_BOOL);
    hl_put_u8(&w, 2);
    break;
  case 6:
  case 7:
    hl_put_u8(&w, 2);
    hl_put_u8(&w, HL_I32);
    hl_put(&w, &one, 4);
    hl_put_u8(&w, HL_I32);
    hl_put(&w, &one, 4);
    set_u64(hl_input_buffer.base, variant == 6 ? 0x7777 : hl_input_buffer.size - 8);
    break;
  default:
    hl_put_u8(&w, 0);
  }
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  HL_OUT(HL_PORT_CALL_FUNCTION);
  hl_abort(99, "the host resumed a guest after a malformed host call");
}

/* ---- a result of the wrong type ---- */

/* Registered as returning i32; sends a str. */
static hl_value return_wrong_type(const hl_value *args) {
  (void)args;
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_RETURN);
  hl_value v = hl_str("not an i32");
  hl_put_value(&w, &v);
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  halt_here();
}

/* Registered as returning i32; sends a RETURN with an unknown tag. */
static hl_value return_unknown_tag(const hl_value *args) {
  uint8_t payload[5] = {(uint8_t)args[0].u32, 1, 2, 3, 4};
  push_raw(&hl_output_buffer, HL_REC_RETURN, payload, sizeof payload);
  halt_here();
}

/* An ERROR record with invalid UTF-8 in its message (the call's result). */
static hl_value error_invalid_utf8(const hl_value *args) {
  (void)args;
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_ERROR);
  hl_put_u32(&w, 1);
  hl_put_str(&w, BAD_UTF8, BAD_UTF8_LEN);
  if (!hl_record_end(&w)) hl_abort(90, "does not fit");
  halt_here();
}

/* ---- host calls that come back as errors (the guest survives them) ---- */

/* Returns "<code>: <message>" of a failed host call, or "ok <value>". */
static hl_value describe_host_call(uint32_t rc, const hl_value *ret) {
  static hl_msg m;
  hl_msg_init(&m);
  if (rc == 0) {
    hl_msg_str(&m, "ok ");
    if (ret->type == HL_I32) hl_msg_int(&m, ret->i32);
  } else {
    hl_msg_int(&m, rc);
    hl_msg_str(&m, ": ");
    if (ret->type == HL_STR) hl_msg_mem(&m, ret->str, ret->len);
  }
  return hl_str(m.text);
}

static hl_value call_unknown_host(const hl_value *args) {
  (void)args;
  hl_value ret;
  hl_value a[2] = {hl_i32(1), hl_i32(2)};
  uint32_t rc = hl_call_host("NoSuchHostFunction", HL_I32, 2, a, &ret);
  return describe_host_call(rc, &ret);
}

static hl_value call_host_wrong_types(const hl_value *args) {
  (void)args;
  hl_value ret;
  hl_value a[2] = {hl_str("one"), hl_i64(2)};
  uint32_t rc = hl_call_host("HostAdd", HL_I32, 2, a, &ret);
  return describe_host_call(rc, &ret);
}

static hl_value call_host_wrong_arity(const hl_value *args) {
  (void)args;
  hl_value ret;
  hl_value a[1] = {hl_i32(1)};
  uint32_t rc = hl_call_host("HostAdd", HL_I32, 1, a, &ret);
  return describe_host_call(rc, &ret);
}

/* Expects HostAdd to return a str: the SDK's own check catches it. */
static hl_value call_host_wrong_return(const hl_value *args) {
  (void)args;
  hl_value ret;
  hl_value a[2] = {hl_i32(1), hl_i32(2)};
  uint32_t rc = hl_call_host("HostAdd", HL_STR, 2, a, &ret);
  return describe_host_call(rc, &ret);
}

/* Calls HostAdd(i, 1) n times; returns the sum of the results. */
static hl_value host_add_loop(const hl_value *args) {
  int32_t n = args[0].i32, total = 0;
  for (int32_t i = 0; i < n; i++) {
    hl_value ret;
    hl_value a[2] = {hl_i32(i), hl_i32(1)};
    uint32_t rc = hl_call_host("HostAdd", HL_I32, 2, a, &ret);
    if (rc != 0) {
      hl_fail(rc, ret.str);
      return hl_void();
    }
    total = (int32_t)((uint32_t)total + (uint32_t)ret.i32);
  }
  return hl_i32(total);
}

/* ---- aborts in odd states ---- */

/* 0: a CALL record for HostAdd is on top of the output buffer, then ABORT
 *    (the host call was never issued: the abort record is missing);
 * 1: a CALL record, then a valid ERROR(42) above it, then ABORT;
 * 2: the output buffer's top is corrupt, then ABORT;
 * 3: ABORT with an empty output buffer. */
static hl_value abort_mid_host_call(const hl_value *args) {
  uint32_t variant = args[0].u32;
  if (variant <= 1) {
    hl_writer w;
    hl_record_begin(&w, &hl_output_buffer, HL_REC_CALL);
    hl_put_name(&w, "HostAdd", 7);
    hl_put_u8(&w, 2);
    hl_value a = hl_i32(1);
    hl_put_value(&w, &a);
    hl_put_value(&w, &a);
    if (!hl_record_end(&w)) hl_abort(90, "does not fit");
    if (variant == 1) {
      const char *msg = "aborted with a host call pending";
      hl_record_begin(&w, &hl_output_buffer, HL_REC_ERROR);
      hl_put_u32(&w, 42);
      hl_put_str(&w, msg, strlen(msg));
      if (!hl_record_end(&w)) hl_abort(90, "does not fit");
    }
  } else if (variant == 2) {
    set_u64(hl_output_buffer.base, 0x12345);
  } else {
    hl_buffer_reset(&hl_output_buffer);
  }
  for (;;) HL_OUT(HL_PORT_ABORT);
}

/* ---- port I/O outside the ABI ---- */

enum {
  IO_OUT_UNKNOWN_PORT,  /* out 0x80: not in the TSS bitmap -> #GP */
  IO_IN_UNKNOWN_PORT,   /* in 0x80 -> #GP */
  IO_IN_ABI_PORT,       /* in 99: the bitmap allows the port, but `in` is not the ABI */
  IO_OUTW_ABI_PORTS,    /* outw to 101: ports 101 and 102 are both allowed, but the size is wrong */
  IO_OUTL_ABI_PORT,     /* outl to LOG: wrong size */
  IO_OUT_FAULT_PORT,    /* out 110 (FAULT): CPL0 only -> #GP */
  IO_OUT_PORT_FFFF,     /* out dx=0xffff */
  IO_REP_OUTSB,         /* rep outsb, 2 bytes, to LOG */
  IO_OUTW_HALF_ALLOWED, /* outw to 108: port 109 is not allowed -> #GP */
};

static hl_value port_io(const hl_value *args) {
  uint32_t v = args[0].u32;
  uint8_t al = 0;
  static const uint8_t two[2] = {1, 2};
  switch (v) {
  case IO_OUT_UNKNOWN_PORT:
    __asm__ volatile("outb %%al, $0x80" ::"a"(0) : "memory");
    break;
  case IO_IN_UNKNOWN_PORT:
    __asm__ volatile("inb $0x80, %%al" : "=a"(al)::"memory");
    break;
  case IO_IN_ABI_PORT:
    __asm__ volatile("inb $99, %%al" : "=a"(al)::"memory");
    break;
  case IO_OUTW_ABI_PORTS:
    __asm__ volatile("outw %%ax, $101" ::"a"(0) : "memory");
    break;
  case IO_OUTW_HALF_ALLOWED:
    __asm__ volatile("outw %%ax, $108" ::"a"(0) : "memory");
    break;
  case IO_OUTL_ABI_PORT:
    __asm__ volatile("outl %%eax, $99" ::"a"(0) : "memory");
    break;
  case IO_OUT_FAULT_PORT:
    __asm__ volatile("outb %%al, $110" ::"a"(14) : "memory");
    break;
  case IO_OUT_PORT_FFFF:
    __asm__ volatile("outb %%al, %%dx" ::"a"(0), "d"(0xffff) : "memory");
    break;
  case IO_REP_OUTSB: {
    const uint8_t *src = two;
    uint64_t count = 2;
    __asm__ volatile("rep outsb" : "+S"(src), "+c"(count) : "d"(99) : "memory");
    break;
  }
  default:
    break;
  }
  return hl_i32(al);
}

/* ---- privileged and trapping instructions ---- */

enum {
  PRIV_HLT,
  PRIV_CLI,
  PRIV_MOV_CR3,
  PRIV_WRMSR,
  PRIV_LGDT,
  PRIV_INT3,
  PRIV_INT80,
  PRIV_UD2,
  PRIV_SINGLE_STEP,
  PRIV_SYSCALL,              /* syscall with the guest's normal stack */
  PRIV_SYSCALL_NULL_STACK,   /* syscall with rsp = 0 (a #PF at CPL0 could not push its frame) */
  PRIV_INT_BEYOND_IDT,       /* int 0x40: past the IDT limit */
};

static hl_value privileged(const hl_value *args) {
  switch (args[0].u32) {
  case PRIV_HLT:
    __asm__ volatile("hlt" ::: "memory");
    break;
  case PRIV_CLI:
    __asm__ volatile("cli" ::: "memory");
    break;
  case PRIV_MOV_CR3: {
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3)::"memory");
    return hl_u64(cr3);
  }
  case PRIV_WRMSR:
    __asm__ volatile("wrmsr" ::"c"(0xc0000080), "a"(0), "d"(0) : "memory");
    break;
  case PRIV_LGDT: {
    static uint8_t gdtr[10];
    __asm__ volatile("lgdt %0" ::"m"(gdtr) : "memory");
    break;
  }
  case PRIV_INT3:
    __asm__ volatile("int3" ::: "memory");
    break;
  case PRIV_INT80:
    __asm__ volatile("int $0x80" ::: "memory");
    break;
  case PRIV_UD2:
    __asm__ volatile("ud2" ::: "memory");
    break;
  case PRIV_SINGLE_STEP:
    /* TF on: the instruction after popf traps with #DB. */
    __asm__ volatile("pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n\tnop\n\tnop\n\t"
                     "pushfq\n\tandq $~0x100, (%%rsp)\n\tpopfq" ::: "memory", "cc");
    break;
  case PRIV_SYSCALL:
    __asm__ volatile("syscall" ::: "rcx", "r11", "memory");
    break;
  case PRIV_SYSCALL_NULL_STACK:
    __asm__ volatile("mov %%rsp, %%rbx\n\txor %%esp, %%esp\n\tsyscall\n\tmov %%rbx, %%rsp"
                     ::: "rbx", "rcx", "r11", "memory");
    break;
  case PRIV_INT_BEYOND_IDT:
    __asm__ volatile("int $0x40" ::: "memory");
    break;
  default:
    break;
  }
  return hl_u64(0);
}

/* ---- stack ---- */

__attribute__((noinline)) static int32_t recurse(int32_t depth) {
  volatile uint8_t pad[1024];
  pad[0] = 1;
  pad[sizeof pad - 1] = 1;
  if (depth <= 0) return 0;
  int32_t below = recurse(depth - 1);
  return below + pad[0] + pad[sizeof pad - 1] - 1;
}

static hl_value stack_overflow(const hl_value *args) { return hl_i32(recurse(args[0].i32)); }

/* A variable-length frame of n KiB: the compiler's stack probes touch every
 * page, so a frame larger than the stack hits the guard page, not the heap. */
__attribute__((noinline)) static int32_t big_frame_inner(uint32_t kib) {
  volatile uint8_t buf[(size_t)kib * 1024 + 16];
  buf[0] = 1;
  return buf[0];
}

static hl_value big_frame(const hl_value *args) { return hl_i32(big_frame_inner(args[0].u32)); }

/* Sets rsp to args[0] and pushes: a write at rsp - 8. */
static hl_value set_rsp_and_push(const hl_value *args) {
  __asm__ volatile("mov %0, %%rsp\n\tpushq $0x5a" ::"r"(args[0].u64) : "memory");
  __builtin_unreachable();
}

/* Sets rsp to args[0] and executes ud2: the #UD is delivered on the CPL0
 * stack whatever rsp holds. */
static hl_value fault_with_stack(const hl_value *args) {
  __asm__ volatile("mov %0, %%rsp\n\tud2" ::"r"(args[0].u64) : "memory");
  __builtin_unreachable();
}

/* ---- memory ---- */

static hl_value read_address(const hl_value *args) {
  return hl_u64(*(volatile uint64_t *)(uintptr_t)args[0].u64);
}

static hl_value write_address(const hl_value *args) {
  *(volatile uint64_t *)(uintptr_t)args[0].u64 = args[1].u64;
  return hl_void();
}

static hl_value execute_address(const hl_value *args) {
  void (*fn)(void) = (void (*)(void))(uintptr_t)args[0].u64;
  fn();
  return hl_void();
}

static uint8_t data_area[64] = {0xc3}; /* `ret`, in a writable, non-executable page */

/* Addresses of things only the guest knows: 0 the exception stubs, 1 a
 * writable data array (starting with a `ret` byte), 2 a local variable on
 * the stack, 3 a function's code, 4 a read-only constant. */
static hl_value address_of(const hl_value *args) {
  volatile uint64_t local = 0;
  switch (args[0].u32) {
  case 0:
    return hl_u64((uint64_t)(uintptr_t)hl_exception_stubs);
  case 1:
    return hl_u64((uint64_t)(uintptr_t)data_area);
  case 2:
    return hl_u64((uint64_t)(uintptr_t)&local);
  case 3:
    return hl_u64((uint64_t)(uintptr_t)&address_of);
  case 4:
    return hl_u64((uint64_t)(uintptr_t)BAD_UTF8);
  default:
    return hl_u64(0);
  }
}

/* ---- ordinary functions ---- */

__attribute__((noreturn)) static hl_value spin(const hl_value *args) {
  (void)args;
  for (;;) __asm__ volatile("");
}

static hl_value echo(const hl_value *args) { return args[0]; }

/* Breaks the hot-mode mailbox (docs/abi.md, "Hot mode") and stops polling:
 * 0 writes a state no side ever writes, 1 posts an exit the mailbox does not
 * carry (an unknown port), 2 posts a port number with garbage above it,
 * 3 posts HALT with no result and stops polling (the host's answer is lost). */
static hl_value hot_mailbox(const hl_value *args) {
  static const uint64_t states[] = {0xdeadbeef00ULL, HL_HOT_POSTED | (0x42 << 8),
                                    HL_HOT_POSTED | (108 << 8) | (1ULL << 40), HL_HOT_POSTED | (108 << 8)};
  uint32_t what = args[0].u32;
  if (hl_mailbox == NULL || what > 3) return hl_i32(-1);
  __atomic_store_n(&hl_mailbox->state, states[what], __ATOMIC_RELEASE);
  for (;;) __builtin_ia32_pause();
}

/* Answers its call by hand (an ERROR record, then HALT posted in the mailbox) and keeps
 * the vCPU: it never waits in the mailbox, so asking it to park goes unheard. */
static hl_value halt_then_run(const hl_value *args) {
  (void)args;
  if (hl_mailbox == NULL || hl_mailbox->mode != HL_HOT_ON) return hl_i32(-1);
  static const char msg[] = "answered by hand, still running";
  hl_push_error(HL_ERR_GENERIC, msg, sizeof msg - 1);
  __atomic_exchange_n(&hl_mailbox->state, HL_HOT_POSTED | ((uint64_t)HL_PORT_HALT << 8), __ATOMIC_SEQ_CST);
  for (;;) __builtin_ia32_pause();
}

/* ---- registration ---- */

static const hl_type P_U32[] = {HL_U32};
static const hl_type P_I32[] = {HL_I32};
static const hl_type P_U64[] = {HL_U64};
static const hl_type P_STR[] = {HL_STR};
static const hl_type P_U64_U64[] = {HL_U64, HL_U64};

void hyperlight_main(void) {
  hl_register("CorruptTop", corrupt_top, HL_I32, 1, P_U64);
  hl_register("CorruptBackPointer", corrupt_back_pointer, HL_I32, 1, P_U64);
  hl_register("CorruptLength", corrupt_length, HL_I32, 1, P_U32);
  hl_register("CorruptKind", corrupt_kind, HL_I32, 1, P_U32);
  hl_register("ReturnStrLength", return_str_length, HL_STR, 1, P_U32);
  hl_register("ReturnBytesLength", return_bytes_length, HL_BYTES, 1, P_U32);
  hl_register("ReturnStrToBufferEnd", return_str_to_buffer_end, HL_STR, 0, NULL);
  hl_register("ReturnInvalidUtf8", return_invalid_utf8, HL_STR, 0, NULL);
  hl_register("BadLog", bad_log, HL_VOID, 1, P_U32);
  hl_register("PrintInvalidUtf8", print_invalid_utf8, HL_VOID, 0, NULL);
  hl_register("BadHostCall", bad_host_call, HL_VOID, 1, P_U32);
  hl_register("ReturnWrongType", return_wrong_type, HL_I32, 0, NULL);
  hl_register("ReturnUnknownTag", return_unknown_tag, HL_I32, 1, P_U32);
  hl_register("ErrorInvalidUtf8", error_invalid_utf8, HL_I32, 0, NULL);
  hl_register("CallUnknownHost", call_unknown_host, HL_STR, 0, NULL);
  hl_register("CallHostWrongTypes", call_host_wrong_types, HL_STR, 0, NULL);
  hl_register("CallHostWrongArity", call_host_wrong_arity, HL_STR, 0, NULL);
  hl_register("CallHostWrongReturn", call_host_wrong_return, HL_STR, 0, NULL);
  hl_register("HostAddLoop", host_add_loop, HL_I32, 1, P_I32);
  hl_register("AbortMidHostCall", abort_mid_host_call, HL_VOID, 1, P_U32);
  hl_register("PortIo", port_io, HL_I32, 1, P_U32);
  hl_register("Privileged", privileged, HL_U64, 1, P_U32);
  hl_register("StackOverflow", stack_overflow, HL_I32, 1, P_I32);
  hl_register("BigFrame", big_frame, HL_I32, 1, P_U32);
  hl_register("SetRspAndPush", set_rsp_and_push, HL_VOID, 1, P_U64);
  hl_register("FaultWithStack", fault_with_stack, HL_VOID, 1, P_U64);
  hl_register("ReadAddress", read_address, HL_U64, 1, P_U64);
  hl_register("WriteAddress", write_address, HL_VOID, 2, P_U64_U64);
  hl_register("ExecuteAddress", execute_address, HL_VOID, 1, P_U64);
  hl_register("AddressOf", address_of, HL_U64, 1, P_U32);
  hl_register("Spin", spin, HL_VOID, 0, NULL);
  hl_register("Echo", echo, HL_STR, 1, P_STR);
  hl_register("HotMailbox", hot_mailbox, HL_I32, 1, P_U32);
  hl_register("HaltThenRun", halt_then_run, HL_I32, 0, NULL);
}
