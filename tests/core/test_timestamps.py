"""Integer NTP timestamps: conversions and era-safe arithmetic (2036 rollover)."""

from hypothesis import given
from hypothesis import strategies as st

from ntpy.core.timestamps import (
    ERA_NS,
    NS_PER_S,
    NTP_UNIX_OFFSET_NS,
    log2_precision_from_ns,
    ns_to_short,
    ntp_diff,
    ntp_diff_ns,
    ntp_to_unix_ns,
    short_to_ns,
    unix_ns_to_ntp,
)

ERA1_START_UNIX_NS = ERA_NS - NTP_UNIX_OFFSET_NS  # 2036-02-07T06:28:16Z
# Any instant from 1970 to 2100 in Unix ns.
instants = st.integers(min_value=0, max_value=4_102_444_800 * NS_PER_S)


def test_unix_epoch_is_ntp_2208988800() -> None:
    assert unix_ns_to_ntp(0) == 2_208_988_800 << 32


def test_fraction_half_second() -> None:
    assert unix_ns_to_ntp(NS_PER_S // 2) & 0xFFFFFFFF == 1 << 31


def test_era_rollover_wraps_to_zero() -> None:
    assert unix_ns_to_ntp(ERA1_START_UNIX_NS) == 0
    assert unix_ns_to_ntp(ERA1_START_UNIX_NS - NS_PER_S) == 0xFFFFFFFF << 32


def test_difference_across_2036() -> None:
    before = unix_ns_to_ntp(ERA1_START_UNIX_NS - NS_PER_S)
    after = unix_ns_to_ntp(ERA1_START_UNIX_NS + NS_PER_S)
    assert ntp_diff_ns(after, before) == 2 * NS_PER_S
    assert ntp_diff_ns(before, after) == -2 * NS_PER_S


@given(instants)
def test_roundtrip_within_a_nanosecond(t: int) -> None:
    back = ntp_to_unix_ns(unix_ns_to_ntp(t), pivot_unix_ns=t + 1000 * NS_PER_S)
    assert abs(back - t) <= 1


@given(instants, st.integers(min_value=-(2**40), max_value=2**40))
def test_diff_matches_true_difference(t: int, delta: int) -> None:
    a, b = unix_ns_to_ntp(t + delta), unix_ns_to_ntp(t)
    assert abs(ntp_diff_ns(a, b) - delta) <= 1


@given(
    instants,
    st.integers(min_value=-(60 * 365 * 86400) * NS_PER_S, max_value=60 * 365 * 86400 * NS_PER_S),
)
def test_pivot_picks_the_right_era(t: int, pivot_offset: int) -> None:
    back = ntp_to_unix_ns(unix_ns_to_ntp(t), pivot_unix_ns=t + pivot_offset)
    assert abs(back - t) <= 1


def test_diff_is_signed_64() -> None:
    assert ntp_diff(0, 1) == -1
    assert ntp_diff(1, (1 << 64) - 1) == 2


def test_short_format() -> None:
    assert ns_to_short(NS_PER_S) == 1 << 16
    assert ns_to_short(-5) == 0
    assert ns_to_short(10**15) == 0xFFFFFFFF
    assert short_to_ns(1 << 16) == NS_PER_S


def test_precision_exponent() -> None:
    assert log2_precision_from_ns(1) == -29  # 2**-30 s = 0.93 ns < 1 ns <= 2**-29 s
    assert log2_precision_from_ns(59) == -24
    assert log2_precision_from_ns(60) == -23
    assert log2_precision_from_ns(1_000_000) == -9
