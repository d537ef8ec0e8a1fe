/* hyperlight.c - Hyperlight's C guest API (hyperlight_guest.h) on the
 * hlsandbox SDK (hlguest.h): registration, dispatch through an adapter,
 * results, host calls, errors, aborts and logging.
 *
 * A result (hl_Vec) holds one value in hlsandbox's wire encoding (a tag byte
 * and the value's data, docs/abi.md "Values"); Hyperlight's is a flatbuffer,
 * but guests treat it as opaque. */
#include <stdlib.h>
#include <string.h>

#include "hl_internal.h"
#undef hl_log /* hlguest.h's macro; here hl_log is Hyperlight's function */
#include "hyperlight_guest.h"

/* ---- types ---- */

static const hl_type param_types[] = {
    [hl_ParameterType_Int] = HL_I32,     [hl_ParameterType_UInt] = HL_U32,  [hl_ParameterType_Long] = HL_I64,
    [hl_ParameterType_ULong] = HL_U64,   [hl_ParameterType_Float] = HL_F32, [hl_ParameterType_Double] = HL_F64,
    [hl_ParameterType_String] = HL_STR,  [hl_ParameterType_Bool] = HL_BOOL, [hl_ParameterType_VecBytes] = HL_BYTES,
};

static const hl_type return_types[] = {
    [hl_ReturnType_Int] = HL_I32,     [hl_ReturnType_UInt] = HL_U32,   [hl_ReturnType_Long] = HL_I64,
    [hl_ReturnType_ULong] = HL_U64,   [hl_ReturnType_Float] = HL_F32,  [hl_ReturnType_Double] = HL_F64,
    [hl_ReturnType_String] = HL_STR,  [hl_ReturnType_Bool] = HL_BOOL,  [hl_ReturnType_Void] = HL_VOID,
    [hl_ReturnType_VecBytes] = HL_BYTES,
};

static hl_ParameterType parameter_type_of(hl_type t) {
  for (unsigned i = 0; i < sizeof param_types / sizeof *param_types; i++)
    if (param_types[i] == t) return (hl_ParameterType)i;
  return hl_ParameterType_Int; /* not reached: the dispatcher checked the tags */
}

/* hlsandbox value → Hyperlight parameter; strings and bytes stay in the input buffer. */
static hl_Parameter to_parameter(const hl_value *v) {
  hl_Parameter p;
  memset(&p, 0, sizeof p);
  p.tag = parameter_type_of(v->type);
  switch (v->type) {
  case HL_I32: p.value.Int = v->i32; break;
  case HL_U32: p.value.UInt = v->u32; break;
  case HL_I64: p.value.Long = v->i64; break;
  case HL_U64: p.value.ULong = v->u64; break;
  case HL_F32: p.value.Float = v->f32; break;
  case HL_F64: p.value.Double = v->f64; break;
  case HL_BOOL: p.value.Bool = v->b; break;
  case HL_STR: p.value.String = (char *)v->str; break;
  case HL_BYTES: p.value.VecBytes = (hl_Vec){(uint8_t *)v->bytes, v->len}; break;
  case HL_VOID: break;
  }
  return p;
}

static bool to_value(const hl_Parameter *p, hl_value *v) {
  switch (p->tag) {
  case hl_ParameterType_Int: *v = hl_i32(p->value.Int); return true;
  case hl_ParameterType_UInt: *v = hl_u32(p->value.UInt); return true;
  case hl_ParameterType_Long: *v = hl_i64(p->value.Long); return true;
  case hl_ParameterType_ULong: *v = hl_u64(p->value.ULong); return true;
  case hl_ParameterType_Float: *v = hl_f32(p->value.Float); return true;
  case hl_ParameterType_Double: *v = hl_f64(p->value.Double); return true;
  case hl_ParameterType_Bool: *v = hl_bool(p->value.Bool); return true;
  case hl_ParameterType_String: *v = hl_str(p->value.String ? p->value.String : ""); return true;
  case hl_ParameterType_VecBytes:
    if (p->value.VecBytes.len > UINT32_MAX) return false;
    *v = hl_bytes(p->value.VecBytes.data, (uint32_t)p->value.VecBytes.len);
    return true;
  }
  return false;
}

/* ---- results: one tagged value in an hl_Vec ---- */

static hl_Vec *make_result(uint8_t tag, const void *data, size_t len) {
  hl_Vec *v = malloc(sizeof *v);
  uint8_t *bytes = malloc(1 + len);
  if (v == NULL || bytes == NULL) hl_abort(HL_ERR_GENERIC, "hyperlight API: out of heap for a result");
  bytes[0] = tag;
  if (len) memcpy(bytes + 1, data, len);
  v->data = bytes;
  v->len = 1 + len;
  return v;
}

