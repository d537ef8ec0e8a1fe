"""hlsandbox.abi exposes every constant of the ABI header (csrc/sdk/common/hl_abi.h)."""
from __future__ import annotations

import re
from pathlib import Path

from hlsandbox import abi, sdk

# enum name in the header → (IntEnum, the prefix its members drop)
ENUMS = {
    "hl_port": (abi.Port, "HL_PORT_"),
    "hl_record_kind": (abi.RecordKind, "HL_REC_"),
    "hl_value_tag": (abi.ValueTag, "HL_TAG_"),
    "hl_error_code": (abi.ErrorCode, "HL_ERR_"),
    "hl_raw_status": (abi.RawStatus, "HL_RAW_"),
    "hl_raw_builtin": (abi.RawBuiltin, "HL_RAW_FN_"),
    "hl_log_level": (abi.LogLevel, "HL_LOG_"),
    "hl_peb_field": (abi.PebField, "HL_PEB_"),
    "hl_profile": (abi.Profile, "HL_PROFILE_"),
}


def _header_enums() -> dict[str, dict[str, int]]:
    text = (sdk.sdk_root() / "common" / "hl_abi.h").read_text()
    out = {}
    for name, body in re.findall(r"enum (\w+) \{(.*?)\};", text, re.S):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        out[name] = {m[0]: int(m[1], 0) & 0xFFFFFFFF
                     for m in re.findall(r"(\w+) = (?:\(int\))?(0x[0-9A-Fa-f]+|\d+)u?", body)}
    return out


def test_every_header_enum_is_exposed_with_its_values():
    header = _header_enums()
    assert set(ENUMS) <= set(header)
    for cname, (enum, prefix) in ENUMS.items():
        want = {k[len(prefix):]: v for k, v in header[cname].items()
                if k not in ("HL_PEB_FIELDS", "HL_PEB_MAGIC_F")}
        got = {m.name: m.value for m in enum if m.name != "MAGIC"}
        assert got == want, cname


def test_peb_constants():
    assert abi.PEB_MAGIC.to_bytes(8, "little") == b"HLBPPEB\x01"
    assert abi.COUNTER_OFFSET == 120 and abi.PebField.PROFILE * 8 == 128
    assert abi.PEB_FIELDS == len(abi.PebField)


def test_the_header_ships_with_the_sdk():
    assert any((Path(d) / "hl_abi.h").is_file() for d in sdk.include_dirs())
