"""Responder + restrict flags + rate limiting: what is refused, how a RATE kiss looks."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ntpy.core.auth import MacKey
from ntpy.core.packet import decode
from ntpy.core.server import (
    VERDICT_ALLOW,
    VERDICT_DROP,
    VERDICT_KOD,
    Reason,
    Responder,
)
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
XMT = 0x1122334455667788
PEER = ("198.51.100.7", 40000)


class Flags:
    def __init__(self, flags: set[str]) -> None:
        self.value = frozenset(flags)
        self.asked: list[str] = []

    def flags(self, address: str, port: int | None = None) -> frozenset[str]:
        self.asked.append(address)
        return self.value


class FixedLimiter:
    def __init__(self, verdict: int) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, bool]] = []

    def check(self, address: str, now_ns: int, *, kod: bool) -> int:
        self.calls.append((address, kod))
        return self.verdict


def req(version: int = 4, mode: int = 3, poll: int = 6) -> bytes:
    return bytes([(version << 3) | mode, 0, poll, 0]) + bytes(36) + struct.pack("!Q", XMT)


def responder(flags: set[str], verdict: int = VERDICT_ALLOW) -> tuple[Responder, FixedLimiter]:
    lim = FixedLimiter(verdict)
    r = Responder(
        LocalReference.ntpd_style(10).state(NOW, -24),
        {1: MacKey(1, "md5", b"k")},
        access=Flags(flags),
        limiter=lim,
        kod_min_poll=3,
    )
    return r, lim


def answer(r: Responder, data: bytes) -> tuple[bytes | None, Reason]:
    reply, reason = r.handle(data, PEER, unix_ns_to_ntp(NOW), NOW)
    return (reply.finalize(unix_ns_to_ntp(NOW + 1000)) if reply else None), reason


@pytest.mark.parametrize("flag", ["ignore", "noserve"])
def test_ignore_and_noserve_drop(flag: str) -> None:
    r, _ = responder({flag})
    assert answer(r, req()) == (None, Reason.RESTRICTED)


def test_ignore_drops_even_mode6_while_noquery_is_counted_apart() -> None:
    assert answer(responder({"ignore"})[0], req(mode=6))[1] is Reason.RESTRICTED
    assert answer(responder({"noquery"})[0], req(mode=6))[1] is Reason.CONTROL_DENIED
    assert answer(responder(set())[0], req(mode=6))[1] is Reason.CONTROL


def test_noquery_nomodify_notrap_nopeer_still_serve_time() -> None:
    r, _ = responder({"noquery", "nomodify", "notrap", "nopeer"})
    out, reason = answer(r, req())
    assert reason is Reason.SERVED and out is not None and decode(out).stratum == 11
    # nopeer: an unauthenticated symmetric-active stranger gets nothing (tests/core/
    # test_peer_access.py has the authenticated and configured-peer cases).
    assert answer(r, req(mode=1)) == (None, Reason.PEER_DENIED)


def test_version_flag_refuses_older_versions() -> None:
    r, _ = responder({"version"})
    assert answer(r, req(version=3))[1] is Reason.VERSION_DENIED
    assert answer(r, req(version=4))[1] is Reason.SERVED


def test_notrust_needs_a_valid_mac() -> None:
    r, _ = responder({"notrust"})
    assert answer(r, req())[1] is Reason.UNAUTHENTICATED
    signed = req() + struct.pack("!I", 1) + hashlib.md5(b"k" + req()).digest()
    assert answer(r, signed)[1] is Reason.SERVED_AUTH


def test_limited_asks_the_limiter_with_kod_flag() -> None:
    r, lim = responder({"limited", "kod"})
    assert answer(r, req())[1] is Reason.SERVED
    assert lim.calls == [("198.51.100.7", True)]
    r, lim = responder({"limited"})
    answer(r, req())
    assert lim.calls == [("198.51.100.7", False)]


def test_not_limited_never_asks_the_limiter() -> None:
    r, lim = responder({"kod", "nomodify"})
    answer(r, req())
    assert lim.calls == []


def test_rate_limited_drop() -> None:
    r, _ = responder({"limited"}, VERDICT_DROP)
    assert answer(r, req()) == (None, Reason.RATE_LIMITED)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_rate_kiss(version: int) -> None:
    r, _ = responder({"limited", "kod"}, VERDICT_KOD)
    data = req(version=version, poll=1)
    out, reason = answer(r, data)
    assert reason is Reason.KOD_RATE and out is not None and len(out) == 48 <= len(data)
    p = decode(out)
    assert (p.leap, p.version, p.mode, p.stratum) == (3, version, 4, 0)
    assert p.refid_bytes == b"RATE"
    assert p.poll >= 3  # asks the client to slow down to at least the limiter's interval
    # No usable time in a kiss: every timestamp is the client's own transmit timestamp.
    assert p.origin_ts == p.receive_ts == p.transmit_ts == p.reference_ts == XMT


def test_no_access_policy_means_serve_everyone() -> None:
    r = Responder(LocalReference.ntpd_style(10).state(NOW, -24))
    assert answer(r, req())[1] is Reason.SERVED
