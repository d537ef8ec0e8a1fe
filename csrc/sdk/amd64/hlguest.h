/* hlguest.h - the hlsandbox guest SDK (amd64 profile).
 *
 * A guest defines hyperlight_main(), registers its functions there with
 * hl_register(), and the SDK does the rest: entry, dispatch loop, record
 * encoding (docs/abi.md), host calls, logging, abort, heap, fault stubs.
 * Freestanding: no libc. Guest code runs at CPL3. */
#ifndef HLGUEST_H
#define HLGUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hl_abi.h" /* ports, value tags, error codes, raw statuses, log levels */

typedef enum {
  HL_VOID = HL_TAG_VOID,
  HL_I32 = HL_TAG_I32,
  HL_U32 = HL_TAG_U32,
  HL_I64 = HL_TAG_I64,
  HL_U64 = HL_TAG_U64,
  HL_F32 = HL_TAG_F32,
  HL_F64 = HL_TAG_F64,
  HL_BOOL = HL_TAG_BOOL,
  HL_STR = HL_TAG_STR,
  HL_BYTES = HL_TAG_BYTES,
} hl_type;

/* A typed value. For HL_STR, `str` is NUL-terminated and `len` excludes the
 * NUL; for HL_BYTES, `bytes`/`len`. Argument strings and bytes point into the
 * input buffer and stay valid until the guest function returns. */
typedef struct {
  hl_type type;
  uint32_t len;
  union {
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f32;
    double f64;
    bool b;
    const char *str;
    const uint8_t *bytes;
  };
} hl_value;

#define HL_MAX_PARAMS 16

/* A guest function receives its arguments (already checked against the
 * registered signature) and returns its result. To fail, call hl_fail()
 * and return anything. */
typedef hl_value (*hl_guest_fn)(const hl_value *args);

/* Registers a guest function; call from hyperlight_main(). */
void hl_register(const char *name, hl_guest_fn fn, hl_type ret, int nparams, const hl_type *params);

/* A fallback receives calls of names no hl_register() registered, with
 * arguments of any types (argc, args; name is NUL-terminated), and may return
 * a value of any type. To refuse a name: hl_fail(HL_ERR_FUNCTION_NOT_FOUND,
 * ...) and return anything. The host lets such calls through only to a guest
 * that registered a fallback (in hyperlight_main). */
typedef hl_value (*hl_fallback_fn)(const char *name, uint16_t name_len, int argc, const hl_value *args);
void hl_register_fallback(hl_fallback_fn fn);

/* The name of the guest function running now (valid during a guest call). */
const char *hl_current_function_name(void);

/* Convenience constructors. */
static inline hl_value hl_void(void) { hl_value v = {.type = HL_VOID}; return v; }
static inline hl_value hl_i32(int32_t x) { hl_value v = {.type = HL_I32, .i32 = x}; return v; }
static inline hl_value hl_u32(uint32_t x) { hl_value v = {.type = HL_U32, .u32 = x}; return v; }
static inline hl_value hl_i64(int64_t x) { hl_value v = {.type = HL_I64, .i64 = x}; return v; }
static inline hl_value hl_u64(uint64_t x) { hl_value v = {.type = HL_U64, .u64 = x}; return v; }
static inline hl_value hl_f32(float x) { hl_value v = {.type = HL_F32, .f32 = x}; return v; }
static inline hl_value hl_f64(double x) { hl_value v = {.type = HL_F64, .f64 = x}; return v; }
static inline hl_value hl_bool(bool x) { hl_value v = {.type = HL_BOOL, .b = x}; return v; }
hl_value hl_str(const char *s); /* NUL-terminated */
static inline hl_value hl_bytes(const void *p, uint32_t n) {
  hl_value v = {.type = HL_BYTES, .len = n, .bytes = (const uint8_t *)p};
  return v;
}

/* Marks the current guest call as failed with an error code (docs/abi.md)
 * and message (copied); the dispatcher sends an ERROR record instead of the
 * result. */
void hl_fail(uint32_t code, const char *message);

/* Calls a host function by name. Returns 0 and sets *ret (if not NULL) on
 * success; on failure returns the error code (4 host function raised, 5 not
 * found or wrong types) and *ret holds the message as HL_STR. Returned
 * strings/bytes stay valid until the next host call or the end of the call. */
uint32_t hl_call_host(const char *name, hl_type ret_type, int nargs, const hl_value *args, hl_value *ret);

/* Calls a raw host function, registered on the host by numeric id
 * (docs/abi.md, "Raw host calls"): the request bytes go out as they are and
 * the response comes back as bytes. Returns the status:
 *   HL_RAW_OK (0)         *resp, *resp_len hold the function's response;
 *   HL_RAW_UNKNOWN_ID (1) no host function has this id;
 *   HL_RAW_RAISED (2)     the host function raised; the response is its
 *                         message (UTF-8);
 *   HL_RAW_TOO_LARGE (3)  the response does not fit the input buffer, or
 *                         (decided in the guest) the request does not fit
 *                         the output buffer;
 *   HL_RAW_MALFORMED (6)  the host's reply is not a well-formed RAW_RESULT
 *                         (the code typed calls use for malformed
 *                         records), or bad arguments (a NULL request with
 *                         a nonzero length).
 * For a status the guest decided itself (3 for a request, 6), the response
 * is a message (text) the SDK owns. The response points into the input
 * buffer and stays valid until the next host call. resp and resp_len may be
 * NULL. */
uint32_t hl_call_host_raw(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp,
                          uint32_t *resp_len);

/* The current value of the host's GuestCounter (docs/abi.md, PEB offset
 * 120): a u64 only the host writes, between calls. Read afresh each time;
 * 0 if the host gave no counter address. */
uint64_t hl_guest_counter(void);

/* Logging: level 0 trace .. 5 critical. Records below the host's level are
 * dropped in the guest. */
void hl_log_at(int level, const char *file, uint32_t line, const char *message);
#define hl_log(level, message) hl_log_at((level), __FILE__, __LINE__, (message))

/* Prints text through the host's writer. Returns the number of bytes. */
int32_t hl_print(const char *text);
/* Prints len bytes of text; returns how many went out (fewer if the output
 * buffer cannot hold them all in one record). */
int32_t hl_print_n(const char *text, size_t len);

/* Aborts the guest: the call raises GuestAborted(code, message). */
__attribute__((noreturn)) void hl_abort(int32_t code, const char *message);

/* Heap (a first-fit free-list allocator over the heap region). */
void *hl_malloc(size_t n);
void *hl_calloc(size_t n, size_t size);
void *hl_realloc(void *p, size_t n);
void hl_free(void *p);

/* Freestanding helpers (also used by the compiler for struct copies). */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* Formats a signed integer in decimal into buf (at least 21 bytes); returns buf. */
char *hl_itoa(int64_t v, char *buf);

/* The random 64-bit seed the host passed at entry (docs/abi.md, rsi). */
uint64_t hl_seed(void);

/* The guest's own entry point: register functions here. */
void hyperlight_main(void);

#endif
