/* A guest written against Hyperlight's C API (hyperlight_guest.h), built
 * with api="hyperlight": every function and macro of the API, and the
 * behaviours Hyperlight's host tests check (tests/sdk/test_hyperlight_api.py). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyperlight_guest.h"

#define printf_f(...)                 \
  ({                                  \
    int _r = printf(__VA_ARGS__);     \
    fflush(stdout);                   \
    _r;                               \
  })

/* ---- echo of every type ---- */

int32_t echo_int(int32_t x) { return x; }
uint32_t echo_uint(uint32_t x) { return x; }
int64_t echo_long(int64_t x) { return x; }
uint64_t echo_ulong(uint64_t x) { return x; }
float echo_float(float x) { return x; }
double echo_double(double x) { return x; }
bool echo_bool(bool x) { return x; }
const char *echo(const char *s) { return s; }

HYPERLIGHT_WRAP_FUNCTION(echo_int, Int, 1, Int)
HYPERLIGHT_WRAP_FUNCTION(echo_uint, UInt, 1, UInt)
HYPERLIGHT_WRAP_FUNCTION(echo_long, Long, 1, Long)
HYPERLIGHT_WRAP_FUNCTION(echo_ulong, ULong, 1, ULong)
HYPERLIGHT_WRAP_FUNCTION(echo_float, Float, 1, Float)
HYPERLIGHT_WRAP_FUNCTION(echo_double, Double, 1, Double)
HYPERLIGHT_WRAP_FUNCTION(echo_bool, Bool, 1, Bool)
HYPERLIGHT_WRAP_FUNCTION(echo, String, 1, String)

/* ---- byte arrays (VecBytes results need hl_register_function_definition) ---- */

hl_Vec *set_byte_array_to_zero(const hl_FunctionCall *call) {
  hl_Vec in = call->parameters[0].value.VecBytes;
  uint8_t *zeros = calloc(in.len ? in.len : 1, 1);
  hl_Vec *r = hl_flatbuffer_result_from_Bytes(zeros, in.len);
  free(zeros);
  return r;
}

hl_Vec *twenty_four_k_in_eight_k_out(const hl_FunctionCall *call) {
  hl_Vec in = call->parameters[0].value.VecBytes;
  if (in.len != 24 * 1024) {
    hl_set_error(hl_ErrorCode_GuestError, "expected 24 KiB");
    return hl_flatbuffer_result_from_Bytes(in.data, 0);
  }
  return hl_flatbuffer_result_from_Bytes(in.data, 8 * 1024);
}

/* ---- printing with 1 to 11 arguments ---- */

int print_output(const char *m) { return printf_f("%s", m); }
int print_two(const char *a1, int32_t a2) { return printf_f("Message: arg1:%s arg2:%d.", a1, a2); }
int print_three(const char *a1, int32_t a2, int64_t a3) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld.", a1, a2, (long)a3);
}
int print_four(const char *a1, int32_t a2, int64_t a3, const char *a4) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s.", a1, a2, (long)a3, a4);
}
int print_five(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s.", a1, a2, (long)a3, a4, a5);
}
int print_six(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s.", a1, a2, (long)a3, a4, a5,
                  a6 ? "true" : "false");
}
int print_seven(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6, bool a7) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s arg7:%s.", a1, a2, (long)a3, a4, a5,
                  a6 ? "true" : "false", a7 ? "true" : "false");
}
int print_eight(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6, bool a7,
                uint32_t a8) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s arg7:%s arg8:%u.", a1, a2, (long)a3,
                  a4, a5, a6 ? "true" : "false", a7 ? "true" : "false", a8);
}
int print_nine(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6, bool a7,
               uint32_t a8, uint64_t a9) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s arg7:%s arg8:%u arg9:%lu.", a1, a2,
                  (long)a3, a4, a5, a6 ? "true" : "false", a7 ? "true" : "false", a8, (unsigned long)a9);
}
int print_ten(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6, bool a7,
              uint32_t a8, uint64_t a9, int32_t a10) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s arg7:%s arg8:%u arg9:%lu arg10:%d.",
                  a1, a2, (long)a3, a4, a5, a6 ? "true" : "false", a7 ? "true" : "false", a8, (unsigned long)a9,
                  a10);
}
int print_eleven(const char *a1, int32_t a2, int64_t a3, const char *a4, const char *a5, bool a6, bool a7,
                 uint32_t a8, uint64_t a9, int32_t a10, float a11) {
  return printf_f("Message: arg1:%s arg2:%d arg3:%ld arg4:%s arg5:%s arg6:%s arg7:%s arg8:%u arg9:%lu arg10:%d "
                  "arg11:%.3f.",
                  a1, a2, (long)a3, a4, a5, a6 ? "true" : "false", a7 ? "true" : "false", a8, (unsigned long)a9,
                  a10, a11);
}

