# The guest ABI's numbers, read from the C header both guest runtimes include
# (csrc/sdk/common/hl_abi.h): the one home of these values. Python code uses the
# IntEnums of hlsandbox.abi; Cython code cimports the names below.

cdef extern from "hl_abi.h":
    enum hl_port:
        HL_PORT_LOG, HL_PORT_CALL_FUNCTION, HL_PORT_ABORT, HL_PORT_PRINT, HL_PORT_HALT, HL_PORT_FAULT

    enum hl_record_kind:
        HL_REC_CALL, HL_REC_RETURN, HL_REC_ERROR, HL_REC_LOG, HL_REC_PRINT, HL_REC_FUNCTION_TABLE,
        HL_REC_RAW_CALL, HL_REC_RAW_RESULT

    enum hl_record_layout:
        HL_RECORD_HEADER, HL_RECORD_BACK_POINTER, HL_BUFFER_EMPTY_TOP

    enum hl_value_tag:
        HL_TAG_VOID, HL_TAG_I32, HL_TAG_U32, HL_TAG_I64, HL_TAG_U64, HL_TAG_F32, HL_TAG_F64, HL_TAG_BOOL,
        HL_TAG_STR, HL_TAG_BYTES

    enum hl_error_code:
        HL_ERR_GENERIC, HL_ERR_FUNCTION_NOT_FOUND, HL_ERR_PARAMETER_MISMATCH, HL_ERR_HOST_FUNCTION,
        HL_ERR_HOST_FUNCTION_NOT_FOUND, HL_ERR_MALFORMED

    enum hl_raw_status:
        HL_RAW_OK, HL_RAW_UNKNOWN_ID, HL_RAW_RAISED, HL_RAW_TOO_LARGE, HL_RAW_MALFORMED

    enum hl_raw_builtin:
        HL_RAW_FN_CLOCK

    enum hl_log_level:
        HL_LOG_TRACE, HL_LOG_DEBUG, HL_LOG_INFO, HL_LOG_WARNING, HL_LOG_ERROR, HL_LOG_CRITICAL, HL_LOG_NONE

    enum hl_peb_field:
        HL_PEB_MAGIC_F, HL_PEB_VERSION, HL_PEB_INPUT_ADDR, HL_PEB_INPUT_SIZE, HL_PEB_OUTPUT_ADDR,
        HL_PEB_OUTPUT_SIZE, HL_PEB_HEAP_ADDR, HL_PEB_HEAP_SIZE, HL_PEB_STACK_TOP, HL_PEB_STACK_SIZE,
        HL_PEB_CODE_ADDR, HL_PEB_CODE_SIZE, HL_PEB_MEMORY_SIZE, HL_PEB_SCRATCH_ADDR, HL_PEB_SCRATCH_SIZE,
        HL_PEB_COUNTER_ADDR, HL_PEB_PROFILE, HL_PEB_FIELDS

    enum hl_profile:
        HL_PROFILE_AMD64, HL_PROFILE_I686

    unsigned long long HL_PEB_MAGIC
    int HL_ABI_VERSION
