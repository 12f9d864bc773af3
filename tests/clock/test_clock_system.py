"""SystemClock against a fake libc: each struct timex is decoded from its bytes and checked.

Nothing here reaches the host's adjtimex: conftest.py replaces ctypes.CDLL for every test,
and the first test proves that guard is in force.
"""

from __future__ import annotations

import ctypes
import errno
import time

import pytest
from clockfakes import IS_LP64, FakeLibc, RealLibcForbidden, forbidden_cdll

from ntpy.clock import Clock, ClockError, SystemClock, choose_clock
from ntpy.clock import timex as tx

pytestmark = pytest.mark.skipif(not IS_LP64, reason="byte decoding assumes the LP64 layout")

S = 1_000_000_000


def make(**kernel: int) -> tuple[SystemClock, FakeLibc]:
    libc = FakeLibc(kernel=dict(kernel))
    return SystemClock(libc, adjustable=True), libc


def test_real_libc_is_never_loaded_by_these_tests() -> None:
    assert ctypes.CDLL is forbidden_cdll
    with pytest.raises(RealLibcForbidden):
        SystemClock()
    with pytest.raises(RealLibcForbidden):
        choose_clock("system", cap_sys_time=True)
    with pytest.raises(RealLibcForbidden):
        choose_clock("auto", cap_sys_time=True)


def test_is_a_clock_reading_realtime() -> None:
    clock, libc = make()
    assert isinstance(clock, Clock)
    assert clock.name == "system"
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    now = clock.now_ns()
    after = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert before <= now <= after
    assert clock.from_realtime_ns(123_456_789) == 123_456_789
    assert clock.can_adjust()
    assert libc.calls == []  # reading time needs no adjtimex


def test_struct_size_is_the_c_layout() -> None:
    assert ctypes.sizeof(tx.Timex) == 208
    _, libc = make()
    assert libc.raw == []


@pytest.mark.parametrize(
    ("offset_ns", "sec", "nsec"),
    [
        (1_500_000_000, 1, 500_000_000),
        (-1, -1, 999_999_999),
        (-1_500_000_000, -2, 500_000_000),
        (0, 0, 0),
        (7 * S, 7, 0),
        (-7 * S, -7, 0),
    ],
)
def test_step_uses_setoffset_with_nanoseconds(offset_ns: int, sec: int, nsec: int) -> None:
    clock, libc = make()
    seen: list[int] = []
    clock.add_step_handler(seen.append)
    clock.step(offset_ns)
    (call,) = libc.calls
    assert call["modes"] == tx.ADJ_SETOFFSET | tx.ADJ_NANO == 0x2100
    assert (call["tv_sec"], call["tv_usec"]) == (sec, nsec)
    assert call["tv_sec"] * S + call["tv_usec"] == offset_ns
    assert seen == [offset_ns]


def test_failed_step_is_a_clock_error_and_handlers_are_not_told() -> None:
    clock, libc = make()
    libc.fail_errno = errno.EPERM
    seen: list[int] = []
    clock.add_step_handler(seen.append)
    with pytest.raises(ClockError, match="CAP_SYS_TIME") as info:
        clock.step(S)
    assert info.value.errno == errno.EPERM
    assert "adjtimex(modes=0x2100)" in str(info.value)
    assert seen == []


def test_other_errno_is_reported_plainly() -> None:
    clock, libc = make()
    libc.fail_errno = errno.EINVAL
    with pytest.raises(ClockError, match="Invalid argument") as info:
        clock.set_frequency_ppb(1.0)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("offset_ns", "usec"),
    [
        (2_500_400, 2500),
        (-2_500_600, -2501),
        (499, 0),
        (500, 1),
        (-500, -1),
        (2145 * S, 2145 * 10**6),
    ],
)
def test_hand_off_slew_is_singleshot_in_microseconds(offset_ns: int, usec: int) -> None:
    clock, libc = make()
    clock.hand_off_slew(offset_ns)
    (call,) = libc.calls
    assert call["modes"] == tx.ADJ_OFFSET_SINGLESHOT == 0x8001
    assert call["offset"] == usec


def test_slew_beyond_adjtime_range_is_refused_before_any_call() -> None:
    clock, libc = make()
    for slew in (clock.slew, clock.hand_off_slew):
        with pytest.raises(ValueError, match="step instead"):
            slew(2146 * S)
        with pytest.raises(TypeError):
            slew(0.5)  # type: ignore[arg-type]
    assert libc.calls == []


def test_served_time_is_cooked_so_no_slew_is_left_unserved() -> None:
    clock, libc = make(offset=-1234)
    assert clock.remaining_slew_ns() == 0
    assert libc.calls == []


@pytest.mark.parametrize(
    ("ppb", "freq"),
    [
        (1000.0, 65536),
        (-1000.0, -65536),
        (12_345.6, round(12_345.6 * 65.536)),
        (500_000, 500 << 16),
    ],
)
def test_frequency_is_ppm_scaled_by_2_16(ppb: float, freq: int) -> None:
    clock, libc = make()
    clock.set_frequency_ppb(ppb)
    (call,) = libc.calls
    # Tick and frequency are written together (a slew may have changed both); the
    # reported time is asked for in ns (ADJ_NANO): it dates the change.
    assert call["modes"] == tx.ADJ_TICK | tx.ADJ_FREQUENCY | tx.ADJ_NANO
    assert call["tick"] == 10_000
    assert call["freq"] == freq


