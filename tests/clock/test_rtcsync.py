"""``rtcsync`` / the kernel's 11-minute mode (issue 16 item 5), against the fake adjtimex:
the status bits ntpy writes when synchronized and not, with rtcsync on and off. The host's
adjtimex is never reached (conftest.py replaces ctypes.CDLL)."""

from __future__ import annotations

import pytest
from clockfakes import FakeLibc

from ntpy.clock import SystemClock
from ntpy.clock import timex as tx
from ntpy.config import parse_text
from ntpy.core.system import SystemState
from ntpy.daemon.kernelsync import KernelSyncStatus, describe_rtc, kernel_synchronised

MS = 1_000_000


def _state() -> SystemState:
    return SystemState(
        leap=0,
        stratum=3,
        refid=0x7F000001,
        reference_ns=1_000 * 10**9,
        root_delay_ns=10 * MS,
        root_dispersion_ns=2 * MS,
        precision=-20,
    )


@pytest.mark.parametrize(
    ("rtcsync", "synced", "unsync_bit"),
    [(True, True, False), (True, False, True), (False, True, True), (False, False, True)],
)
def test_status_bits_written(rtcsync: bool, synced: bool, unsync_bit: bool) -> None:
    libc = FakeLibc(kernel={})
    clock = SystemClock(libc, adjustable=True)
    KernelSyncStatus(clock, rtcsync).update(synced, _state(), 1_000 * 10**9)
    (call,) = libc.calls
    assert call["modes"] == tx.ADJ_STATUS | tx.ADJ_ESTERROR | tx.ADJ_MAXERROR
    assert bool(call["status"] & tx.STA_UNSYNC) is unsync_bit
    assert kernel_synchronised(synced, rtcsync) is not unsync_bit
    if not unsync_bit:  # root delay / 2 + root dispersion, in us
        assert call["maxerror"] == 7000 and call["esterror"] == 2000


def test_losing_sync_sets_the_bit_again_and_keeps_leap_bits() -> None:
    libc = FakeLibc(kernel={})
    clock = SystemClock(libc, adjustable=True)
    clock.set_leap(1)
    status = KernelSyncStatus(clock, rtcsync=True)
    status.update(True, _state(), 1_000 * 10**9)
    status.update(False, _state(), 1_000 * 10**9)
    first, second = libc.calls[-2:]
    assert not first["status"] & tx.STA_UNSYNC and first["status"] & tx.STA_INS
    assert second["status"] & tx.STA_UNSYNC and second["status"] & tx.STA_INS


def test_directive_default_on_and_off() -> None:
    assert parse_text("server 127.127.1.0\n").config.rtcsync is True
    assert parse_text("rtcsync\n").config.rtcsync is True
    assert parse_text("rtcsync off\n").config.rtcsync is False


def test_log_lines() -> None:
    assert "virtual clock (-x)" in describe_rtc(system_clock=False, disciplining=True, rtcsync=True)
    assert "11-minute" in describe_rtc(system_clock=True, disciplining=True, rtcsync=True)
    assert "rtcsync off" in describe_rtc(system_clock=True, disciplining=True, rtcsync=False)
    assert "no upstreams" in describe_rtc(system_clock=True, disciplining=False, rtcsync=True)