HYPERLIGHT_WRAP_FUNCTION(print_output, Int, 1, String)
HYPERLIGHT_WRAP_FUNCTION(print_two, Int, 2, String, Int)
HYPERLIGHT_WRAP_FUNCTION(print_three, Int, 3, String, Int, Long)
HYPERLIGHT_WRAP_FUNCTION(print_four, Int, 4, String, Int, Long, String)
HYPERLIGHT_WRAP_FUNCTION(print_five, Int, 5, String, Int, Long, String, String)
HYPERLIGHT_WRAP_FUNCTION(print_six, Int, 6, String, Int, Long, String, String, Bool)
HYPERLIGHT_WRAP_FUNCTION(print_seven, Int, 7, String, Int, Long, String, String, Bool, Bool)
HYPERLIGHT_WRAP_FUNCTION(print_eight, Int, 8, String, Int, Long, String, String, Bool, Bool, UInt)
HYPERLIGHT_WRAP_FUNCTION(print_nine, Int, 9, String, Int, Long, String, String, Bool, Bool, UInt, ULong)
HYPERLIGHT_WRAP_FUNCTION(print_ten, Int, 10, String, Int, Long, String, String, Bool, Bool, UInt, ULong, Int)
HYPERLIGHT_WRAP_FUNCTION(print_eleven, Int, 11, String, Int, Long, String, String, Bool, Bool, UInt, ULong, Int,
                         Float)

/* ---- aborts, errors, faults ---- */

int abort_with_code(int32_t code) {
  hl_abort_with_code(code);
  return -1;
}
int abort_with_message(int32_t code, const char *message) {
  hl_abort_with_code_and_message(code, message);
  return -1;
}
int set_error(int32_t code, const char *message) {
  hl_set_error((hl_ErrorCode)code, message);
  return 0;
}

__attribute__((noinline)) static int recurse(int depth) {
  volatile char frame[16384];
  frame[0] = (char)depth;
  __asm__ volatile("" ::"r"(frame) : "memory");
  return depth == 0 ? frame[0] : recurse(depth - 1) + frame[0];
}
int stack_overflow(int32_t depth) { return recurse(depth); }

int execute_on_stack(void) {
  uint8_t hlt = 0xF4;
  ((void (*)(void))(uintptr_t)&hlt)();
  return -1;
}
int execute_on_heap(void) {
  uint8_t *code = malloc(16);
  code[0] = 0xC3; /* ret */
  ((void (*)(void))(uintptr_t)code)();
  return -1;
}

int log_message(const char *message, int64_t level) {
  LOG((hl_Level)level, message);
  return (int)level;
}

HYPERLIGHT_WRAP_FUNCTION(abort_with_code, Int, 1, Int)
HYPERLIGHT_WRAP_FUNCTION(abort_with_message, Int, 2, Int, String)
HYPERLIGHT_WRAP_FUNCTION(set_error, Int, 2, Int, String)
HYPERLIGHT_WRAP_FUNCTION(stack_overflow, Int, 1, Int)
HYPERLIGHT_WRAP_FUNCTION(execute_on_stack, Int, 0)
HYPERLIGHT_WRAP_FUNCTION(execute_on_heap, Int, 0)
HYPERLIGHT_WRAP_FUNCTION(log_message, Int, 2, String, Long)

/* ---- host functions of every type ---- */

static hl_FunctionCall host_call(const char *name, hl_Parameter *params, uintptr_t n, hl_ReturnType ret) {
  hl_FunctionCall c = {.function_name = name, .parameters = params, .parameters_len = n, .return_type = ret};
  return c;
}