@pytest.mark.parametrize("bad", [500_001.0, -600_000.0, float("nan"), float("inf")])
def test_frequency_beyond_kernel_range_is_refused(bad: float) -> None:
    clock, libc = make()
    with pytest.raises(ValueError, match="frequency"):
        clock.set_frequency_ppb(bad)
    assert libc.calls == []


def test_frequency_is_read_with_modes_zero() -> None:
    clock, libc = make(freq=-3 * 65536 // 2)
    assert clock.frequency_ppb() == -1500.0
    assert [c["modes"] for c in libc.calls] == [0]


def test_status_decodes_the_kernel_view() -> None:
    clock, libc = make(
        status=tx.STA_NANO | tx.STA_INS,
        maxerror=16_000,
        esterror=250,
        freq=65536,
        offset=-7,
        tai=37,
    )
    libc.state = tx.TIME_INS
    st = clock.status()
    assert [c["modes"] for c in libc.calls] == [0]
    assert st.state == tx.TIME_INS
    assert st.synchronised
    assert st.maxerror_ns == 16_000_000
    assert st.esterror_ns == 250_000
    assert st.frequency_ppb == 1000.0
    assert st.pll_offset_ns == -7
    assert st.tai_offset_s == 37
    unsynced, _ = make(status=tx.STA_UNSYNC, offset=-7)
    st2 = unsynced.status()
    assert not st2.synchronised
    assert st2.pll_offset_ns == -7000  # microseconds without STA_NANO
    errored, lib3 = make(status=0)
    lib3.state = tx.TIME_ERROR
    assert not errored.status().synchronised


def test_set_sync_status_synchronised() -> None:
    clock, libc = make()
    clock.set_sync_status(True, est_error_ns=1_234_567, max_error_ns=5_000_000)
    (call,) = libc.calls
    assert call["modes"] == tx.ADJ_STATUS | tx.ADJ_ESTERROR | tx.ADJ_MAXERROR == 0x1C
    assert not call["status"] & tx.STA_UNSYNC
    assert call["esterror"] == 1235  # us, rounded up
    assert call["maxerror"] == 5000


def test_set_sync_status_unsynchronised_and_capped() -> None:
    clock, libc = make()
    clock.set_sync_status(False, est_error_ns=1000, max_error_ns=1000)
    clock.set_sync_status(True, est_error_ns=1000, max_error_ns=20 * S)  # too large: unsync
    clock.set_sync_status(True, est_error_ns=30 * S, max_error_ns=1_000_000)
    first, second, third = libc.calls
    for call in (first, second):
        assert call["status"] & tx.STA_UNSYNC
        assert call["esterror"] == call["maxerror"] == 16_000_000
    assert not third["status"] & tx.STA_UNSYNC
    assert third["esterror"] == 16_000_000
    assert third["maxerror"] == 1000
    with pytest.raises(ValueError):
        clock.set_sync_status(True, est_error_ns=-1, max_error_ns=0)


def test_leap_bits_are_kept_across_sync_updates() -> None:
    clock, libc = make()
    clock.set_leap(1)
    clock.set_sync_status(True, 1000, 2000)
    clock.set_leap(-1)
    clock.set_leap(0)
    leap_ins, sync, leap_del, leap_none = libc.calls
    assert leap_ins["modes"] == tx.ADJ_STATUS
    assert leap_ins["status"] == tx.STA_INS | tx.STA_UNSYNC
    assert sync["status"] == tx.STA_INS
    assert leap_del["status"] == tx.STA_DEL
    assert leap_none["status"] == 0
    with pytest.raises(ValueError):
        clock.set_leap(2)


def test_reset_kernel_discipline_clears_pll_then_turns_it_off() -> None:
    clock, libc = make(tick=10_833, freq=7 << 16)
    clock.reset_kernel_discipline()
    first, second, third, *_reads, last = libc.calls
    assert first["modes"] == tx.ADJ_OFFSET | tx.ADJ_STATUS
    assert first["status"] == tx.STA_PLL | tx.STA_UNSYNC
    assert first["offset"] == 0
    assert second["modes"] == tx.ADJ_STATUS
    assert second["status"] == tx.STA_UNSYNC
    # any adjtime() slew cancelled, then the tick put back to nominal, frequency kept
    assert third["modes"] == tx.ADJ_OFFSET_SINGLESHOT and third["offset"] == 0
    assert last["modes"] == tx.ADJ_TICK | tx.ADJ_FREQUENCY | tx.ADJ_NANO
    assert (last["tick"], last["freq"]) == (10_000, 7 << 16)


def test_state_uses_read_only_calls() -> None:
    clock, libc = make(status=tx.STA_UNSYNC, freq=0, offset=0)
    st = clock.state()
    assert st["name"] == "system"
    assert st["synchronised"] is False
    assert {c["modes"] for c in libc.calls} <= {0, tx.ADJ_OFFSET_SS_READ}


def test_libc_without_adjtimex_is_a_clock_error() -> None:
    with pytest.raises(ClockError, match="adjtimex"):
        SystemClock(object(), adjustable=True)  # type: ignore[arg-type]
