"""VirtualClock against an injected realtime source: every instant is chosen by the test."""

from __future__ import annotations

import math

import pytest
from clockfakes import FakeRealtime

from ntpy.clock import Clock, VirtualClock
from ntpy.clock.errors import ClockError

S = 1_000_000_000
MS = 1_000_000
US = 1_000


def make(**kwargs: float) -> tuple[VirtualClock, FakeRealtime]:
    rt = FakeRealtime()
    return VirtualClock(rt, **kwargs), rt  # type: ignore[arg-type]


def test_is_a_clock_and_starts_at_realtime() -> None:
    clock, rt = make()
    assert isinstance(clock, Clock)
    assert clock.name == "virtual"
    assert clock.can_adjust()
    assert clock.now_ns() == rt.t
    assert clock.from_realtime_ns(rt.t - 5 * US) == rt.t - 5 * US
    assert clock.frequency_ppb() == 0.0
    assert clock.remaining_slew_ns() == 0


def test_step_is_immediate_and_tells_handlers() -> None:
    clock, rt = make()
    seen: list[int] = []
    clock.add_step_handler(seen.append)
    clock.add_step_handler(lambda ns: seen.append(-ns))
    clock.step(-3 * S + 7)
    assert clock.now_ns() == rt.t - 3 * S + 7
    assert seen == [-3 * S + 7, 3 * S - 7]
    rt.advance(S)
    assert clock.now_ns() == rt.t - 3 * S + 7


def test_one_failing_handler_does_not_silence_the_others() -> None:
    clock, _ = make()
    seen: list[int] = []

    def bad(ns: int) -> None:
        raise RuntimeError("boom")

    clock.add_step_handler(bad)
    clock.add_step_handler(seen.append)
    with pytest.raises(RuntimeError, match="boom"):
        clock.step(5)
    assert seen == [5]


def test_slew_converges_at_its_rate_and_then_stops() -> None:
    clock, rt = make()  # 500 ppm
    base = rt.t
    clock.slew(1 * MS)
    assert clock.now_ns() == base  # nothing applied yet
    rt.advance(S)
    assert clock.now_ns() - rt.t == 500 * US
    assert clock.remaining_slew_ns() == 500 * US
    rt.advance(S)
    assert clock.now_ns() - rt.t == 1 * MS
    assert clock.remaining_slew_ns() == 0
    rt.advance(100 * S)
    assert clock.now_ns() - rt.t == 1 * MS


def test_slew_rate_is_bounded_at_every_instant() -> None:
    clock, rt = make(slew_rate_ppm=500.0)
    clock.slew(-10 * MS)
    prev_served, prev_rt = clock.now_ns(), rt.t
    for _ in range(3000):  # 21 s: enough for 10 ms at 500 ppm
        rt.advance(7 * MS + 13)
        served = clock.now_ns()
        d_rt, d_served = rt.t - prev_rt, served - prev_served
        # 500 ppm of 7 ms is 3.5 us; allow the 1 ns of floor rounding.
        assert abs(d_served - d_rt) <= d_rt * 500 // 1_000_000 + 1
        prev_served, prev_rt = served, rt.t
    assert clock.now_ns() - rt.t == -10 * MS


def test_new_slew_replaces_the_running_one_and_zero_cancels() -> None:
    clock, rt = make()
    clock.slew(10 * MS)
    rt.advance(2 * S)  # 1 ms applied
    clock.slew(-1 * MS)
    assert clock.remaining_slew_ns() == -1 * MS
    rt.advance(10 * S)
    assert clock.now_ns() - rt.t == 0  # +1 ms then -1 ms
    clock.slew(5 * MS)
    rt.advance(S)
    clock.slew(0)
    rt.advance(10 * S)
    assert clock.now_ns() - rt.t == 500 * US
    assert clock.remaining_slew_ns() == 0


def test_served_time_stays_monotonic_under_fast_negative_slew_and_frequency() -> None:
    # Push to the edge: 990000 ppm slew plus -5000 ppm frequency leaves served time
    # advancing at 0.005 ns per ns; it must never go back, checked at every single ns.
    clock, rt = make(slew_rate_ppm=990_000.0, max_frequency_ppb=5_000_000.0)
    clock.set_frequency_ppb(-5_000_000.0)
    clock.slew(-S)
    prev = clock.now_ns()
    for _ in range(20_000):
        rt.advance(1)
        now = clock.now_ns()
        assert now >= prev
        prev = now


def test_step_during_slew_keeps_the_slew_running() -> None:
    clock, rt = make()
    clock.slew(MS)
    rt.advance(S)
    clock.step(S)
    assert clock.remaining_slew_ns() == 500 * US
    rt.advance(10 * S)
    assert clock.now_ns() - rt.t == S + MS


