/* hyperlight_guest.h - Hyperlight's C guest API, on the hlsandbox SDK.
 *
 * Written for hlsandbox from the API's documented shape (the names, types
 * and macros a Hyperlight C guest uses), so that such guests compile
 * unchanged with `python3 -m hlsandbox build --api hyperlight`. The layer is
 * hyperlight.c; docs/guests.md ("Hyperlight's C API") lists where behaviour
 * differs from Hyperlight's. */
#ifndef HYPERLIGHT_GUEST_H
#define HYPERLIGHT_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOG(level, message) hl_log(level, message, __LINE__, __FILE__)

typedef enum hl_ParameterType {
  hl_ParameterType_Int,
  hl_ParameterType_UInt,
  hl_ParameterType_Long,
  hl_ParameterType_ULong,
  hl_ParameterType_Float,
  hl_ParameterType_Double,
  hl_ParameterType_String,
  hl_ParameterType_Bool,
  hl_ParameterType_VecBytes,
} hl_ParameterType;

typedef enum hl_ReturnType {
  hl_ReturnType_Int,
  hl_ReturnType_UInt,
  hl_ReturnType_Long,
  hl_ReturnType_ULong,
  hl_ReturnType_Float,
  hl_ReturnType_Double,
  hl_ReturnType_String,
  hl_ReturnType_Bool,
  hl_ReturnType_Void,
  hl_ReturnType_VecBytes,
} hl_ReturnType;

/* Hyperlight's error codes (hl_set_error). */
typedef enum hl_ErrorCode {
  hl_ErrorCode_NoError = 0,
  hl_ErrorCode_UnsupportedParameterType = 2,
  hl_ErrorCode_GuestFunctionNameNotProvided = 3,
  hl_ErrorCode_GuestFunctionNotFound = 4,
  hl_ErrorCode_GuestFunctionIncorrecNoOfParameters = 5,
  hl_ErrorCode_GispatchFunctionPointerNotSet = 6,
  hl_ErrorCode_OutbError = 7,
  hl_ErrorCode_UnknownError = 8,
  hl_ErrorCode_GsCheckFailed = 10,
  hl_ErrorCode_TooManyGuestFunctions = 11,
  hl_ErrorCode_FailureInDlmalloc = 12,
  hl_ErrorCode_MallocFailed = 13,
  hl_ErrorCode_GuestFunctionParameterTypeMismatch = 14,
  hl_ErrorCode_GuestError = 15,
  hl_ErrorCode_ArrayLengthParamIsMissing = 16,
  hl_ErrorCode_HostFunctionError = 17,
} hl_ErrorCode;

/* Log levels, numbered as Rust's `log` crate numbers them. */
typedef enum hl_Level {
  hl_Level_Error = 1,
  hl_Level_Warn,
  hl_Level_Info,
  hl_Level_Debug,
  hl_Level_Trace,
} hl_Level;

/* Bytes: a parameter's (valid during the call) or a result's (heap). */
typedef struct hl_Vec {
  uint8_t *data;
  uintptr_t len;
} hl_Vec;

typedef union hl_ParameterValue {
  int32_t Int;
  uint32_t UInt;
  int64_t Long;
  uint64_t ULong;
  float Float;
  double Double;
  bool Bool;
  char *String;
  hl_Vec VecBytes;
} hl_ParameterValue;

typedef struct hl_Parameter {
  hl_ParameterType tag;
  hl_ParameterValue value;
} hl_Parameter;

typedef struct hl_FunctionCall {
  const char *function_name;
  const hl_Parameter *parameters;
  uintptr_t parameters_len;
  hl_ReturnType return_type;
} hl_FunctionCall;

/* A guest function: returns its result as made by hl_flatbuffer_result_from_*. */
typedef hl_Vec *(*hl_GuestFunc)(const hl_FunctionCall *function_call);

/* Registers a guest function (call from hyperlight_main). */
void hl_register_function_definition(const char *function_name, hl_GuestFunc func_ptr, uintptr_t param_no,
                                     const hl_ParameterType *params_type, hl_ReturnType return_type);

/* Results of guest functions. */
hl_Vec *hl_flatbuffer_result_from_Int(int32_t value);
hl_Vec *hl_flatbuffer_result_from_UInt(uint32_t value);
hl_Vec *hl_flatbuffer_result_from_Long(int64_t value);
hl_Vec *hl_flatbuffer_result_from_ULong(uint64_t value);
hl_Vec *hl_flatbuffer_result_from_Float(float value);
hl_Vec *hl_flatbuffer_result_from_Double(double value);
hl_Vec *hl_flatbuffer_result_from_Void(void);
hl_Vec *hl_flatbuffer_result_from_String(const char *value);
hl_Vec *hl_flatbuffer_result_from_Bytes(const uint8_t *data, size_t len);
hl_Vec *hl_flatbuffer_result_from_Bool(bool value);

/* Calls a host function; read its result with the getter of its return type. */
void hl_call_host_function(const hl_FunctionCall *function_call);
int32_t hl_get_host_return_value_as_Int(void);
uint32_t hl_get_host_return_value_as_UInt(void);
int64_t hl_get_host_return_value_as_Long(void);
uint64_t hl_get_host_return_value_as_ULong(void);
bool hl_get_host_return_value_as_Bool(void);
float hl_get_host_return_value_as_Float(void);
double hl_get_host_return_value_as_Double(void);
const char *hl_get_host_return_value_as_String(void);
hl_Vec *hl_get_host_return_value_as_VecBytes(void);

