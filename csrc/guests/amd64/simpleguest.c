/* simpleguest.c - the test and benchmark guest: echoes every type, calls the
 * host, logs, prints, aborts, and faults in the ways the host must report. */
#include "hlguest.h"

/* ---- echoes ---- */

static hl_value echo(const hl_value *args) { return args[0]; }

static hl_value add(const hl_value *args) {
  /* Wrap like the host's i32 arithmetic would; signed overflow is UB in C. */
  return hl_i32((int32_t)((uint32_t)args[0].i32 + (uint32_t)args[1].i32));
}

/* ---- talking to the host ---- */

static hl_value print_output(const hl_value *args) { return hl_i32(hl_print(args[0].str)); }

static hl_value call_host_add(const hl_value *args) {
  hl_value ret;
  uint32_t rc = hl_call_host("HostAdd", HL_I32, 2, args, &ret);
  if (rc != 0) {
    hl_fail(rc, ret.str); /* propagate the host's code and message */
    return hl_void();
  }
  return ret;
}

/* A message for hl_fail, built in a fixed buffer (cut when full). */
typedef struct {
  char text[512];
  uint32_t len;
} message;

static void msg_mem(message *m, const void *p, uint32_t n) {
  if (n > sizeof m->text - 1 - m->len) n = sizeof m->text - 1 - m->len;
  memcpy(m->text + m->len, p, n);
  m->len += n;
  m->text[m->len] = '\0';
}

static void msg_str(message *m, const char *s) { msg_mem(m, s, (uint32_t)strlen(s)); }

static void msg_int(message *m, int64_t v) {
  char buf[21];
  msg_str(m, hl_itoa(v, buf));
}

/* Appends bytes as valid UTF-8 (the host decodes ERROR messages strictly):
 * a byte that does not start a valid, complete sequence becomes '?', and a
 * character that does not fit whole ends the text. */
static void msg_utf8(message *m, const uint8_t *s, uint32_t len) {
  uint32_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    uint32_t n = c < 0x80                         ? 1
                 : (c & 0xE0) == 0xC0 && c >= 0xC2 ? 2
                 : (c & 0xF0) == 0xE0              ? 3
                 : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 4
                                                   : 0;
    bool ok = n != 0 && n <= len - i;
    for (uint32_t k = 1; ok && k < n; k++) ok = (s[i + k] & 0xC0) == 0x80;
    /* No overlong 3/4-byte forms, no surrogates, nothing above U+10FFFF. */
    if (ok && n == 3) ok = !(c == 0xE0 && s[i + 1] < 0xA0) && !(c == 0xED && s[i + 1] >= 0xA0);
    if (ok && n == 4) ok = !(c == 0xF0 && s[i + 1] < 0x90) && !(c == 0xF4 && s[i + 1] >= 0x90);
    if (!ok) n = 1;
    if (m->len + n > sizeof m->text - 1) return;
    msg_mem(m, ok ? (const void *)(s + i) : "?", n);
    i += n;
  }
}

/* CallRawHost(fn_id, request) -> response: a raw host call by numeric id.
 * A nonzero status fails the call (GuestError, code 1) with a message naming
 * the id and the status, followed by the response as text if there is one
 * (status 2: the host function's exception message). */
static hl_value call_raw_host(const hl_value *args) {
  const uint8_t *resp;
  uint32_t resp_len;
  uint32_t status = hl_call_host_raw(args[0].u32, args[1].bytes, args[1].len, &resp, &resp_len);
  if (status == HL_RAW_OK) return hl_bytes(resp, resp_len);
  message m = {.len = 0};
  msg_str(&m, "raw host call ");
  msg_int(&m, args[0].u32);
  msg_str(&m, " failed with status ");
  msg_int(&m, status);
  if (resp_len > 0) {
    msg_str(&m, ": ");
    msg_utf8(&m, resp, resp_len);
  }
  hl_fail(1, m.text);
  return hl_void();
}

static hl_value get_counter(const hl_value *args) {
  (void)args;
  return hl_u64(hl_guest_counter());
}

