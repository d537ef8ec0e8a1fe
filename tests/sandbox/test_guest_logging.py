"""Guest log records reach Python logging at the guest's level, filtered in the guest."""
from __future__ import annotations

import logging

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm

LEVELS = [(0, 5), (1, logging.DEBUG), (2, logging.INFO), (3, logging.WARNING), (4, logging.ERROR),
          (5, logging.CRITICAL)]


def guest_records(caplog):
    return [r for r in caplog.records if r.name == "hlsandbox.guest"]


def test_levels_map_to_python_levels(caplog):
    caplog.set_level(1, logger="hlsandbox.guest")
    with make_sandbox() as sb:
        for guest_level, _ in LEVELS:
            sb.call("LogMessage", f"message at {guest_level}", guest_level)
    recs = guest_records(caplog)
    assert [(r.getMessage(), r.levelno) for r in recs] == [(f"message at {g}", p) for g, p in LEVELS]
    assert recs[0].levelname == "TRACE"
    assert recs[0].guest_source.endswith("simpleguest.c") and recs[0].guest_line > 0
    assert [r.guest_level for r in recs] == [g for g, _ in LEVELS]


def test_configured_level_filters_in_the_guest(caplog):
    caplog.set_level(1, logger="hlsandbox.guest")
    with make_sandbox(hl.SandboxConfiguration(guest_log_level="warning")) as sb:
        for guest_level, _ in LEVELS:
            sb.call("LogMessage", f"m{guest_level}", guest_level)
    assert [r.getMessage() for r in guest_records(caplog)] == ["m3", "m4", "m5"]


def test_default_level_follows_the_logger(caplog):
    caplog.set_level(logging.ERROR, logger="hlsandbox.guest")
    with make_sandbox() as sb:
        for guest_level, _ in LEVELS:
            sb.call("LogMessage", f"m{guest_level}", guest_level)
    assert [r.getMessage() for r in guest_records(caplog)] == ["m4", "m5"]


def test_none_level_sends_nothing(caplog):
    caplog.set_level(1, logger="hlsandbox.guest")
    with make_sandbox(hl.SandboxConfiguration(guest_log_level="none")) as sb:
        sb.call("LogMessage", "dropped", 5)
    assert guest_records(caplog) == []


def test_out_of_range_levels_are_clamped_or_dropped_by_the_sdk(caplog):
    caplog.set_level(1, logger="hlsandbox.guest")
    with make_sandbox() as sb:
        sb.call("LogMessage", "too high", 99)
        sb.call("LogMessage", "too low", -4)
        assert not sb.poisoned
    # above critical is clamped to critical; below trace is below every threshold
    assert [(r.getMessage(), r.levelno) for r in guest_records(caplog)] == [("too high", logging.CRITICAL)]


def test_unicode_and_long_messages(caplog):
    caplog.set_level(logging.INFO, logger="hlsandbox.guest")
    long = "ü" * 40_000  # 80 KB encoded: more than the output buffer, so truncated, still UTF-8
    with make_sandbox(hl.SandboxConfiguration(input_data_size="128Ki")) as sb:
        sb.call("LogMessage", "grüße ✓", 2)
        sb.call("LogMessage", long, 2)
    msgs = [r.getMessage() for r in guest_records(caplog)]
    assert msgs[0] == "grüße ✓"
    assert 0 < len(msgs[1]) < len(long) and set(msgs[1]) == {"ü"}


def test_records_carry_the_guest_location_in_their_own_fields(caplog):
    caplog.set_level(1, logger="hlsandbox.guest")
    with make_sandbox() as sb:
        sb.call("LogMessage", "located", 3)
    (r,) = guest_records(caplog)
    assert r.pathname == r.guest_source and r.pathname.endswith("simpleguest.c")
    assert r.filename == "simpleguest.c"
    assert r.lineno == r.guest_line > 0
    assert logging.Formatter("%(filename)s:%(lineno)d %(message)s").format(r) == \
        f"simpleguest.c:{r.guest_line} located"