/* Errors and aborts. */
void hl_set_error(hl_ErrorCode err, const char *message);
void hl_abort_with_code(int32_t err);
void hl_abort_with_code_and_message(int32_t err, const char *message);

void hl_log(hl_Level level, const char *message, int32_t line, const char *file);

/* The guest defines these. c_guest_dispatch_function is optional here: it is
 * called for a name the guest did not register and returns NULL to refuse. */
void hyperlight_main(void);
hl_Vec *c_guest_dispatch_function(const hl_FunctionCall *function_call) __attribute__((weak));

/* HYPERLIGHT_WRAP_FUNCTION(function, ReturnType, N, ParamType1, ... ParamTypeN)
 * defines _call_<function>, which unpacks N (0 to 11) parameters, calls the
 * function and wraps its result; HYPERLIGHT_REGISTER_FUNCTION(name, function)
 * registers it. Types are the variant names: Int, UInt, Long, ULong, Float,
 * Double, String, Bool, VecBytes (parameters only). */
#define HYPERLIGHT_WRAP_FUNCTION(function, return_type, paramsc, ...) \
  HL__WRAP_##paramsc(function, return_type, __VA_ARGS__)

#define HYPERLIGHT_REGISTER_FUNCTION(name, function)                                                   \
  hl_register_function_definition(name, &_call_##function, _##function##_parameter_count,            \
                                  _##function##_parameter_types, _##function##_return_type)

#define HL__ARG(i, type) function_call->parameters[i].value.type
#define HL__WRAP(fn, ret, n, call_args, ...)                                    \
  hl_Vec *_call_##fn(const hl_FunctionCall *function_call) {                    \
    (void)function_call;                                                        \
    return hl_flatbuffer_result_from_##ret(fn call_args);                       \
  }                                                                             \
  uintptr_t _##fn##_parameter_count = n;                                        \
  hl_ReturnType _##fn##_return_type = hl_ReturnType_##ret;                      \
  hl_ParameterType _##fn##_parameter_types[] = {__VA_ARGS__};
#define HL__WRAP_0(fn, ret, ...) HL__WRAP(fn, ret, 0, (), (hl_ParameterType)0)
#define HL__WRAP_1(fn, ret, t1) HL__WRAP(fn, ret, 1, (HL__ARG(0, t1)), hl_ParameterType_##t1)
#define HL__WRAP_2(fn, ret, t1, t2) HL__WRAP(fn, ret, 2, (HL__ARG(0, t1), HL__ARG(1, t2)), hl_ParameterType_##t1, hl_ParameterType_##t2)
#define HL__WRAP_3(fn, ret, t1, t2, t3) HL__WRAP(fn, ret, 3, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3)
#define HL__WRAP_4(fn, ret, t1, t2, t3, t4) HL__WRAP(fn, ret, 4, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4)
#define HL__WRAP_5(fn, ret, t1, t2, t3, t4, t5) HL__WRAP(fn, ret, 5, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5)
#define HL__WRAP_6(fn, ret, t1, t2, t3, t4, t5, t6) HL__WRAP(fn, ret, 6, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6)
#define HL__WRAP_7(fn, ret, t1, t2, t3, t4, t5, t6, t7) HL__WRAP(fn, ret, 7, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6), HL__ARG(6, t7)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6, hl_ParameterType_##t7)
#define HL__WRAP_8(fn, ret, t1, t2, t3, t4, t5, t6, t7, t8) HL__WRAP(fn, ret, 8, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6), HL__ARG(6, t7), HL__ARG(7, t8)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6, hl_ParameterType_##t7, hl_ParameterType_##t8)
#define HL__WRAP_9(fn, ret, t1, t2, t3, t4, t5, t6, t7, t8, t9) HL__WRAP(fn, ret, 9, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6), HL__ARG(6, t7), HL__ARG(7, t8), HL__ARG(8, t9)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6, hl_ParameterType_##t7, hl_ParameterType_##t8, hl_ParameterType_##t9)
#define HL__WRAP_10(fn, ret, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10) HL__WRAP(fn, ret, 10, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6), HL__ARG(6, t7), HL__ARG(7, t8), HL__ARG(8, t9), HL__ARG(9, t10)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6, hl_ParameterType_##t7, hl_ParameterType_##t8, hl_ParameterType_##t9, hl_ParameterType_##t10)
#define HL__WRAP_11(fn, ret, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11) HL__WRAP(fn, ret, 11, (HL__ARG(0, t1), HL__ARG(1, t2), HL__ARG(2, t3), HL__ARG(3, t4), HL__ARG(4, t5), HL__ARG(5, t6), HL__ARG(6, t7), HL__ARG(7, t8), HL__ARG(8, t9), HL__ARG(9, t10), HL__ARG(10, t11)), hl_ParameterType_##t1, hl_ParameterType_##t2, hl_ParameterType_##t3, hl_ParameterType_##t4, hl_ParameterType_##t5, hl_ParameterType_##t6, hl_ParameterType_##t7, hl_ParameterType_##t8, hl_ParameterType_##t9, hl_ParameterType_##t10, hl_ParameterType_##t11)

#endif