def test_frequency_change_is_continuous() -> None:
    clock, rt = make()
    clock.set_frequency_ppb(1000.0)
    rt.advance(S)
    assert clock.now_ns() - rt.t == 1000
    before = clock.now_ns()
    clock.set_frequency_ppb(-2000.0)
    assert clock.now_ns() == before  # no jump at the change
    rt.advance(S)
    assert clock.now_ns() - rt.t == 1000 - 2000
    assert clock.frequency_ppb() == -2000.0


def test_sub_nanosecond_progress_survives_many_folds() -> None:
    # 0.5 ppb for 2 s is exactly 1 ns; refolding every ms must not round it away.
    clock, rt = make()
    for _ in range(2000):
        clock.set_frequency_ppb(0.5)
        rt.advance(MS)
    assert clock.now_ns() - rt.t == 1
    # And a slew refolded in many small pieces still lands exactly.
    clock.set_frequency_ppb(0.0)
    start = clock.now_ns() - rt.t
    clock.slew(333)
    for _ in range(1000):
        rt.advance(777)
        clock.set_frequency_ppb(0.0)  # forces a fold each time
    rt.advance(S)
    assert clock.now_ns() - rt.t - start == 333


def test_from_realtime_ns_matches_now_for_past_readings() -> None:
    clock, rt = make()
    clock.set_frequency_ppb(20_000.0)
    clock.slew(MS)
    rt.advance(3 * S)
    # Readings taken in the past, with no change since, map exactly as now_ns would have.
    now_rt = rt.t
    stamps = {back: clock.from_realtime_ns(now_rt - back) for back in (0, 1, 5 * US, 40 * US)}
    assert stamps[0] == clock.now_ns()
    for back, value in stamps.items():
        rt.t = now_rt - back
        assert clock.now_ns() == value
    rt.t = now_rt
    assert stamps[40 * US] < stamps[5 * US] < stamps[1] < stamps[0]


def test_from_realtime_ns_before_a_step_lands_in_the_new_timescale() -> None:
    clock, rt = make()
    rx = rt.t
    rt.advance(10 * US)
    clock.step(-S)
    assert clock.from_realtime_ns(rx) == rx - S
    assert clock.from_realtime_ns(rx) <= clock.now_ns()


def test_from_realtime_ns_before_a_frequency_change_is_extrapolated() -> None:
    clock, rt = make()
    rx = rt.t
    rt.advance(10 * US)
    clock.set_frequency_ppb(100_000.0)  # 100 ppm, folded at rx + 10 us
    mapped = clock.from_realtime_ns(rx)
    assert mapped == rx - 1  # 10 us * 100 ppm = 1 ns, extrapolated backwards
    assert mapped <= clock.now_ns()


def test_from_realtime_ns_before_a_slew_started_has_no_slew_in_it() -> None:
    clock, rt = make(slew_rate_ppm=100_000.0)
    rx = rt.t
    rt.advance(10 * US)
    clock.slew(-S)  # a new segment starts here; nothing slewed before it
    assert clock.from_realtime_ns(rx) == rx
    assert clock.from_realtime_ns(rt.t) == rt.t
    rt.advance(10 * US)  # 100000 ppm of 10 us = 1 us slewed
    assert clock.now_ns() == rt.t - US
    assert clock.from_realtime_ns(rx) <= clock.now_ns()


def test_state_snapshot() -> None:
    clock, rt = make()
    clock.step(5 * MS)
    clock.set_frequency_ppb(-12.5)
    clock.slew(2 * MS)
    rt.advance(S)
    st = clock.state()
    assert st["name"] == "virtual"
    assert st["realtime_ns"] == rt.t
    assert st["offset_ns"] == 5 * MS - 13 + 500 * US  # floor(-12.5) = -13
    assert st["frequency_ppb"] == -12.5
    assert st["remaining_slew_ns"] == 1500 * US
    assert st["slew_rate_ppm"] == 500.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 500_001.0, -1e9])
def test_bad_frequency_is_refused(bad: float) -> None:
    clock, _ = make()
    with pytest.raises(ValueError, match="frequency"):
        clock.set_frequency_ppb(bad)
    assert clock.frequency_ppb() == 0.0


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_offsets_must_be_integer_ns(bad: object) -> None:
    clock, _ = make()
    with pytest.raises(TypeError, match="int number of ns"):
        clock.step(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int number of ns"):
        clock.slew(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate", "max_freq"),
    [(0.0, 0.0), (-1.0, 0.0), (math.nan, 0.0), (1e6, 0.0), (999_000.0, 1_000_000.0), (500.0, -1.0)],
)
def test_rates_that_could_run_time_backwards_are_refused(rate: float, max_freq: float) -> None:
    with pytest.raises(ValueError):
        VirtualClock(FakeRealtime(), slew_rate_ppm=rate, max_frequency_ppb=max_freq)


def test_precision_given_or_measured() -> None:
    clock, _ = make(precision_log=-20)
    assert clock.precision() == -20
    frozen, _ = make()
    with pytest.raises(ClockError, match="did not advance"):
        frozen.precision()
    real = VirtualClock()
    p = real.precision()
    assert -32 <= p <= -10
    assert real.precision() == p  # cached
