"""SystemClock's fast slew, against the simulator's model of the Linux kernel clock.

``KernelClock(strict=True)`` is the fake adjtimex here: it enforces the kernel's limits
(EINVAL for a tick beyond +/-10%, and -- strict -- for a frequency beyond +/-500 ppm that the
kernel would silently clamp), slews ADJ_OFFSET_SINGLESHOT at 500 ppm, and runs a clock over
a free-running oscillator, so these tests check what the kernel clock actually does.
Nothing here reaches the host (conftest.py forbids loading the real libc).
"""

from __future__ import annotations

import errno

import pytest

from ntpy.clock import ClockError, SystemClock
from ntpy.clock import timex as tx
from ntpy.clock.base import Clock, TimedClock
from ntpy.clock.virtual import served_ns
from ntpy.sim.kernel import KernelClock
from ntpy.sim.oscillator import Oscillator

S = 1_000_000_000
MS = 1_000_000
US = 1_000
T0 = 1_700_000_000 * S


class World:
    """True time, an oscillator, the kernel model and a SystemClock over it."""

    def __init__(self, *, freq_ppb: float = 0.0, max_slew_ppm: float = 83_333.333) -> None:
        self.t = T0
        self.osc = Oscillator(start_ns=T0, freq_ppb=freq_ppb)
        self.kernel = KernelClock(self.osc.read, lambda: self.t, strict=True)
        self.clock = SystemClock(
            self.kernel,
            adjustable=True,
            realtime=self.kernel.read_ns,
            max_slew_ppm=max_slew_ppm,
            precision_log=-20,
        )
        self.clock.reset_kernel_discipline()

    def advance(self, ns: int) -> None:
        self.t += ns

    def served_error(self) -> int:
        return self.clock.now_ns() - self.t

    def kernel_error(self) -> int:
        return self.kernel.read_ns() - self.t

    def run_timer(self) -> None:
        """Wait (in true time) until the clock's timer is due, then run it."""
        due = self.clock.timer_due_in_ns()
        assert due is not None
        self.advance(self.kernel.true_ns_for(due))
        self.clock.on_timer()


# --- the kernel model enforces the kernel's rules ---------------------------------------


def _adjtimex(kernel: KernelClock, **fields: int) -> tuple[int, tx.Timex]:
    import ctypes

    t = tx.Timex()
    for name, value in fields.items():
        if name in ("tv_sec", "tv_usec"):
            setattr(t.time, name, value)
        else:
            setattr(t, name, value)
    ctypes.set_errno(0)
    ret = kernel.adjtimex(ctypes.pointer(t))
    return (ret if ret >= 0 else -ctypes.get_errno()), t


def test_kernel_refuses_a_tick_beyond_ten_percent() -> None:
    k = World().kernel
    assert _adjtimex(k, modes=tx.ADJ_TICK, tick=11_001)[0] == -errno.EINVAL
    assert _adjtimex(k, modes=tx.ADJ_TICK, tick=8_999)[0] == -errno.EINVAL
    assert _adjtimex(k, modes=tx.ADJ_TICK, tick=11_000)[0] >= 0


def test_kernel_clamps_frequency_to_500_ppm_and_strict_refuses_it() -> None:
    w = World()
    k = w.kernel
    assert _adjtimex(k, modes=tx.ADJ_FREQUENCY, freq=501 << 16)[0] == -errno.EINVAL
    k.strict = False
    _ret, t = _adjtimex(k, modes=tx.ADJ_FREQUENCY, freq=600 << 16)
    assert t.freq == 500 << 16


def test_kernel_refuses_bad_setoffset_fraction_and_unprivileged_changes() -> None:
    k = World().kernel
    bad = {"modes": tx.ADJ_SETOFFSET | tx.ADJ_NANO, "tv_sec": 0, "tv_usec": S}
    assert _adjtimex(k, **bad)[0] == -errno.EINVAL
    assert _adjtimex(k, **{**bad, "tv_usec": -1})[0] == -errno.EINVAL
    k.privileged = False
    assert _adjtimex(k, modes=tx.ADJ_FREQUENCY, freq=0)[0] == -errno.EPERM
    assert _adjtimex(k, modes=tx.ADJ_OFFSET_SS_READ)[0] >= 0  # reading needs no privilege


