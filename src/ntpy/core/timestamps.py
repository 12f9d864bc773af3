"""NTP time formats as plain integers, and the time unit every module uses.

An NTP timestamp is a 64-bit unsigned fixed-point number: 32 bits of seconds since
1900-01-01 (era 0) and 32 bits of fraction. Era 0 ends on 2036-02-07; after that the
seconds field wraps. We never hold float Unix seconds (a float at 1.7e9 s resolves only
~0.24 us); the daemon works in integer nanoseconds and converts at the packet boundary.

Differences between two timestamps are taken modulo 2**64 and read as signed, so any two
timestamps less than 68 years apart subtract correctly across the era boundary. Converting
a 64-bit timestamp back to absolute time needs a pivot (a nearby known time) to pick the era.
"""

from __future__ import annotations

NTP_UNIX_OFFSET_S = 2_208_988_800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)."""

NS_PER_S = 1_000_000_000
"""Nanoseconds per second: the one definition in ntpy; every module imports it from here."""
NTP_UNIX_OFFSET_NS = NTP_UNIX_OFFSET_S * NS_PER_S
ERA_NS = (1 << 32) * NS_PER_S
"""Length of one NTP era (2**32 s) in nanoseconds."""

_U64 = 1 << 64
_HALF64 = 1 << 63


def unix_ns_to_ntp(unix_ns: int) -> int:
    """Convert Unix-epoch nanoseconds to a 64-bit NTP timestamp (era folded away).

    Rounds to the nearest 2**-32 s so a round trip through ``ntp_to_unix_ns`` is exact
    to within a nanosecond.
    """
    ntp_ns = unix_ns + NTP_UNIX_OFFSET_NS
    return (((ntp_ns << 32) + NS_PER_S // 2) // NS_PER_S) % _U64


def ntp_to_unix_ns(ntp: int, pivot_unix_ns: int) -> int:
    """Convert a 64-bit NTP timestamp to Unix nanoseconds, choosing the era closest to pivot.

    ``pivot_unix_ns`` is any time known to be within 68 years of the answer (usually
    "now"). This is what makes the conversion correct across 2036.
    """
    pivot_ntp = unix_ns_to_ntp(pivot_unix_ns)
    diff = ntp_diff(ntp, pivot_ntp)
    # diff is in 2**-32 s units; convert back to ns with rounding.
    return pivot_unix_ns + _frac_to_ns(diff)


def ntp_diff(a: int, b: int) -> int:
    """Signed difference a - b of two 64-bit NTP timestamps, in 2**-32 s units.

    Era-safe: correct whenever the true difference is within +/- 68 years.
    """
    d = (a - b) % _U64
    return d - _U64 if d >= _HALF64 else d


def ntp_diff_ns(a: int, b: int) -> int:
    """Signed difference a - b of two NTP timestamps in nanoseconds (era-safe)."""
    return _frac_to_ns(ntp_diff(a, b))


def _frac_to_ns(units: int) -> int:
    """Convert a signed count of 2**-32 s to nanoseconds, rounding half away from zero."""
    if units >= 0:
        return (units * NS_PER_S + (1 << 31)) >> 32
    return -((-units * NS_PER_S + (1 << 31)) >> 32)


def ns_to_frac(ns: int) -> int:
    """Convert signed nanoseconds to a signed count of 2**-32 s (rounded)."""
    if ns >= 0:
        return ((ns << 32) + NS_PER_S // 2) // NS_PER_S
    return -(((-ns << 32) + NS_PER_S // 2) // NS_PER_S)


def seconds_to_short(seconds: float) -> int:
    """Encode a non-negative duration as NTP short format (16.16 fixed point), saturating.

    Used for root delay and root dispersion, which are never negative on the wire.
    """
    if seconds <= 0:
        return 0
    v = int(seconds * 65536 + 0.5)
    return min(v, 0xFFFFFFFF)


def ns_to_short(ns: int) -> int:
    """Encode non-negative nanoseconds as NTP short format (16.16), saturating."""
    if ns <= 0:
        return 0
    return min(((ns << 16) + NS_PER_S // 2) // NS_PER_S, 0xFFFFFFFF)


def short_to_ns(short: int) -> int:
    """Decode NTP short format (16.16 unsigned) to nanoseconds."""
    return (short * NS_PER_S + (1 << 15)) >> 16


def ntp_to_float_offset(units: int) -> float:
    """Express a (small) signed difference in 2**-32 s units as float seconds, for display."""
    return units / 4294967296.0


def precision_to_ns(precision: int) -> int:
    """2**precision seconds in ns (at least 1), for a precision exponent from a packet or
    our own clock; exponents outside -32..0 are clamped."""
    p = max(-32, min(0, precision))
    return max(1, NS_PER_S >> -p)


def log2_precision_from_ns(ns: int) -> int:
    """The NTP precision exponent for a clock reading granularity/cost of ``ns`` nanoseconds.

    Returns the smallest p (a negative integer, at least -32) with 2**p s >= ns.
    """
    if ns <= 0:
        return -32
    p = -32
    # 2**p seconds in ns = 1e9 / 2**-p
    while p < 0 and (NS_PER_S >> -p) < ns:
        p += 1
    return p
