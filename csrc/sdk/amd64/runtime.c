/* runtime.c - initialisation, function registration and the dispatch loop
 * (docs/abi.md, "Entry and lifecycle"). */
#include "hl_internal.h"

int hl_min_log_level = HL_LOG_TRACE;
const volatile uint64_t *hl_guest_counter_ptr;
static uint64_t hl_seed_value;

uint64_t hl_seed(void) { return hl_seed_value; }

/* ---- registered functions ---- */

typedef struct {
  char *name; /* heap copy, NUL-terminated */
  uint16_t name_len;
  hl_guest_fn fn;
  hl_type ret;
  uint8_t nparams;
  hl_type params[HL_MAX_PARAMS];
} hl_function;

static hl_function *functions;
static uint32_t function_count, function_capacity;
static hl_fallback_fn fallback; /* for names not registered (hl_register_fallback) */
static const char *current_name;  /* the running guest function's name */

const char *hl_current_function_name(void) { return current_name; }

void hl_register_fallback(hl_fallback_fn fn) { fallback = fn; }

HL_HOT static hl_function *find_function(const char *name, uint64_t len) {
  for (uint32_t i = 0; i < function_count; i++) {
    hl_function *f = &functions[i];
    if (f->name_len == len && memcmp(f->name, name, len) == 0) return f;
  }
  return NULL;
}

static bool grow_functions(void) {
  uint32_t cap = function_capacity ? function_capacity * 2 : 16;
  hl_function *p = hl_realloc(functions, (size_t)cap * sizeof *p);
  if (p == NULL) return false;
  functions = p;
  function_capacity = cap;
  return true;
}

/* Registration errors are programming errors in the guest: abort, which
 * makes the host's evolve() fail with the message. */
void hl_register(const char *name, hl_guest_fn fn, hl_type ret, int nparams, const hl_type *params) {
  if (name == NULL || fn == NULL) hl_abort(HL_ERR_GENERIC, "hl_register: NULL name or function");
  size_t len = strlen(name);
  if (len == 0 || len > UINT16_MAX) hl_abort(HL_ERR_GENERIC, "hl_register: bad function name length");
  if (nparams < 0 || nparams > HL_MAX_PARAMS || (nparams > 0 && params == NULL))
    hl_abort(HL_ERR_GENERIC, "hl_register: bad parameter count");
  if ((unsigned)ret > HL_BYTES) hl_abort(HL_ERR_GENERIC, "hl_register: bad return type");
  for (int i = 0; i < nparams; i++)
    if ((unsigned)params[i] > HL_BYTES || params[i] == HL_VOID)
      hl_abort(HL_ERR_GENERIC, "hl_register: bad parameter type");

  /* Registering a name again replaces the earlier registration. */
  hl_function *f = find_function(name, len);
  if (f == NULL) {
    if (function_count == UINT16_MAX) hl_abort(HL_ERR_GENERIC, "hl_register: too many functions");
    if (function_count == function_capacity && !grow_functions())
      hl_abort(HL_ERR_GENERIC, "hl_register: out of heap");
    f = &functions[function_count];
    f->name = hl_malloc(len + 1);
    if (f->name == NULL) hl_abort(HL_ERR_GENERIC, "hl_register: out of heap");
    memcpy(f->name, name, len + 1);
    f->name_len = (uint16_t)len;
    function_count++;
  }
  f->fn = fn;
  f->ret = ret;
  f->nparams = (uint8_t)nparams;
  for (int i = 0; i < nparams; i++) f->params[i] = params[i];
}

static void push_function_table(void) {
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_FUNCTION_TABLE);
  /* A fallback is announced as an entry with an empty name (docs/abi.md). */
  hl_put_u16(&w, (uint16_t)(function_count + (fallback != NULL)));
  if (fallback != NULL) {
    hl_put_name(&w, "", 0);
    hl_put_u8(&w, HL_VOID);
    hl_put_u8(&w, 0);
  }
  for (uint32_t i = 0; i < function_count; i++) {
    const hl_function *f = &functions[i];
    hl_put_name(&w, f->name, f->name_len);
    hl_put_u8(&w, (uint8_t)f->ret);
    hl_put_u8(&w, f->nparams);
    for (int j = 0; j < f->nparams; j++) hl_put_u8(&w, (uint8_t)f->params[j]);
  }
  if (!hl_record_end(&w)) hl_abort(HL_ERR_GENERIC, "function table too large for output buffer");
}

/* ---- hl_fail ---- */

static bool call_failed;
static uint32_t fail_code;
static char *fail_message; /* heap copy: the caller's buffer may be gone */

void hl_fail(uint32_t code, const char *message) {
  if (message == NULL) message = "";
  size_t len = strlen(message);
  char *copy = hl_malloc(len + 1);
  if (copy != NULL) memcpy(copy, message, len + 1);
  hl_free(fail_message);
  fail_message = copy;
  fail_code = code;
  call_failed = true;
}

