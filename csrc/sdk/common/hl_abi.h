/* hl_abi.h - the one home of the guest ABI's numbers (docs/abi.md).
 *
 * Read by both guest runtimes (sdk/amd64, sdk/i686), by the host's Cython
 * code through hlsandbox/abi.pxd (`cdef extern from`), and exposed to Python
 * as IntEnums in hlsandbox.abi. To add a constant: add it here, name it in
 * abi.pxd, and (for Python) in the matching IntEnum of abi.pyx; plain C
 * (enums and integer macros only), valid for -m32 and amd64 alike. */
#ifndef HL_ABI_H
#define HL_ABI_H

/* Ports of `out imm8, al` (docs/abi.md, "Execution model"). */
enum hl_port {
  HL_PORT_LOG = 99,
  HL_PORT_CALL_FUNCTION = 101,
  HL_PORT_ABORT = 102,
  HL_PORT_PRINT = 103,
  HL_PORT_HALT = 108,
  HL_PORT_FAULT = 110, /* CPL0 fault stubs only: not in the I/O bitmap */
};

/* Record kinds (docs/abi.md, "Record kinds and payloads"). */
enum hl_record_kind {
  HL_REC_CALL = 1,
  HL_REC_RETURN = 2,
  HL_REC_ERROR = 3,
  HL_REC_LOG = 4,
  HL_REC_PRINT = 5,
  HL_REC_FUNCTION_TABLE = 6,
  HL_REC_RAW_CALL = 7,
  HL_REC_RAW_RESULT = 8,
};

/* A record: header (u32 length, u8 kind, 3 reserved), padded payload, u64
 * back-pointer; a buffer starts with its u64 top. */
enum hl_record_layout {
  HL_RECORD_HEADER = 8,
  HL_RECORD_BACK_POINTER = 8,
  HL_BUFFER_EMPTY_TOP = 8,
};

/* Value tags (docs/abi.md, "Values"). */
enum hl_value_tag {
  HL_TAG_VOID = 0,
  HL_TAG_I32 = 1,
  HL_TAG_U32 = 2,
  HL_TAG_I64 = 3,
  HL_TAG_U64 = 4,
  HL_TAG_F32 = 5,
  HL_TAG_F64 = 6,
  HL_TAG_BOOL = 7,
  HL_TAG_STR = 8,
  HL_TAG_BYTES = 9,
};

/* Error codes of ERROR records (docs/abi.md, "Error codes"). */
enum hl_error_code {
  HL_ERR_GENERIC = 1,
  HL_ERR_FUNCTION_NOT_FOUND = 2,
  HL_ERR_PARAMETER_MISMATCH = 3,
  HL_ERR_HOST_FUNCTION = 4,
  HL_ERR_HOST_FUNCTION_NOT_FOUND = 5,
  HL_ERR_MALFORMED = 6,
};

/* RAW_RESULT statuses (docs/abi.md, "Raw host calls"); 6 is the guest's own
 * verdict on a malformed reply, as for typed calls. */
enum hl_raw_status {
  HL_RAW_OK = 0,
  HL_RAW_UNKNOWN_ID = 1,
  HL_RAW_RAISED = 2,
  HL_RAW_TOO_LARGE = 3,
  HL_RAW_MALFORMED = 6,
};

/* Built-in raw host functions (docs/abi.md, "Built-in raw host functions"). */
enum hl_raw_builtin {
  HL_RAW_FN_CLOCK = (int)0xFFFFFF01u, /* read as u32 */
};

/* Log levels (Hyperlight's numbering); HL_LOG_NONE: the host wants none. */
enum hl_log_level {
  HL_LOG_TRACE = 0,
  HL_LOG_DEBUG = 1,
  HL_LOG_INFO = 2,
  HL_LOG_WARNING = 3,
  HL_LOG_ERROR = 4,
  HL_LOG_CRITICAL = 5,
  HL_LOG_NONE = 6,
};

/* The PEB: a page of u64 fields; HL_PEB_* are indices in u64 units
 * (docs/abi.md, "PEB"). */
enum hl_peb_field {
  HL_PEB_MAGIC_F = 0,
  HL_PEB_VERSION = 1,
  HL_PEB_INPUT_ADDR = 2,
  HL_PEB_INPUT_SIZE = 3,
  HL_PEB_OUTPUT_ADDR = 4,
  HL_PEB_OUTPUT_SIZE = 5,
  HL_PEB_HEAP_ADDR = 6,
  HL_PEB_HEAP_SIZE = 7,
  HL_PEB_STACK_TOP = 8,
  HL_PEB_STACK_SIZE = 9,
  HL_PEB_CODE_ADDR = 10,
  HL_PEB_CODE_SIZE = 11,
  HL_PEB_MEMORY_SIZE = 12,
  HL_PEB_SCRATCH_ADDR = 13,
  HL_PEB_SCRATCH_SIZE = 14,
  HL_PEB_COUNTER_ADDR = 15, /* offset 120: the GuestCounter's address */
  HL_PEB_PROFILE = 16,      /* offset 128 */
  HL_PEB_FIELDS = 17,
};

#define HL_PEB_MAGIC 0x0142455050424c48ULL /* the bytes "HLBPPEB\x01" */
#define HL_PEB_MAGIC_LO 0x50424c48u
#define HL_PEB_MAGIC_HI 0x01424550u
#define HL_ABI_VERSION 2

enum hl_profile {
  HL_PROFILE_AMD64 = 0,
  HL_PROFILE_I686 = 1,
};

#endif