static hl_value log_message(const hl_value *args) {
  hl_log(args[1].i32, args[0].str);
  return hl_void();
}

static hl_value abort_guest(const hl_value *args) { hl_abort(args[0].i32, args[1].str); }

/* ---- guest state ---- */

static int32_t static_value;

static hl_value set_static(const hl_value *args) {
  static_value = args[0].i32;
  return hl_i32(static_value);
}

static hl_value get_static(const hl_value *args) {
  (void)args;
  return hl_i32(static_value);
}

static hl_value malloc_bytes(const hl_value *args) {
  size_t n = (size_t)args[0].u64;
  void *p = hl_malloc(n);
  if (p != NULL) memset(p, 0xA5, n); /* touch every byte */
  return hl_u64((uint64_t)(uintptr_t)p);
}

static hl_value free_bytes(const hl_value *args) {
  hl_free((void *)(uintptr_t)args[0].u64);
  return hl_void();
}

/* ---- failures the host must catch ---- */

__attribute__((noreturn)) static hl_value spin(const hl_value *args) {
  (void)args;
  for (;;) __asm__ volatile("");
}

/* Each level keeps 1 KiB alive across the recursive call, so neither the
 * frame nor the recursion can be optimised away; returns depth. */
__attribute__((noinline)) static int32_t recurse(int32_t depth) {
  volatile uint8_t pad[1024];
  pad[0] = 1;
  pad[sizeof pad - 1] = 1;
  if (depth <= 0) return 0;
  int32_t below = recurse(depth - 1);
  /* The frame's address escapes: clang cannot turn the recursion into a loop. */
  __asm__ volatile("" ::"r"(pad) : "memory");
  return below + pad[0] + pad[sizeof pad - 1] - 1;
}

static hl_value stack_overflow(const hl_value *args) { return hl_i32(recurse(args[0].i32)); }

static hl_value read_address(const hl_value *args) {
  return hl_u64(*(volatile uint64_t *)(uintptr_t)args[0].u64);
}

static hl_value write_address(const hl_value *args) {
  *(volatile uint64_t *)(uintptr_t)args[0].u64 = args[1].u64;
  return hl_void();
}

/* Writes one word in each of `count` consecutive pages from `addr`: dirties pages for
 * the snapshot benchmarks and tests. Returns the number of pages written. */
static hl_value write_pages(const hl_value *args) {
  volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)args[0].u64;
  for (uint32_t i = 0; i < args[1].u32; i++) p[i * 512] = i + 1;
  return hl_u32(args[1].u32);
}

static hl_value write_to_code(const hl_value *args) {
  (void)args;
  /* Code pages are read-only: this write faults. It writes back the byte it
   * read, so a host that wrongly allows it does not corrupt the code. */
  volatile uint8_t *code = (volatile uint8_t *)(uintptr_t)&get_static;
  *code = *code;
  return hl_void();
}

static hl_value execute_address(const hl_value *args) {
  void (*fn)(void) = (void (*)(void))(uintptr_t)args[0].u64;
  fn();
  return hl_void();
}

/* MXCSR is FPU state a call can leave behind; restores must put it back. */
static uint32_t get_mxcsr_raw(void) {
  uint32_t v;
  __asm__ volatile("stmxcsr %0" : "=m"(v));
  return v;
}
static hl_value get_mxcsr(const hl_value *args) {
  (void)args;
  return hl_u32(get_mxcsr_raw());
}
static hl_value set_mxcsr(const hl_value *args) {
  uint32_t old = get_mxcsr_raw(), v = args[0].u32 & 0xffff; /* reserved bits would #GP */
  __asm__ volatile("ldmxcsr %0" ::"m"(v));
  return hl_u32(old);
}

/* What `cpuid` tells the guest: leaf args[0] (subleaf 0), register args[1] (0 eax,
 * 1 ebx, 2 ecx, 3 edx). */
static hl_value cpuid_reg(const hl_value *args) {
  uint32_t r[4];
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(args[0].u32), "c"(0));
  return hl_u32(r[args[1].u32 & 3]);
}

static hl_value divide_by_zero(const hl_value *args) {
  volatile int32_t divisor = args[0].i32;
  return hl_i32(100 / divisor);
}

