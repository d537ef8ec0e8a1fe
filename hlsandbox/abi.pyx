# cython: language_level=3
"""The guest ABI's numbers as IntEnums, read from csrc/sdk/common/hl_abi.h through
abi.pxd at build time: the header is their only home (docs/abi.md)."""
from enum import IntEnum


class Port(IntEnum):
    """Ports of `out imm8, al`."""
    LOG = HL_PORT_LOG
    CALL_FUNCTION = HL_PORT_CALL_FUNCTION
    ABORT = HL_PORT_ABORT
    PRINT = HL_PORT_PRINT
    HALT = HL_PORT_HALT
    FAULT = HL_PORT_FAULT


class RecordKind(IntEnum):
    """The kind byte of a record."""
    CALL = HL_REC_CALL
    RETURN = HL_REC_RETURN
    ERROR = HL_REC_ERROR
    LOG = HL_REC_LOG
    PRINT = HL_REC_PRINT
    FUNCTION_TABLE = HL_REC_FUNCTION_TABLE
    RAW_CALL = HL_REC_RAW_CALL
    RAW_RESULT = HL_REC_RAW_RESULT


class ValueTag(IntEnum):
    """The tag byte of a value."""
    VOID = HL_TAG_VOID
    I32 = HL_TAG_I32
    U32 = HL_TAG_U32
    I64 = HL_TAG_I64
    U64 = HL_TAG_U64
    F32 = HL_TAG_F32
    F64 = HL_TAG_F64
    BOOL = HL_TAG_BOOL
    STR = HL_TAG_STR
    BYTES = HL_TAG_BYTES


class ErrorCode(IntEnum):
    """Codes of ERROR records (guest-defined codes are other numbers)."""
    GENERIC = HL_ERR_GENERIC
    FUNCTION_NOT_FOUND = HL_ERR_FUNCTION_NOT_FOUND
    PARAMETER_MISMATCH = HL_ERR_PARAMETER_MISMATCH
    HOST_FUNCTION = HL_ERR_HOST_FUNCTION
    HOST_FUNCTION_NOT_FOUND = HL_ERR_HOST_FUNCTION_NOT_FOUND
    MALFORMED = HL_ERR_MALFORMED


class RawStatus(IntEnum):
    """Statuses of RAW_RESULT records."""
    OK = HL_RAW_OK
    UNKNOWN_ID = HL_RAW_UNKNOWN_ID
    RAISED = HL_RAW_RAISED
    TOO_LARGE = HL_RAW_TOO_LARGE
    MALFORMED = HL_RAW_MALFORMED


class RawBuiltin(IntEnum):
    """Raw host functions every sandbox answers."""
    CLOCK = <unsigned int>HL_RAW_FN_CLOCK


class LogLevel(IntEnum):
    """Guest log levels (Hyperlight's numbering)."""
    TRACE = HL_LOG_TRACE
    DEBUG = HL_LOG_DEBUG
    INFO = HL_LOG_INFO
    WARNING = HL_LOG_WARNING
    ERROR = HL_LOG_ERROR
    CRITICAL = HL_LOG_CRITICAL
    NONE = HL_LOG_NONE


class PebField(IntEnum):
    """PEB fields, as indices of u64 words (byte offset = 8 * value)."""
    MAGIC = HL_PEB_MAGIC_F
    VERSION = HL_PEB_VERSION
    INPUT_ADDR = HL_PEB_INPUT_ADDR
    INPUT_SIZE = HL_PEB_INPUT_SIZE
    OUTPUT_ADDR = HL_PEB_OUTPUT_ADDR
    OUTPUT_SIZE = HL_PEB_OUTPUT_SIZE
    HEAP_ADDR = HL_PEB_HEAP_ADDR
    HEAP_SIZE = HL_PEB_HEAP_SIZE
    STACK_TOP = HL_PEB_STACK_TOP
    STACK_SIZE = HL_PEB_STACK_SIZE
    CODE_ADDR = HL_PEB_CODE_ADDR
    CODE_SIZE = HL_PEB_CODE_SIZE
    MEMORY_SIZE = HL_PEB_MEMORY_SIZE
    SCRATCH_ADDR = HL_PEB_SCRATCH_ADDR
    SCRATCH_SIZE = HL_PEB_SCRATCH_SIZE
    COUNTER_ADDR = HL_PEB_COUNTER_ADDR
    PROFILE = HL_PEB_PROFILE


class Profile(IntEnum):
    """The PEB's profile field."""
    AMD64 = HL_PROFILE_AMD64
    I686 = HL_PROFILE_I686


PEB_FIELDS = HL_PEB_FIELDS
PEB_MAGIC = HL_PEB_MAGIC
ABI_VERSION = HL_ABI_VERSION
RECORD_HEADER = HL_RECORD_HEADER
COUNTER_OFFSET = 8 * HL_PEB_COUNTER_ADDR  # the PEB's GuestCounter address field