def test_kernel_singleshot_slews_at_500_ppm() -> None:
    w = World()
    _adjtimex(w.kernel, modes=tx.ADJ_OFFSET_SINGLESHOT, offset=100_000)  # 0.1 s
    w.advance(100 * S)
    assert abs(w.kernel_error() - 50 * MS) <= 1 * MS  # 500 us per second
    w.advance(101 * S)
    # 200 chunks of 500 us, each over one *kernel* second, which at +500 ppm is 0.9995 s
    # of the oscillator: the kernel's adjtime() falls short by 0.05%, and so does the model.
    assert abs(w.kernel_error() - 99_950 * US) <= 1 * US
    _ret, t = _adjtimex(w.kernel, modes=tx.ADJ_OFFSET_SS_READ)
    assert t.offset == 0


def test_kernel_pll_decays_an_offset_when_enabled() -> None:
    w = World()
    k = w.kernel
    _adjtimex(k, modes=tx.ADJ_STATUS, status=tx.STA_PLL)
    _adjtimex(k, modes=tx.ADJ_OFFSET | tx.ADJ_NANO, offset=10 * MS)
    w.advance(200 * S)
    assert 5 * MS < w.kernel_error() <= 10 * MS  # exponential: mostly applied
    # Turning the PLL off resets the clock state (and the status, before the new bits).
    k.time_state = tx.TIME_INS
    _adjtimex(k, modes=tx.ADJ_STATUS, status=tx.STA_UNSYNC)
    assert k.time_status == tx.STA_UNSYNC and k.time_state == tx.TIME_OK


def test_kernel_maxerror_grows_until_unsynchronised() -> None:
    w = World()
    k = w.kernel
    _adjtimex(k, modes=tx.ADJ_STATUS | tx.ADJ_MAXERROR, status=0, maxerror=15_999_000)
    assert _adjtimex(k)[0] == tx.TIME_OK
    w.advance(3 * S)
    ret, t = _adjtimex(k)
    assert ret == tx.TIME_ERROR and t.status & tx.STA_UNSYNC and t.maxerror == 16_000_000


# --- SystemClock: fast slew through tick + frequency -----------------------------------------


def test_is_a_timed_clock() -> None:
    clock = World().clock
    assert isinstance(clock, Clock) and isinstance(clock, TimedClock)
    assert clock.timer_due_in_ns() is None


def test_slew_uses_tick_and_frequency_within_kernel_limits_at_max_rate() -> None:
    w = World()
    w.clock.slew(100 * MS)
    k = w.kernel
    assert 9_000 <= k.tick_usec <= 11_000 and k.tick_usec > 10_000
    rate_ppm = (k.tick_usec * 100 - 1_000_000) + (k.time_freq >> 32) / 1000
    assert abs(rate_ppm - 83_333.333) < 0.01  # capped at maxslewrate, not above
    # 0.1 s at 83 333 ppm of the kernel's rate: 1.3 s of kernel time.
    due = w.clock.timer_due_in_ns()
    assert due is not None and 1.29 * S < due < 1.31 * S


def test_served_time_is_cooked_during_the_slew_and_kernel_catches_up() -> None:
    w = World()
    w.clock.slew(100 * MS)
    assert w.served_error() == 100 * MS  # clients get the corrected time at once
    assert w.kernel_error() == 0
    for _ in range(10):
        w.advance(100 * MS)
        assert abs(w.served_error() - 100 * MS) <= 1  # never the half-slewed clock
        assert w.clock.kernel_slew_ns() == w.clock.now_ns() - w.kernel.read_ns()
    w.run_timer()
    assert abs(w.kernel_error() - 100 * MS) <= 2
    assert abs(w.served_error() - 100 * MS) <= 2


def test_slew_end_restores_nominal_tick_and_base_frequency() -> None:
    w = World()
    w.clock.set_frequency_ppb(12_345.0)
    w.clock.slew(-20 * MS)
    assert w.kernel.tick_usec != 10_000
    w.run_timer()
    assert w.kernel.tick_usec == 10_000
    assert w.clock.frequency_ppb() == pytest.approx(12_345.0, abs=0.02)
    assert w.kernel.time_freq == round(12_345.0 * 65.536) * (1000 << 16)
    assert w.clock.timer_due_in_ns() is None


def test_a_late_timer_is_accounted_for_and_slewed_back() -> None:
    w = World()
    w.clock.slew(100 * MS)
    w.advance(3 * S)  # the daemon was busy: the kernel slewed well past its target
    assert w.kernel_error() > 150 * MS
    assert abs(w.served_error() - 100 * MS) <= 1  # served time still exact
    w.clock.on_timer()  # overshoot becomes a slew the other way
    for _ in range(5):
        if w.clock.timer_due_in_ns() is None:
            break
        w.run_timer()
    assert abs(w.kernel_error() - 100 * MS) <= 10
    assert w.kernel.tick_usec == 10_000