/* ---- benchmark ---- */

static hl_value sum(const hl_value *args) {
  uint64_t n = args[0].u64;
  /* Benchmarks run the same loop natively on the host: keep it identical. */
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s = s * 6364136223846793005ULL + i;
  return hl_u64(s);
}

/* ---- registration ---- */

static const hl_type P_STR[] = {HL_STR};
static const hl_type P_BYTES[] = {HL_BYTES};
static const hl_type P_I32[] = {HL_I32};
static const hl_type P_U32[] = {HL_U32};
static const hl_type P_U32_U32[] = {HL_U32, HL_U32};
static const hl_type P_I64[] = {HL_I64};
static const hl_type P_U64_U64[] = {HL_U64, HL_U64};
static const hl_type P_U64_U32[] = {HL_U64, HL_U32};
static const hl_type P_U64[] = {HL_U64};
static const hl_type P_F32[] = {HL_F32};
static const hl_type P_F64[] = {HL_F64};
static const hl_type P_BOOL[] = {HL_BOOL};
static const hl_type P_I32_I32[] = {HL_I32, HL_I32};
static const hl_type P_STR_I32[] = {HL_STR, HL_I32};
static const hl_type P_I32_STR[] = {HL_I32, HL_STR};
static const hl_type P_U32_BYTES[] = {HL_U32, HL_BYTES};

void hyperlight_main(void) {
  hl_register("Echo", echo, HL_STR, 1, P_STR);
  hl_register("EchoBytes", echo, HL_BYTES, 1, P_BYTES);
  hl_register("EchoI32", echo, HL_I32, 1, P_I32);
  hl_register("EchoU32", echo, HL_U32, 1, P_U32);
  hl_register("EchoI64", echo, HL_I64, 1, P_I64);
  hl_register("EchoU64", echo, HL_U64, 1, P_U64);
  hl_register("EchoF32", echo, HL_F32, 1, P_F32);
  hl_register("EchoF64", echo, HL_F64, 1, P_F64);
  hl_register("EchoBool", echo, HL_BOOL, 1, P_BOOL);
  hl_register("Add", add, HL_I32, 2, P_I32_I32);
  hl_register("PrintOutput", print_output, HL_I32, 1, P_STR);
  hl_register("CallHostAdd", call_host_add, HL_I32, 2, P_I32_I32);
  hl_register("SetStatic", set_static, HL_I32, 1, P_I32);
  hl_register("GetStatic", get_static, HL_I32, 0, NULL);
  hl_register("LogMessage", log_message, HL_VOID, 2, P_STR_I32);
  hl_register("Abort", abort_guest, HL_VOID, 2, P_I32_STR);
  hl_register("Spin", spin, HL_VOID, 0, NULL);
  hl_register("StackOverflow", stack_overflow, HL_I32, 1, P_I32);
  hl_register("ReadAddress", read_address, HL_U64, 1, P_U64);
  hl_register("WriteAddress", write_address, HL_VOID, 2, P_U64_U64);
  hl_register("WritePages", write_pages, HL_U32, 2, P_U64_U32);
  hl_register("WriteToCode", write_to_code, HL_VOID, 0, NULL);
  hl_register("ExecuteAddress", execute_address, HL_VOID, 1, P_U64);
  hl_register("GetMxcsr", get_mxcsr, HL_U32, 0, NULL);
  hl_register("SetMxcsr", set_mxcsr, HL_U32, 1, P_U32);
  hl_register("Cpuid", cpuid_reg, HL_U32, 2, P_U32_U32);
  hl_register("DivideByZero", divide_by_zero, HL_I32, 1, P_I32);
  hl_register("Sum", sum, HL_U64, 1, P_U64);
  hl_register("Malloc", malloc_bytes, HL_U64, 1, P_U64);
  hl_register("Free", free_bytes, HL_VOID, 1, P_U64);
  hl_register("GetCounter", get_counter, HL_U64, 0, NULL);
  hl_register("CallRawHost", call_raw_host, HL_BYTES, 2, P_U32_BYTES);
}
