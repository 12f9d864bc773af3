"""The responder's fast path: in-place plain replies equal ``handle``'s, the quantized root
dispersion stays within its stated bound, and per-address classes follow the flags."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.reply import DISPERSION_WINDOW_LOG2
from ntpy.core.server import (
    PLAIN_GENERAL,
    PLAIN_IGNORE,
    PLAIN_LIMIT,
    PLAIN_LIMIT_KOD,
    PLAIN_SERVE,
    Responder,
)
from ntpy.core.system import PHI_PPB, LocalReference, SystemState, unsynchronized
from ntpy.core.timestamps import NS_PER_S, ns_to_short, short_to_ns, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
PEER = ("192.0.2.1", 40000)
STATES = [
    LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24),
    unsynchronized(-20),
    SystemState(1, 2, 0x47505300, NOW - 3 * NS_PER_S, 123_456, 789_012, -23),
]


class Policy:
    """An access policy with fixed flags; ``rules`` present so answers may be cached."""

    def __init__(self, flags: set[str], rules: object = "rules") -> None:
        self._flags = frozenset(flags)
        self.rules = rules

    def flags(self, address: str, port: int | None = None) -> frozenset[str]:
        return self._flags


class NoRulesPolicy(Policy):
    rules = None  # type: ignore[assignment]

    def __init__(self, flags: set[str]) -> None:
        self._flags = frozenset(flags)


class Limiter:
    def check(self, address: str, now_ns: int, *, kod: bool) -> int:
        return 0


def plain(b0: int, poll: int, xmt: int) -> bytes:
    return bytes([b0, 0, poll, 0]) + bytes(36) + struct.pack("!Q", xmt)


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(STATES),
    li=st.integers(0, 3),
    version=st.integers(1, 4),
    poll=st.integers(0, 255),
    xmt=st.integers(0, 2**64 - 1),
    rx=st.integers(NOW - 10**12, NOW + 10**13),
)
def test_plain_reply_in_place_equals_handle(
    state: SystemState, li: int, version: int, poll: int, xmt: int, rx: int
) -> None:
    r = Responder(state)
    request = plain((li << 6) | (version << 3) | 3, poll, xmt)
    reply, reason = r.handle(request, PEER, unix_ns_to_ntp(rx), rx)
    assert reply is not None and reason == "served"
    expected = reply.finalize(0)
    buf = bytearray(100) + request + bytearray(10)
    r.answer_plain_into(buf, 100, r.plain_b0[request[0]], rx)
    buf[140:148] = bytes(8)
    assert bytes(buf[100:148]) == expected
    assert buf[:100] == bytearray(100) and buf[148:] == bytearray(10)


def test_plain_b0_is_exactly_mode_3_versions_1_to_4() -> None:
    r = Responder(STATES[2])  # leap 1
    assert len(r.plain_b0) == 16
    for b0, out in r.plain_b0.items():
        assert b0 & 7 == 3 and 1 <= (b0 >> 3) & 7 <= 4
        assert out == (1 << 6) | (b0 & 0x38) | 4
    r.set_state(STATES[1])
    assert set(r.plain_b0.values()) == {(3 << 6) | (v << 3) | 4 for v in range(1, 5)}


@settings(max_examples=300, deadline=None)
@given(age=st.integers(0, 10**15), state=st.sampled_from(STATES[::2]))
def test_served_root_dispersion_bound(age: int, state: SystemState) -> None:
    """Never below the exact value, at most one window of PHI (16 us) above it, plus the
    short format's half-unit rounding that was there before."""
    assert state.reference_ns is not None
    now = state.reference_ns + age
    r = Responder(state)
    reply, _ = r.handle(plain(0x23, 6, 1), PEER, unix_ns_to_ntp(now), now)
    assert reply is not None
    served = short_to_ns(struct.unpack_from("!I", reply.finalize(0), 8)[0])
    exact = state.root_dispersion_at(now)
    window_growth = (1 << DISPERSION_WINDOW_LOG2) * PHI_PPB // NS_PER_S + 1
    half_unit = NS_PER_S // 65536 // 2 + 1
    assert exact - half_unit <= served <= exact + window_growth + half_unit
    assert ns_to_short(exact) <= struct.unpack_from("!I", reply.finalize(0), 8)[0]


def test_dispersion_refreshes_as_time_passes_and_on_set_state() -> None:
    r = Responder(STATES[0])
    buf = bytearray(plain(0x23, 6, 1))

    def disp(now: int) -> int:
        r.answer_plain_into(buf, 0, r.plain_b0[0x23], now)
        value: int = struct.unpack_from("!I", buf, 8)[0]
        return value

    a = disp(NOW)
    b = disp(NOW + 1000 * NS_PER_S)
    assert abs((b - a) / 65536 - 0.015) < 0.0002  # 1000 s at 15 ppm
    assert disp(NOW) == a  # and back (a clock step) again
    r.set_state(LocalReference.ntpd_style(10).state(NOW - 2000 * NS_PER_S, -24))
    assert disp(NOW) > b


@pytest.mark.parametrize(
    ("flags", "limiter", "expected"),
    [
        (set(), True, PLAIN_SERVE),
        ({"noquery", "nomodify", "nopeer", "notrap"}, True, PLAIN_SERVE),
        ({"limited"}, True, PLAIN_LIMIT),
        ({"limited", "kod", "noquery"}, True, PLAIN_LIMIT_KOD),
        ({"limited", "kod"}, False, PLAIN_SERVE),
        ({"kod"}, True, PLAIN_SERVE),
        ({"ignore", "limited"}, True, PLAIN_IGNORE),
        ({"noserve"}, True, PLAIN_GENERAL),
        ({"version"}, True, PLAIN_GENERAL),
        ({"notrust", "limited"}, True, PLAIN_GENERAL),
    ],
)
def test_plain_class(flags: set[str], limiter: bool, expected: int) -> None:
    r = Responder(STATES[0], access=Policy(flags), limiter=Limiter() if limiter else None)
    assert r.plain_class("192.0.2.1", 123) == expected


def test_plain_class_without_access_serves() -> None:
    assert Responder(STATES[0]).plain_class("192.0.2.1") == PLAIN_SERVE


def test_plain_generation_tracks_policy_rules_and_limiter() -> None:
    r = Responder(STATES[0])
    g = r.plain_generation()
    assert g is not None and r.plain_generation() == g and not r.plain_port_matters
    policy = Policy({"limited"})
    r.access = policy
    g2 = r.plain_generation()
    assert g2 is not None and g2 != g and r.plain_generation() == g2
    assert r.plain_port_matters  # an opaque rule set may depend on the port
    policy.rules = "new rules"
    g3 = r.plain_generation()
    assert g3 is not None and g3 != g2
    r.limiter = Limiter()
    assert r.plain_generation() not in (g3, None)
    r.access = NoRulesPolicy({"limited"})
    assert r.plain_generation() is None  # no promise: never cache