HL_HOT static void reset_fail(void) {
  if (fail_message != NULL) hl_free(fail_message); /* the allocator's code is not on the hot pages */
  fail_message = NULL;
  call_failed = false;
  fail_code = 0;
}

/* ---- dispatch ---- */

/* Sends ERROR(code, message); if not even that fits, the output buffer is
 * unusable and aborting is all that is left. */
static void send_error(uint32_t code, const char *msg) {
  if (!hl_push_error(code, msg, strlen(msg))) hl_abort((int32_t)code, msg);
}

/* Decodes the arguments after the name into args, checking them against f.
 * Returns false after sending an ERROR record. */
HL_HOT static bool decode_args(hl_reader *r, const hl_function *f, hl_value *args) {
  hl_msg m;
  uint8_t argc = hl_get_u8(r);
  if (!r->ok) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: truncated before argc");
    return false;
  }
  if (argc != f->nparams) {
    hl_msg_init(&m);
    hl_msg_mem(&m, f->name, f->name_len);
    hl_msg_str(&m, " takes ");
    hl_msg_int(&m, f->nparams);
    hl_msg_str(&m, " argument(s), got ");
    hl_msg_int(&m, argc);
    send_error(HL_ERR_PARAMETER_MISMATCH, m.text);
    return false;
  }
  for (int i = 0; i < argc; i++) {
    uint8_t tag = hl_get_u8(r);
    if (!r->ok || !hl_valid_type(tag)) {
      send_error(HL_ERR_MALFORMED, "malformed CALL record: bad argument type tag");
      return false;
    }
    if (tag != f->params[i]) {
      hl_msg_init(&m);
      hl_msg_str(&m, "argument ");
      hl_msg_int(&m, i + 1);
      hl_msg_str(&m, " of ");
      hl_msg_mem(&m, f->name, f->name_len);
      hl_msg_str(&m, ": expected ");
      hl_msg_str(&m, hl_type_name(f->params[i]));
      hl_msg_str(&m, ", got ");
      hl_msg_str(&m, hl_type_name((hl_type)tag));
      send_error(HL_ERR_PARAMETER_MISMATCH, m.text);
      return false;
    }
    hl_get_value_data(r, (hl_type)tag, &args[i]);
  }
  if (!hl_reader_done(r)) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: bad argument encoding");
    return false;
  }
  return true;
}

/* Checks the function's result and pushes it as a RETURN record. */
HL_HOT static void send_result(const hl_function *f, const hl_value *result) {
  hl_msg m;
  if (result->type != f->ret) {
    hl_msg_init(&m);
    hl_msg_mem(&m, f->name, f->name_len);
    hl_msg_str(&m, " returned ");
    hl_msg_str(&m, (unsigned)result->type <= HL_BYTES ? hl_type_name(result->type) : "an invalid type");
    hl_msg_str(&m, ", registered as returning ");
    hl_msg_str(&m, hl_type_name(f->ret));
    send_error(HL_ERR_GENERIC, m.text);
    return;
  }
  /* str and bytes share the pointer in the union. */
  if ((result->type == HL_STR || result->type == HL_BYTES) && result->bytes == NULL && result->len != 0) {
    hl_msg_init(&m);
    hl_msg_mem(&m, f->name, f->name_len);
    hl_msg_str(&m, " returned a NULL pointer with a nonzero length");
    send_error(HL_ERR_GENERIC, m.text);
    return;
  }
  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_RETURN);
  hl_put_value(&w, result);
  if (!hl_record_end(&w)) send_error(HL_ERR_GENERIC, "result too large for output buffer");
}

/* A call of an unregistered name, for the guest's fallback: arguments of any
 * types, a result of any type. */
static void run_fallback(hl_reader *r, const char *name, uint16_t name_len) {
  hl_value args[HL_MAX_PARAMS];
  uint8_t argc = hl_get_u8(r);
  if (!r->ok || argc > HL_MAX_PARAMS) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: bad argument count for the fallback");
    return;
  }
  for (int i = 0; i < argc; i++) hl_get_value(r, &args[i]);
  if (!hl_reader_done(r)) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: bad argument encoding");
    return;
  }
  reset_fail();
  current_name = name;
  hl_value result = fallback(name, name_len, argc, args);
  hl_libc_after_call();
  current_name = NULL;
  if (call_failed) {
    send_error(fail_code, fail_message ? fail_message : "guest function failed (message lost: out of heap)");
  } else if ((unsigned)result.type > HL_BYTES ||
             ((result.type == HL_STR || result.type == HL_BYTES) && result.bytes == NULL && result.len != 0)) {
    send_error(HL_ERR_GENERIC, "the fallback returned an invalid value");
  } else {
    hl_writer w;
    hl_record_begin(&w, &hl_output_buffer, HL_REC_RETURN);
    hl_put_value(&w, &result);
    if (!hl_record_end(&w)) send_error(HL_ERR_GENERIC, "result too large for output buffer");
  }
  reset_fail();
}