int host_add_int(int32_t a, int32_t b) {
  hl_Parameter p[2] = {{hl_ParameterType_Int, {.Int = a}}, {hl_ParameterType_Int, {.Int = b}}};
  hl_FunctionCall c = host_call("HostAddInt", p, 2, hl_ReturnType_Int);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Int();
}
uint32_t host_uint(uint32_t a) {
  hl_Parameter p = {hl_ParameterType_UInt, {.UInt = a}};
  hl_FunctionCall c = host_call("HostUInt", &p, 1, hl_ReturnType_UInt);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_UInt();
}
int64_t host_long(int64_t a) {
  hl_Parameter p = {hl_ParameterType_Long, {.Long = a}};
  hl_FunctionCall c = host_call("HostLong", &p, 1, hl_ReturnType_Long);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Long();
}
uint64_t host_ulong(uint64_t a) {
  hl_Parameter p = {hl_ParameterType_ULong, {.ULong = a}};
  hl_FunctionCall c = host_call("HostULong", &p, 1, hl_ReturnType_ULong);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_ULong();
}
float host_add_float(float a, float b) {
  hl_Parameter p[2] = {{hl_ParameterType_Float, {.Float = a}}, {hl_ParameterType_Float, {.Float = b}}};
  hl_FunctionCall c = host_call("HostAddFloat", p, 2, hl_ReturnType_Float);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Float();
}
double host_add_double(double a, double b) {
  hl_Parameter p[2] = {{hl_ParameterType_Double, {.Double = a}}, {hl_ParameterType_Double, {.Double = b}}};
  hl_FunctionCall c = host_call("HostAddDouble", p, 2, hl_ReturnType_Double);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Double();
}
bool host_bool(int32_t a, int32_t b) {
  hl_Parameter p[2] = {{hl_ParameterType_Int, {.Int = a}}, {hl_ParameterType_Int, {.Int = b}}};
  hl_FunctionCall c = host_call("HostBool", p, 2, hl_ReturnType_Bool);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Bool();
}
const char *host_string(const char *s) {
  static char message[256];
  snprintf(message, sizeof message, "Guest says %s", s);
  hl_Parameter p = {hl_ParameterType_String, {.String = message}};
  hl_FunctionCall c = host_call("HostAddStrings", &p, 1, hl_ReturnType_String);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_String();
}
int host_void(const char *s) {
  hl_Parameter p = {hl_ParameterType_String, {.String = (char *)s}};
  hl_FunctionCall c = host_call("HostVoid", &p, 1, hl_ReturnType_Void);
  hl_call_host_function(&c);
  return 0;
}
hl_Vec *host_bytes(const hl_FunctionCall *call) {
  hl_Parameter p = {hl_ParameterType_VecBytes, {.VecBytes = call->parameters[0].value.VecBytes}};
  hl_FunctionCall c = host_call("HostReverse", &p, 1, hl_ReturnType_VecBytes);
  hl_call_host_function(&c);
  hl_Vec *got = hl_get_host_return_value_as_VecBytes();
  hl_Vec *r = hl_flatbuffer_result_from_Bytes(got->data, got->len);
  free(got->data);
  free(got);
  return r;
}
int call_raising_host(void) {
  hl_FunctionCall c = host_call("HostRaises", NULL, 0, hl_ReturnType_Int);
  hl_call_host_function(&c);
  return hl_get_host_return_value_as_Int();
}

HYPERLIGHT_WRAP_FUNCTION(host_add_int, Int, 2, Int, Int)
HYPERLIGHT_WRAP_FUNCTION(host_uint, UInt, 1, UInt)
HYPERLIGHT_WRAP_FUNCTION(host_long, Long, 1, Long)
HYPERLIGHT_WRAP_FUNCTION(host_ulong, ULong, 1, ULong)
HYPERLIGHT_WRAP_FUNCTION(host_add_float, Float, 2, Float, Float)
HYPERLIGHT_WRAP_FUNCTION(host_add_double, Double, 2, Double, Double)
HYPERLIGHT_WRAP_FUNCTION(host_bool, Bool, 2, Int, Int)
HYPERLIGHT_WRAP_FUNCTION(host_string, String, 1, String)
HYPERLIGHT_WRAP_FUNCTION(host_void, Int, 1, String)
HYPERLIGHT_WRAP_FUNCTION(call_raising_host, Int, 0)

/* A Void result, through hl_register_function_definition. */
hl_Vec *do_nothing(const hl_FunctionCall *call) {
  (void)call;
  return hl_flatbuffer_result_from_Void();
}