hl_Vec *hl_flatbuffer_result_from_Int(int32_t x) { return make_result(HL_I32, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_UInt(uint32_t x) { return make_result(HL_U32, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_Long(int64_t x) { return make_result(HL_I64, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_ULong(uint64_t x) { return make_result(HL_U64, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_Float(float x) { return make_result(HL_F32, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_Double(double x) { return make_result(HL_F64, &x, sizeof x); }
hl_Vec *hl_flatbuffer_result_from_Void(void) { return make_result(HL_VOID, NULL, 0); }
hl_Vec *hl_flatbuffer_result_from_Bool(bool x) {
  uint8_t b = x;
  return make_result(HL_BOOL, &b, 1);
}
hl_Vec *hl_flatbuffer_result_from_String(const char *s) {
  if (s == NULL) s = "";
  return make_result(HL_STR, s, strlen(s) + 1); /* with its NUL */
}
hl_Vec *hl_flatbuffer_result_from_Bytes(const uint8_t *data, size_t len) {
  if (data == NULL && len != 0) hl_abort(HL_ERR_GENERIC, "hl_flatbuffer_result_from_Bytes: NULL data");
  return make_result(HL_BYTES, data, len);
}

/* The previous call's result: freed when the next call starts (the SDK copies
 * a returned string or byte array out only after the function returns). */
static hl_Vec *last_result;

static void release_last_result(void) {
  if (last_result != NULL) {
    free(last_result->data);
    free(last_result);
    last_result = NULL;
  }
}

static hl_value result_value(hl_Vec *r) {
  last_result = r;
  if (r == NULL || r->data == NULL || r->len < 1) {
    hl_fail(HL_ERR_GENERIC, "a Hyperlight guest function returned no result");
    return hl_void();
  }
  const uint8_t *d = r->data + 1;
  size_t n = r->len - 1;
  hl_value v = {.type = (hl_type)r->data[0]};
  switch (v.type) {
  case HL_VOID: break;
  case HL_BOOL: v.b = n >= 1 && d[0]; break;
  case HL_STR: v.str = (const char *)d; v.len = n ? (uint32_t)(n - 1) : 0; break;
  case HL_BYTES: v.bytes = d; v.len = (uint32_t)n; break;
  default: memcpy(&v.u64, d, n < 8 ? n : 8); break;
  }
  return v;
}

/* ---- registration and dispatch ---- */

typedef struct {
  const char *name;
  hl_GuestFunc fn;
  hl_ReturnType ret;
  int nparams;
} hl_capi_function;

static hl_capi_function *table;
static uint32_t table_len, table_cap;

static const hl_capi_function *lookup(const char *name) {
  for (uint32_t i = 0; i < table_len; i++)
    if (strcmp(table[i].name, name) == 0) return &table[i];
  return NULL;
}

static hl_value call_with(hl_GuestFunc fn, const char *name, hl_ReturnType ret, int argc, const hl_value *args) {
  release_last_result();
  hl_Parameter params[HL_MAX_PARAMS];
  for (int i = 0; i < argc; i++) params[i] = to_parameter(&args[i]);
  hl_FunctionCall call = {name, params, (uintptr_t)argc, ret};
  return result_value(fn(&call));
}

/* Every registered function goes through here; the SDK has already checked
 * the arguments against the registered types. */
static hl_value adapter(const hl_value *args) {
  const char *name = hl_current_function_name();
  const hl_capi_function *f = lookup(name);
  if (f == NULL) hl_abort(HL_ERR_GENERIC, "hyperlight API: dispatch to an unknown function");
  return call_with(f->fn, name, f->ret, f->nparams, args);
}

void hl_register_function_definition(const char *function_name, hl_GuestFunc func_ptr, uintptr_t param_no,
                                     const hl_ParameterType *params_type, hl_ReturnType return_type) {
  if (function_name == NULL || func_ptr == NULL) hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: NULL");
  if (param_no > HL_MAX_PARAMS) hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: too many parameters");
  if ((unsigned)return_type > hl_ReturnType_VecBytes)
    hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: bad return type");
  hl_type params[HL_MAX_PARAMS];
  for (uintptr_t i = 0; i < param_no; i++) {
    if ((unsigned)params_type[i] > hl_ParameterType_VecBytes)
      hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: bad parameter type");
    params[i] = param_types[params_type[i]];
  }
  hl_capi_function *f = (hl_capi_function *)lookup(function_name);
  if (f == NULL) {
    if (table_len == table_cap) {
      uint32_t cap = table_cap ? 2 * table_cap : 16;
      hl_capi_function *t = realloc(table, cap * sizeof *t);
      if (t == NULL) hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: out of heap");
      table = t;
      table_cap = cap;
    }
    f = &table[table_len++];
    f->name = strdup(function_name);
    if (f->name == NULL) hl_abort(HL_ERR_GENERIC, "hl_register_function_definition: out of heap");
  }
  f->fn = func_ptr;
  f->ret = return_type;
  f->nparams = (int)param_no;
  hl_register(function_name, adapter, return_types[return_type], (int)param_no, params);
}

/* c_guest_dispatch_function, for names not registered. The host's expected
 * return type is not sent with a call: return_type is Void. */
static hl_value fallback(const char *name, uint16_t name_len, int argc, const hl_value *args) {
  (void)name_len;
  release_last_result();
  hl_Parameter params[HL_MAX_PARAMS];
  for (int i = 0; i < argc; i++) params[i] = to_parameter(&args[i]);
  hl_FunctionCall call = {name, params, (uintptr_t)argc, hl_ReturnType_Void};
  hl_Vec *r = c_guest_dispatch_function(&call);
  if (r == NULL) {
    hl_fail(HL_ERR_FUNCTION_NOT_FOUND, name);
    return hl_void();
  }
  return result_value(r);
}

void hl_api_init(void) {
  if (c_guest_dispatch_function != NULL) hl_register_fallback(fallback);
}

/* ---- host calls ---- */

static hl_value host_result;

void hl_call_host_function(const hl_FunctionCall *call) {
  if (call == NULL || call->function_name == NULL) hl_abort(HL_ERR_GENERIC, "hl_call_host_function: NULL call");
  if (call->parameters_len > HL_MAX_PARAMS || (unsigned)call->return_type > hl_ReturnType_VecBytes)
    hl_abort(HL_ERR_GENERIC, "hl_call_host_function: bad parameter count or return type");
  hl_value args[HL_MAX_PARAMS];
  for (uintptr_t i = 0; i < call->parameters_len; i++)
    if (!to_value(&call->parameters[i], &args[i])) hl_abort(HL_ERR_GENERIC, "hl_call_host_function: bad parameter");
  uint32_t err = hl_call_host(call->function_name, return_types[call->return_type], (int)call->parameters_len,
                              args, &host_result);
  if (err != 0) {
    /* Hyperlight's guest panics here; the call ends with GuestAborted. */
    const char *msg = host_result.type == HL_STR ? host_result.str : "host function failed";
    hl_abort((int32_t)err, msg);
  }
}

int32_t hl_get_host_return_value_as_Int(void) { return host_result.i32; }
uint32_t hl_get_host_return_value_as_UInt(void) { return host_result.u32; }
int64_t hl_get_host_return_value_as_Long(void) { return host_result.i64; }
uint64_t hl_get_host_return_value_as_ULong(void) { return host_result.u64; }
bool hl_get_host_return_value_as_Bool(void) { return host_result.b; }
float hl_get_host_return_value_as_Float(void) { return host_result.f32; }
double hl_get_host_return_value_as_Double(void) { return host_result.f64; }
const char *hl_get_host_return_value_as_String(void) { return host_result.type == HL_STR ? host_result.str : ""; }
hl_Vec *hl_get_host_return_value_as_VecBytes(void) {
  hl_Vec *v = malloc(sizeof *v);
  uint32_t n = host_result.type == HL_BYTES ? host_result.len : 0;
  uint8_t *d = malloc(n ? n : 1);
  if (v == NULL || d == NULL) hl_abort(HL_ERR_GENERIC, "hl_get_host_return_value_as_VecBytes: out of heap");
  if (n) memcpy(d, host_result.bytes, n);
  v->data = d;
  v->len = n;
  return v;
}

/* ---- errors, aborts, logging ---- */

/* Hyperlight's codes → hlsandbox's (docs/guests.md): the ones with a
 * matching exception map to it, the rest stay as they are (GuestError.code). */
static uint32_t error_code(hl_ErrorCode e) {
  switch (e) {
  case hl_ErrorCode_GuestFunctionNotFound:
  case hl_ErrorCode_GuestFunctionNameNotProvided: return HL_ERR_FUNCTION_NOT_FOUND;
  case hl_ErrorCode_GuestFunctionParameterTypeMismatch:
  case hl_ErrorCode_GuestFunctionIncorrecNoOfParameters:
  case hl_ErrorCode_UnsupportedParameterType: return HL_ERR_PARAMETER_MISMATCH;
  case hl_ErrorCode_HostFunctionError: return HL_ERR_HOST_FUNCTION;
  case hl_ErrorCode_GispatchFunctionPointerNotSet:
  case hl_ErrorCode_OutbError:
  case hl_ErrorCode_NoError: return HL_ERR_GENERIC;
  default: return (uint32_t)e;
  }
}

void hl_set_error(hl_ErrorCode err, const char *message) { hl_fail(error_code(err), message ? message : ""); }

/* Hyperlight sends the code as one byte. */
void hl_abort_with_code(int32_t err) { hl_abort(err & 0xff, ""); }
void hl_abort_with_code_and_message(int32_t err, const char *message) { hl_abort(err & 0xff, message); }

void hl_log(hl_Level level, const char *message, int32_t line, const char *file) {
  static const int levels[] = {[hl_Level_Error] = HL_LOG_ERROR, [hl_Level_Warn] = HL_LOG_WARNING,
                               [hl_Level_Info] = HL_LOG_INFO,   [hl_Level_Debug] = HL_LOG_DEBUG,
                               [hl_Level_Trace] = HL_LOG_TRACE};
  int ours = (unsigned)level >= 1 && (unsigned)level <= hl_Level_Trace ? levels[level] : HL_LOG_ERROR;
  hl_log_at(ours, file, line < 0 ? 0 : (uint32_t)line, message);
}
