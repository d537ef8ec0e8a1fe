"""SandboxConfiguration: size parsing, page rounding, log levels and time limits (no KVM)."""
from __future__ import annotations

import logging
import math

import pytest

import hlsandbox as hl
from hlsandbox.sandbox.config import LOG_LEVELS, parse_size

SIZE_FIELDS = ("heap_size", "stack_size", "input_data_size", "output_data_size")


def test_defaults():
    c = hl.SandboxConfiguration()
    assert c.heap_size == 1 << 20
    assert c.stack_size == 256 << 10
    assert c.input_data_size == 16 << 10
    assert c.output_data_size == 16 << 10
    assert c.guest_log_level is None
    assert c.max_execution_time is None
    assert c.restore_after_call is False


def test_invalid_configuration_is_a_value_error():
    assert issubclass(hl.InvalidConfiguration, ValueError)
    assert issubclass(hl.InvalidConfiguration, hl.HyperlightError)


@pytest.mark.parametrize("text, expected", [
    ("64Ki", 64 << 10),
    ("8Mi", 8 << 20),
    ("1Gi", 1 << 30),
    ("4096", 4096),
    (" 16 Ki ", 16 << 10),
    ("2Mi", 2 << 20),
])
def test_size_strings(text, expected):
    c = hl.SandboxConfiguration(heap_size=text)
    assert c.heap_size == expected


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_int_sizes_for_every_field(field):
    c = hl.SandboxConfiguration(**{field: 3 * 4096})
    assert getattr(c, field) == 3 * 4096


@pytest.mark.parametrize("field, value, expected", [
    ("heap_size", 4097, 8192),
    ("heap_size", 10_000, 12288),
    ("heap_size", "5000", 8192),
    ("stack_size", 8193, 12288),
    ("input_data_size", 4095 + 4096, 8192),
    ("output_data_size", "65537", 69632),
])
def test_sizes_round_up_to_pages(field, value, expected):
    c = hl.SandboxConfiguration(**{field: value})
    assert getattr(c, field) == expected
    assert getattr(c, field) % 4096 == 0


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", ["", "abc", "64KB", "64ki", "1Ti", "-4096", "1.5Mi", "Mi", "0x1000",
                                   "64 Ki B", "4096\n4096"])
def test_bad_size_strings(field, value):
    with pytest.raises(hl.InvalidConfiguration, match=rf"^{field}=.* is not a size"):
        hl.SandboxConfiguration(**{field: value})


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", [0, -1, -4096, "0", "0Ki"])
def test_zero_and_negative_sizes(field, value):
    with pytest.raises(hl.InvalidConfiguration, match=rf"^{field}=.* is outside \["):
        hl.SandboxConfiguration(**{field: value})


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_bool_sizes(field, value):
    with pytest.raises(hl.InvalidConfiguration, match=rf"^{field} must be a size, got {value}"):
        hl.SandboxConfiguration(**{field: value})


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", [4096.0, 1.5, None, b"64Ki", [4096]])
def test_non_int_non_str_sizes(field, value):
    with pytest.raises(hl.InvalidConfiguration,
                       match=rf"^{field} must be an int or a string such as '64Ki', got {type(value).__name__}$"):
        hl.SandboxConfiguration(**{field: value})


@pytest.mark.parametrize("field, too_big, biggest", [
    ("heap_size", "65Gi", 64 << 30),
    ("heap_size", (64 << 30) + 1, 64 << 30),
    ("stack_size", "2Gi", 1 << 30),
    ("input_data_size", (1 << 30) + 1, 1 << 30),
    ("output_data_size", "1025Mi", 1 << 30),
])
def test_too_large(field, too_big, biggest):
    with pytest.raises(hl.InvalidConfiguration, match=rf"^{field}=.* is outside \[\d+, {biggest}\]$"):
        hl.SandboxConfiguration(**{field: too_big})


def test_limits_are_inclusive():
    c = hl.SandboxConfiguration(heap_size="64Gi", stack_size="1Gi", input_data_size="1Gi",
                                output_data_size=1 << 30)
    assert (c.heap_size, c.stack_size, c.input_data_size, c.output_data_size) == (64 << 30, 1 << 30, 1 << 30,
                                                                                 1 << 30)
    c = hl.SandboxConfiguration(heap_size=4096, stack_size=8192, input_data_size=4096, output_data_size=4096)
    assert (c.heap_size, c.stack_size) == (4096, 8192)


@pytest.mark.parametrize("field, value", [("heap_size", 4095), ("stack_size", 4096), ("stack_size", "4Ki"),
                                          ("input_data_size", 1), ("output_data_size", "4095")])
def test_below_minimum(field, value):
    with pytest.raises(hl.InvalidConfiguration, match=rf"^{field}="):
        hl.SandboxConfiguration(**{field: value})