void hyperlight_main(void) {
  HYPERLIGHT_REGISTER_FUNCTION("EchoInt", echo_int);
  HYPERLIGHT_REGISTER_FUNCTION("EchoUInt", echo_uint);
  HYPERLIGHT_REGISTER_FUNCTION("EchoLong", echo_long);
  HYPERLIGHT_REGISTER_FUNCTION("EchoULong", echo_ulong);
  HYPERLIGHT_REGISTER_FUNCTION("EchoFloat", echo_float);
  HYPERLIGHT_REGISTER_FUNCTION("EchoDouble", echo_double);
  HYPERLIGHT_REGISTER_FUNCTION("EchoBool", echo_bool);
  HYPERLIGHT_REGISTER_FUNCTION("Echo", echo);
  hl_register_function_definition("SetByteArrayToZero", set_byte_array_to_zero, 1,
                                  (hl_ParameterType[]){hl_ParameterType_VecBytes}, hl_ReturnType_VecBytes);
  hl_register_function_definition("24K_in_8K_out", twenty_four_k_in_eight_k_out, 1,
                                  (hl_ParameterType[]){hl_ParameterType_VecBytes}, hl_ReturnType_VecBytes);
  hl_register_function_definition("GuestRetrievesBytes", host_bytes, 1, (hl_ParameterType[]){hl_ParameterType_VecBytes},
                                  hl_ReturnType_VecBytes);
  hl_register_function_definition("DoNothing", do_nothing, 0, NULL, hl_ReturnType_Void);
  HYPERLIGHT_REGISTER_FUNCTION("PrintOutput", print_output);
  HYPERLIGHT_REGISTER_FUNCTION("PrintTwoArgs", print_two);
  HYPERLIGHT_REGISTER_FUNCTION("PrintThreeArgs", print_three);
  HYPERLIGHT_REGISTER_FUNCTION("PrintFourArgs", print_four);
  HYPERLIGHT_REGISTER_FUNCTION("PrintFiveArgs", print_five);
  HYPERLIGHT_REGISTER_FUNCTION("PrintSixArgs", print_six);
  HYPERLIGHT_REGISTER_FUNCTION("PrintSevenArgs", print_seven);
  HYPERLIGHT_REGISTER_FUNCTION("PrintEightArgs", print_eight);
  HYPERLIGHT_REGISTER_FUNCTION("PrintNineArgs", print_nine);
  HYPERLIGHT_REGISTER_FUNCTION("PrintTenArgs", print_ten);
  HYPERLIGHT_REGISTER_FUNCTION("PrintElevenArgs", print_eleven);
  HYPERLIGHT_REGISTER_FUNCTION("GuestAbortWithCode", abort_with_code);
  HYPERLIGHT_REGISTER_FUNCTION("GuestAbortWithMessage", abort_with_message);
  HYPERLIGHT_REGISTER_FUNCTION("SetError", set_error);
  HYPERLIGHT_REGISTER_FUNCTION("StackOverflow", stack_overflow);
  HYPERLIGHT_REGISTER_FUNCTION("ExecuteOnStack", execute_on_stack);
  HYPERLIGHT_REGISTER_FUNCTION("ExecuteOnHeap", execute_on_heap);
  HYPERLIGHT_REGISTER_FUNCTION("LogMessage", log_message);
  HYPERLIGHT_REGISTER_FUNCTION("HostAddInt", host_add_int);
  HYPERLIGHT_REGISTER_FUNCTION("HostUInt", host_uint);
  HYPERLIGHT_REGISTER_FUNCTION("HostLong", host_long);
  HYPERLIGHT_REGISTER_FUNCTION("HostULong", host_ulong);
  HYPERLIGHT_REGISTER_FUNCTION("GuestRetrievesFloatValue", host_add_float);
  HYPERLIGHT_REGISTER_FUNCTION("GuestRetrievesDoubleValue", host_add_double);
  HYPERLIGHT_REGISTER_FUNCTION("GuestRetrievesBoolValue", host_bool);
  HYPERLIGHT_REGISTER_FUNCTION("GuestRetrievesStringValue", host_string);
  HYPERLIGHT_REGISTER_FUNCTION("HostVoid", host_void);
  HYPERLIGHT_REGISTER_FUNCTION("CallRaisingHost", call_raising_host);
}

/* For names the guest did not register. */
hl_Vec *c_guest_dispatch_function(const hl_FunctionCall *call) {
  if (strcmp(call->function_name, "ThisIsNotARealFunctionButTheNameIsImportant") == 0)
    return hl_flatbuffer_result_from_Int(99);
  if (strcmp(call->function_name, "SumOfInts") == 0) {
    int64_t sum = 0;
    for (uintptr_t i = 0; i < call->parameters_len; i++) {
      if (call->parameters[i].tag != hl_ParameterType_Int) return NULL;
      sum += call->parameters[i].value.Int;
    }
    return hl_flatbuffer_result_from_Long(sum);
  }
  return NULL;
}