/* Decodes and runs one well-formed CALL record; pushes RETURN or ERROR. */
HL_HOT static void run_call(const hl_record *rec) {
  hl_reader r;
  hl_reader_init(&r, rec);
  uint16_t name_len;
  const char *name = hl_get_name(&r, &name_len);
  if (name == NULL) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: bad function name");
    return;
  }
  const hl_function *f = find_function(name, name_len);
  if (f == NULL && fallback != NULL) {
    run_fallback(&r, name, name_len);
    return;
  }
  if (f == NULL) {
    hl_msg m;
    hl_msg_init(&m);
    hl_msg_str(&m, "guest function not found: ");
    hl_msg_mem(&m, name, name_len);
    send_error(HL_ERR_FUNCTION_NOT_FOUND, m.text);
    return;
  }
  hl_value args[HL_MAX_PARAMS];
  if (!decode_args(&r, f, args)) return;

  reset_fail();
  current_name = f->name;
  hl_value result = f->fn(args);
  hl_libc_after_call();
  if (call_failed)
    send_error(fail_code, fail_message ? fail_message : "guest function failed (message lost: out of heap)");
  else
    send_result(f, &result);
  reset_fail();
}

/* Runs the CALL record on top of the input buffer and leaves a RETURN or
 * ERROR record on the output buffer. */
HL_HOT static void dispatch_one(void) {
  hl_record rec;
  if (!hl_record_peek(&hl_input_buffer, &rec)) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: bad top, back-pointer or length");
    return;
  }
  if (rec.kind != HL_REC_CALL) {
    send_error(HL_ERR_MALFORMED, "malformed CALL record: the input buffer's top record is not a CALL");
    return;
  }
  run_call(&rec);
  /* Only now: the arguments pointed into the CALL record until here. */
  hl_record_pop(&hl_input_buffer, &rec);
}

static HL_HOT __attribute__((noreturn)) void dispatch_loop(void) {
  for (;;) {
    HL_OUT(HL_PORT_HALT); /* the host resumes us with a CALL record */
    dispatch_one();
  }
}

/* ---- init ---- */

/* With no trustworthy PEB there is no buffer to put a message in. */
static __attribute__((noreturn)) void abort_without_record(void) {
  for (;;) HL_OUT(HL_PORT_ABORT);
}

static bool buffer_usable(uint64_t addr, uint64_t size) {
  return addr != 0 && (addr & 7) == 0 && size >= 64;
}

/* Called by hl_start (entry.S) with the registers of docs/abi.md. */
__attribute__((noreturn, used, no_stack_protector)) void hl_init(const uint64_t *peb, uint64_t seed, uint64_t page_size,
                                             uint64_t min_log_level);

void hl_init(const uint64_t *peb, uint64_t seed, uint64_t page_size, uint64_t min_log_level) {
  (void)page_size;
  hl_libc_init(seed); /* first: libc code (errno, the canary) reads the thread block */
  if (peb == NULL || peb[HL_PEB_MAGIC_F] != HL_PEB_MAGIC) abort_without_record();
  if (!buffer_usable(peb[HL_PEB_OUTPUT_ADDR], peb[HL_PEB_OUTPUT_SIZE])) abort_without_record();
  hl_output_buffer.base = (uint8_t *)(uintptr_t)peb[HL_PEB_OUTPUT_ADDR];
  hl_output_buffer.size = peb[HL_PEB_OUTPUT_SIZE];
  hl_buffer_reset(&hl_output_buffer); /* from here on hl_abort can report */

  if (peb[HL_PEB_VERSION] != HL_ABI_VERSION) hl_abort(HL_ERR_GENERIC, "unsupported ABI version in the PEB (want 2)");
  if (peb[HL_PEB_PROFILE] != HL_PROFILE_AMD64) hl_abort(HL_ERR_GENERIC, "the PEB's profile is not amd64");
  if (!buffer_usable(peb[HL_PEB_INPUT_ADDR], peb[HL_PEB_INPUT_SIZE]))
    hl_abort(HL_ERR_GENERIC, "bad input buffer in the PEB");
  hl_input_buffer.base = (uint8_t *)(uintptr_t)peb[HL_PEB_INPUT_ADDR];
  hl_input_buffer.size = peb[HL_PEB_INPUT_SIZE];
  hl_buffer_reset(&hl_input_buffer);

  uint64_t counter = peb[HL_PEB_COUNTER_ADDR];
  if ((counter & 7) != 0) hl_abort(HL_ERR_GENERIC, "misaligned GuestCounter address in the PEB");
  hl_guest_counter_ptr = (const volatile uint64_t *)(uintptr_t)counter;

  hl_seed_value = seed;
  hl_min_log_level = min_log_level > 6 ? 6 : (int)min_log_level;
  hl_heap_init((void *)(uintptr_t)peb[HL_PEB_HEAP_ADDR], peb[HL_PEB_HEAP_SIZE]);

  if (hl_api_init != NULL) hl_api_init(); /* e.g. the Hyperlight C API layer */
  hyperlight_main();
  hl_libc_after_call();
  push_function_table();
  dispatch_loop();
}
