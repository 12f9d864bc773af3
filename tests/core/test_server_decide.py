"""The one serve decision: typed outcomes, the in-place fast case equal to the general one,
the per-client class cache (unknown clients, refresh on policy changes), and mode 6."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from ntpy.core.decision import (
    CONTROL,
    DROPS,
    IN_PLACE,
    UNKNOWN_CLIENT,
    Answer,
    Control,
    Drop,
    Kiss,
    Reason,
)
from ntpy.core.kiss import KissCode
from ntpy.core.server import VERDICT_ALLOW, VERDICT_DROP, VERDICT_KOD, Responder, decide
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
PEER = ("127.0.111.2", 40000)
STATE = LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24)


def plain(b0: int = 0x23, xmt: int = 0x1122334455667788) -> bytes:
    return bytes([b0, 0, 6]) + bytes(37) + struct.pack("!Q", xmt)


class Rules:
    """Stands in for the compiled rules (``plain_generation`` keys the cache on them)."""

    has_ntpport = False


class Policy:
    def __init__(self, flags: set[str], rules: object | None = None) -> None:
        self.set = frozenset(flags)
        self.rules = rules if rules is not None else Rules()
        self.calls = 0

    def flags(self, address: str, port: int | None = None) -> frozenset[str]:
        self.calls += 1
        return self.set


class NoRulesPolicy(Policy):
    """A policy that promises nothing per address: never cached."""

    def __init__(self, flags: set[str]) -> None:
        super().__init__(flags)
        del self.rules


class Limiter:
    def __init__(self, verdict: int) -> None:
        self.verdict = verdict

    def check(self, address: str, now_ns: int, *, kod: bool) -> int:
        return self.verdict


def test_plain_request_is_an_answer_equal_to_the_in_place_reply() -> None:
    r = Responder(STATE)
    request = plain()
    d = decide(request, PEER, NOW, r)
    assert isinstance(d, Answer) and d.reason is Reason.SERVED
    assert request == plain()  # the caller's bytes are not touched
    buf = bytearray(100) + bytearray(request)
    r.refresh()
    assert r.decide(buf, 100, 48, PEER[0], PEER[1], NOW, PEER) is IN_PLACE
    assert bytes(buf[100:140]) == d.reply.finalize(0)[:40]
    reply, reason = r.handle(request, PEER, unix_ns_to_ntp(NOW), NOW)
    assert reply is not None and reason is Reason.SERVED
    assert reply.finalize(7) == d.reply.finalize(7)


def test_unknown_client_is_asked_for_its_address_once() -> None:
    policy = Policy(set())
    r = Responder(STATE, access=policy)
    r.refresh()
    buf = bytearray(plain())
    assert r.decide(buf, 0, 48, 0x7F006F02, 40000, NOW) is UNKNOWN_CLIENT
    assert buf == plain()
    assert r.decide(buf, 0, 48, 0x7F006F02, 40000, NOW, PEER) is IN_PLACE
    buf[:] = plain()
    assert r.decide(buf, 0, 48, 0x7F006F02, 40000, NOW) is IN_PLACE  # cached now
    assert policy.calls == 1


def test_refresh_forgets_classes_when_the_policy_changes() -> None:
    r = Responder(STATE, access=Policy(set()))
    r.refresh()
    buf = bytearray(plain())
    assert r.decide(buf, 0, 48, "k", 1, NOW, PEER) is IN_PLACE
    r.access = Policy({"ignore"})
    r.refresh()
    buf[:] = plain()
    assert r.decide(buf, 0, 48, "k", 1, NOW) is UNKNOWN_CLIENT
    assert r.decide(buf, 0, 48, "k", 1, NOW, PEER) == Drop(Reason.RESTRICTED)


def test_a_policy_without_rules_is_never_cached() -> None:
    policy = NoRulesPolicy(set())
    r = Responder(STATE, access=policy)
    r.refresh()
    buf = bytearray(plain())
    assert r.decide(buf, 0, 48, "k", 1, NOW, PEER) is IN_PLACE
    assert r.decide(buf, 0, 48, "k", 1, NOW) is UNKNOWN_CLIENT
    assert policy.calls == 1


@pytest.mark.parametrize(
    ("flags", "verdict", "expected"),
    [
        ({"ignore"}, VERDICT_ALLOW, Drop(Reason.RESTRICTED)),
        ({"noserve"}, VERDICT_ALLOW, Drop(Reason.RESTRICTED)),
        ({"version"}, VERDICT_ALLOW, Drop(Reason.VERSION_DENIED)),
        ({"notrust"}, VERDICT_ALLOW, Drop(Reason.UNAUTHENTICATED)),
        ({"limited"}, VERDICT_DROP, Drop(Reason.RATE_LIMITED)),
        ({"limited", "kod"}, VERDICT_ALLOW, IN_PLACE),
    ],
)
def test_restrictions_are_typed_drops(flags: set[str], verdict: int, expected: object) -> None:
    r = Responder(STATE, access=Policy(flags), limiter=Limiter(verdict))
    r.refresh()
    buf = bytearray(plain(0x1B))  # NTPv3: the "version" flag refuses it
    assert r.decide(buf, 0, 48, "k", 1, NOW, PEER) == expected


def test_rate_kiss_is_a_kiss_with_its_code() -> None:
    r = Responder(STATE, access=Policy({"limited", "kod"}), limiter=Limiter(VERDICT_KOD))
    for d in (decide(plain(), PEER, NOW, r), decide(plain() + bytes(20), PEER, NOW, r)):
        assert isinstance(d, Kiss)
        assert d.code is KissCode.RATE and d.reason is Reason.KOD_RATE
        out = d.reply.finalize(0)
        assert out[12:16] == b"RATE" and out[40:48] == plain()[40:48]


def test_mode_6_is_control_unless_noquery() -> None:
    request = bytes([0x16, 2]) + bytes(10)
    assert decide(request, PEER, NOW, Responder(STATE)) is CONTROL
    noquery = Responder(STATE, access=Policy({"noquery"}))
    assert decide(request, PEER, NOW, noquery) == Drop(Reason.CONTROL_DENIED)
    assert CONTROL.reason is Reason.CONTROL  # counted so when no control responder exists


def test_unknown_sender_gets_no_access_rules() -> None:
    r = Responder(STATE, access=Policy({"ignore"}))
    assert isinstance(decide(plain(), None, NOW, r), Answer)
    assert decide(plain(), PEER, NOW, r) == Drop(Reason.RESTRICTED)


def test_every_drop_reason_has_one_shared_drop_and_decisions_are_frozen() -> None:
    assert set(DROPS) == {reason for reason in Reason if not reason.answered}
    assert all(d.reason is reason for reason, d in DROPS.items())
    for d in (IN_PLACE, CONTROL, DROPS[Reason.TOO_SHORT]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.reason = Reason.SERVED  # type: ignore[misc,union-attr]
    assert isinstance(CONTROL, Control)