def test_small_slews_take_at_least_a_second() -> None:
    w = World()
    w.clock.slew(50 * US)
    due = w.clock.timer_due_in_ns()
    assert due is not None and S <= due <= S + 100 * US  # 1 s of slew in kernel time
    assert w.kernel.tick_usec == 10_000  # 50 ppm fits in the frequency alone


def test_max_slew_rate_is_honoured() -> None:
    w = World(max_slew_ppm=1000.0)
    w.clock.slew(100 * MS)
    due = w.clock.timer_due_in_ns()
    assert due is not None and 100 * S < due < 101 * S  # 0.1 s at 1000 ppm
    w.run_timer()
    assert abs(w.kernel_error() - 100 * MS) <= 2


@pytest.mark.parametrize("bad", [0.0, -1.0, 83_334.0, float("nan")])
def test_max_slew_rate_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="slew rate"):
        SystemClock(KernelClock(lambda t: t, lambda: T0), adjustable=True, max_slew_ppm=bad)


def test_new_slew_during_a_slew_adds_to_what_is_left() -> None:
    w = World()
    w.clock.slew(100 * MS)
    w.advance(500 * MS)
    w.clock.slew(-30 * MS)
    assert abs(w.served_error() - 70 * MS) <= 1
    while w.clock.timer_due_in_ns() is not None:
        w.run_timer()
    assert abs(w.kernel_error() - 70 * MS) <= 10


def test_frequency_change_during_a_slew_keeps_served_time_continuous() -> None:
    w = World()
    w.clock.slew(40 * MS)
    w.advance(200 * MS)
    before = w.served_error()
    w.clock.set_frequency_ppb(-250_000.0)
    assert abs(w.served_error() - before) <= 1
    while w.clock.timer_due_in_ns() is not None:
        w.run_timer()
    # The base rate now runs 250 ppm slow; the kernel reached the served time exactly.
    assert abs(w.kernel.read_ns() - w.clock.now_ns()) <= 1


def test_step_during_a_slew_moves_served_and_kernel_time_and_the_slew_goes_on() -> None:
    w = World()
    w.clock.slew(50 * MS)
    w.advance(100 * MS)
    w.clock.step(-2 * S)
    assert abs(w.served_error() - (50 * MS - 2 * S)) <= 1
    while w.clock.timer_due_in_ns() is not None:
        w.run_timer()
    assert abs(w.kernel_error() - (50 * MS - 2 * S)) <= 10


def test_receive_stamps_from_before_the_slew_get_no_slew_progress() -> None:
    w = World()
    rx = w.kernel.read_ns()
    w.advance(10 * MS)
    w.clock.slew(100 * MS)
    assert w.clock.from_realtime_ns(rx) == rx + 100 * MS


def test_workers_serve_the_same_time_from_the_published_segment() -> None:
    w = World()
    seen: list[tuple[object, int]] = []
    w.clock.add_segment_listener(lambda seg, rate: seen.append((seg, rate)))
    w.clock.slew(80 * MS)
    w.advance(300 * MS)
    seg, rate = seen[-1]
    rt = w.kernel.read_ns()
    assert served_ns(seg, rate, rt) == w.clock.now_ns()  # type: ignore[arg-type]


def test_pll_and_fll_stay_off() -> None:
    w = World()
    w.clock.slew(10 * MS)
    w.clock.set_frequency_ppb(1000.0)
    w.clock.set_sync_status(True, 100 * US, 2 * MS)
    w.clock.set_leap(1)
    assert not w.kernel.time_status & (tx.STA_PLL | tx.STA_FLL)
    assert w.kernel.time_status & tx.STA_INS
    assert not w.kernel.time_status & tx.STA_UNSYNC
    assert (w.kernel.time_maxerror, w.kernel.time_esterror) == (2000, 100)
    assert w.kernel.time_offset == 0 and w.kernel.time_adjust == 0


def test_close_restores_the_tick_and_hands_the_rest_to_the_kernel() -> None:
    w = World()
    w.clock.slew(100 * MS)
    w.advance(600 * MS)
    left = w.clock.kernel_slew_ns()
    w.clock.close()
    assert w.kernel.tick_usec == 10_000
    assert abs(w.kernel.time_adjust - left // US) <= 1  # the kernel's 500 ppm slew
    assert w.clock.timer_due_in_ns() is None


def test_a_refused_adjtimex_is_a_clock_error() -> None:
    w = World()
    w.kernel.privileged = False
    with pytest.raises(ClockError, match="CAP_SYS_TIME"):
        w.clock.slew(1 * MS)
