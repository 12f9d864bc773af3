"""core/leap.py: the calendar, which leap is pending, when it is announced and armed, and
the smear's shape."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.leap import (
    DAY_NS,
    LeapEvent,
    SmearPolicy,
    announce,
    civil_from_days,
    clock_leap,
    days_from_civil,
    month_start_s,
    next_boundary_ns,
    next_month_start_s,
    pending_leap,
    smear_offset_ns,
)
from ntpy.core.leapfile import parse_leap_file, render_leap_file
from ntpy.core.timestamps import NS_PER_S

JAN_2017 = 1_483_228_800
NTP = 2_208_988_800


def _ns(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    t = dt.datetime(y, m, d, hh, mm, ss, tzinfo=dt.UTC)
    return int(t.timestamp()) * NS_PER_S


@settings(max_examples=300, deadline=None)
@given(st.integers(-700_000, 2_900_000))
def test_civil_matches_datetime(days: int) -> None:
    d = dt.date(1970, 1, 1) + dt.timedelta(days=days)
    assert civil_from_days(days) == (d.year, d.month, d.day)
    assert days_from_civil(d.year, d.month, d.day) == days


def test_month_bounds() -> None:
    now = _ns(2016, 12, 31, 23, 59, 59)
    assert month_start_s(now) * NS_PER_S == _ns(2016, 12, 1)
    assert next_month_start_s(now) == JAN_2017


def _table(expires: int = 4_000_000_000):  # type: ignore[no-untyped-def]
    entries = [(JAN_2017 - 86_400 * 549 + NTP, 36), (JAN_2017 + NTP, 37)]
    return parse_leap_file(render_leap_file(entries, 3_900_000_000, expires))


def test_the_file_announces_in_the_month_of_the_event_only() -> None:
    table = _table()
    assert pending_leap(_ns(2016, 11, 30, 23, 59, 59), table, 0) is None
    ev = pending_leap(_ns(2016, 12, 1), table, 0)
    assert ev == LeapEvent(JAN_2017, 1, "leapfile")
    assert announce(_ns(2016, 12, 1), ev) == 1
    assert announce(JAN_2017 * NS_PER_S - 1, ev) == 1
    assert announce(JAN_2017 * NS_PER_S, ev) == 0
    assert pending_leap(JAN_2017 * NS_PER_S, table, 0) is None


def test_a_valid_file_wins_over_the_vote() -> None:
    table = _table()
    assert pending_leap(_ns(2017, 3, 15), table, 1) is None  # upstreams are wrong
    assert pending_leap(_ns(2016, 12, 15), table, 2) == LeapEvent(JAN_2017, 1, "leapfile")


def test_an_expired_file_leaves_it_to_the_vote() -> None:
    table = _table(expires=3_900_000_001)
    ev = pending_leap(_ns(2026, 6, 10), table, 1)
    assert (
        ev is not None and ev.source == "upstream" and ev.at_unix_s == _ns(2026, 7, 1) // NS_PER_S
    )


def test_the_vote_means_the_end_of_this_month_but_not_on_its_first_day() -> None:
    assert pending_leap(_ns(2016, 12, 1, 23, 59, 59), None, 1) is None
    assert pending_leap(_ns(2016, 12, 2), None, 1) == LeapEvent(JAN_2017, 1, "upstream")
    assert pending_leap(_ns(2016, 12, 2), None, 2) == LeapEvent(JAN_2017, -1, "upstream")
    assert pending_leap(_ns(2016, 12, 2), None, 0) is None
    assert pending_leap(_ns(2016, 12, 2), None, 3) is None


def test_the_clock_is_armed_on_the_last_day_only() -> None:
    ev = LeapEvent(JAN_2017, -1, "leapfile")
    assert clock_leap(_ns(2016, 12, 30, 23, 59, 59), ev) == 0
    assert clock_leap(_ns(2016, 12, 31), ev) == -1
    assert clock_leap(JAN_2017 * NS_PER_S - 1, ev) == -1
    assert clock_leap(JAN_2017 * NS_PER_S, ev) == 0
    assert clock_leap(_ns(2016, 12, 31), None) == 0


def test_boundaries() -> None:
    ev = LeapEvent(JAN_2017, 1, "upstream")
    assert next_boundary_ns(_ns(2016, 12, 30, 5), ev) == _ns(2016, 12, 31)
    assert next_boundary_ns(_ns(2016, 12, 31, 5), ev) == JAN_2017 * NS_PER_S
    assert next_boundary_ns(_ns(2016, 12, 31, 5), None) == JAN_2017 * NS_PER_S


def _served(t_true: int, ev: LeapEvent, policy: SmearPolicy) -> int:
    """Served (smeared) time at continuous true time ``t_true`` of a perfect leaping clock."""
    threshold = ev.at_ns - (0 if ev.step > 0 else NS_PER_S)
    done = t_true >= threshold
    clock = t_true - ev.step * NS_PER_S if done else t_true
    return clock + smear_offset_ns(clock, ev, policy, done)


@pytest.mark.parametrize("step", [1, -1])
@pytest.mark.parametrize("policy", [SmearPolicy("noon", 86_400), SmearPolicy("interval", 600)])
def test_smear_is_continuous_monotonic_and_complete(step: int, policy: SmearPolicy) -> None:
    ev = LeapEvent(JAN_2017, step, "leapfile")
    start, end = policy.window(ev)
    span = end - start + 4 * NS_PER_S
    prev = None
    stride = span // 4000
    for k in range(4001):
        t = start - 2 * NS_PER_S + k * stride
        s = _served(t, ev, policy)
        if prev is not None:
            assert 0 < s - prev <= stride * 2, (k, s - prev)
        prev = s
    # exact at both ends, and the unsmeared clock is one second off in the middle
    assert _served(start, ev, policy) == start
    t_end = end + step * NS_PER_S
    assert _served(t_end, ev, policy) == end
    mid_off = _served(ev.at_ns - NS_PER_S // 2, ev, policy) - (ev.at_ns - NS_PER_S // 2)
    assert mid_off != 0


@settings(max_examples=300, deadline=None)
@given(st.integers(-2 * DAY_NS, 2 * DAY_NS), st.sampled_from([1, -1]), st.booleans())
def test_smear_offset_is_bounded(dt_ns: int, step: int, noon: bool) -> None:
    ev = LeapEvent(JAN_2017, step, "leapfile")
    policy = SmearPolicy("noon", 86_400) if noon else SmearPolicy("interval", 3600)
    t = ev.at_ns + dt_ns
    for done in (False, True):
        assert abs(smear_offset_ns(t, ev, policy, done)) <= NS_PER_S