def test_parse_size_message_shows_bytes():
    with pytest.raises(hl.InvalidConfiguration,
                       match=r"^stack_size='4Ki' \(4096 bytes\) is outside \[8192, 1073741824\]$"):
        parse_size("stack_size", "4Ki")
    assert parse_size("heap_size", "5Ki") == 5 << 10  # parse_size itself does not round


@pytest.mark.parametrize("name, level", sorted(LOG_LEVELS.items()))
def test_log_level_names(name, level):
    assert hl.SandboxConfiguration(guest_log_level=name).guest_log_level == level
    assert hl.SandboxConfiguration(guest_log_level=name.upper()).guest_log_level == level


def test_log_level_name_values():
    assert LOG_LEVELS == {"trace": 0, "debug": 1, "info": 2, "information": 2, "warning": 3, "error": 4,
                          "critical": 5, "none": 6}


@pytest.mark.parametrize("level", range(7))
def test_log_level_ints(level):
    assert hl.SandboxConfiguration(guest_log_level=level).guest_log_level == level


@pytest.mark.parametrize("level", ["verbose", "", "warn ", "2"])
def test_bad_log_level_names(level):
    with pytest.raises(hl.InvalidConfiguration, match=r"^guest_log_level=.*: use one of \['critical'"):
        hl.SandboxConfiguration(guest_log_level=level)


@pytest.mark.parametrize("level", [-1, 7, 9, True, False, 2.0, b"info"])
def test_bad_log_level_values(level):
    with pytest.raises(hl.InvalidConfiguration, match=r"^guest_log_level=.*: use 0\.\.6, a level name or a "
                                                      r"logging level"):
        hl.SandboxConfiguration(guest_log_level=level)


@pytest.mark.parametrize("t", [0.001, 1, 2.5, 3600, math.inf])
def test_max_execution_time_ok(t):
    assert hl.SandboxConfiguration(max_execution_time=t).max_execution_time == t


@pytest.mark.parametrize("t", [0, 0.0, -1, -0.5, math.nan, True, False, "1", "1s", [1]])
def test_max_execution_time_bad(t):
    with pytest.raises(hl.InvalidConfiguration,
                       match=r"^max_execution_time=.*: use a positive number of seconds or None$"):
        hl.SandboxConfiguration(max_execution_time=t)


def test_first_bad_field_is_named():
    with pytest.raises(hl.InvalidConfiguration, match="^heap_size"):
        hl.SandboxConfiguration(heap_size=0, stack_size=0)
    with pytest.raises(hl.InvalidConfiguration, match="^output_data_size"):
        hl.SandboxConfiguration(output_data_size="big", guest_log_level="loud")


@pytest.mark.parametrize("field, value", [("heap_size", "abc"), ("heap_size", 0), ("stack_size", True),
                                          ("guest_log_level", "loud"), ("max_execution_time", -1),
                                          ("restore_after_call", "yes"), ("profile", "arm"),
                                          ("scratch_base_gpa", -4096), ("max_wait_time", -1)])
def test_assignment_validates_as_the_constructor_does(field, value):
    c = hl.SandboxConfiguration()
    before = getattr(c, field)
    with pytest.raises(hl.InvalidConfiguration):
        setattr(c, field, value)
    assert getattr(c, field) == before


def test_assignment_normalises_and_unknown_fields_are_refused():
    c = hl.SandboxConfiguration()
    c.heap_size = "8Mi"
    assert c.heap_size == 8 << 20
    c.stack_size = 9000
    assert c.stack_size == 12288
    with pytest.raises(AttributeError, match="heap_sise"):
        c.heap_sise = "8Mi"


@pytest.mark.parametrize("text, expected", [("64KiB", 64 << 10), ("8MiB", 8 << 20), ("1GiB", 1 << 30),
                                            (" 2 MiB ", 2 << 20)])
def test_iec_byte_suffixes(text, expected):
    assert hl.SandboxConfiguration(heap_size=text).heap_size == expected


@pytest.mark.parametrize("text, hint", [("8MB", "write Mi"), ("64KB", "write Ki"), ("1GB", "write Gi"),
                                        ("64kB", "write Ki")])
def test_decimal_units_get_a_hint(text, hint):
    with pytest.raises(hl.InvalidConfiguration, match=hint):
        hl.SandboxConfiguration(heap_size=text)


@pytest.mark.parametrize("py_level, guest_level", [(logging.DEBUG, 1), (logging.INFO, 2), (logging.WARNING, 3),
                                                   (logging.ERROR, 4), (logging.CRITICAL, 5), (15, 2),
                                                   (logging.CRITICAL + 1, 6)])
def test_logging_levels_are_accepted(py_level, guest_level):
    assert hl.SandboxConfiguration(guest_log_level=py_level).guest_log_level == guest_level
