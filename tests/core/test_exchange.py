"""``parse_reply``: what a client makes of a server's reply, kiss-o'-death packets above all.

The kisses are the bytes real servers send: ntpy's own RATE kiss comes from the production
``Responder``; ntpd's and chrony's look the same (LI=3, stratum 0, the code as refid).
"""

from __future__ import annotations

import pytest

from ntpy.core.exchange import KissOfDeath, ReplyRejected, build_request, parse_reply
from ntpy.core.packet import LEAP_ALARM, MODE_SERVER, Packet, decode, encode, refid_from_text
from ntpy.core.server import Responder
from ntpy.core.system import unsynchronized
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
COOKIE = 0x1234_5678_9ABC_DEF0
PEER = ("192.0.2.1", 40000)


def stratum0(code: str, *, leap: int = LEAP_ALARM, poll: int = 6, xmt: int | None = None) -> bytes:
    """A stratum-0 reply to our request with ``code`` as refid (ntpd's kiss layout)."""
    return encode(
        Packet(
            leap=leap,
            version=4,
            mode=MODE_SERVER,
            stratum=0,
            poll=poll,
            precision=-20,
            root_delay=0,
            root_dispersion=0,
            refid=refid_from_text(code) if code else 0,
            reference_ts=0,
            origin_ts=COOKIE,
            receive_ts=COOKIE if xmt is None else xmt,
            transmit_ts=COOKIE if xmt is None else xmt,
        )
    )


def test_ntpys_own_rate_kiss_is_a_kiss_not_an_offset() -> None:
    """Regression: LI=3 kisses were parsed as samples (+1192661682 s offsets)."""
    req = build_request(COOKIE, poll=4)
    kiss = Responder(unsynchronized(-20), kod_min_poll=9).kiss_rate(req, 4).finalize(0)
    assert decode(kiss).leap == LEAP_ALARM
    with pytest.raises(KissOfDeath) as info:
        parse_reply(kiss, COOKIE, NOW, NOW + 1000)
    assert info.value.code == "RATE" and info.value.reason == "kod_RATE"
    assert info.value.poll == 9  # the server's advertised poll
    assert "kiss-o'-death RATE" in info.value.detail


@pytest.mark.parametrize("code", ["RATE", "DENY", "RSTR"])
@pytest.mark.parametrize("leap", [0, 3])
def test_stratum0_kiss_codes_raise_whatever_the_leap(code: str, leap: int) -> None:
    with pytest.raises(KissOfDeath) as info:
        parse_reply(stratum0(code, leap=leap), COOKIE, NOW, NOW + 1000)
    assert info.value.code == code


def test_kiss_with_zero_transmit_timestamp_is_still_a_kiss() -> None:
    with pytest.raises(KissOfDeath):
        parse_reply(stratum0("DENY", xmt=0), COOKIE, NOW, NOW + 1000)


def test_spoofed_kiss_is_bogus() -> None:
    with pytest.raises(ReplyRejected) as info:
        parse_reply(stratum0("DENY"), COOKIE + 1, NOW, NOW + 1000)
    assert info.value.reason == "bogus"


@pytest.mark.parametrize("code", ["INIT", "STEP", "", "GPS", "AUTH"])
def test_other_stratum0_replies_are_unsynchronized(code: str) -> None:
    """ntpd/ntpy answer INIT while unsynchronized, chrony a zero refid: not kisses."""
    sample = parse_reply(stratum0(code, xmt=unix_ns_to_ntp(NOW)), COOKIE, NOW, NOW + 1000)
    assert not sample.synchronized


def test_unsynchronized_ntpy_reply_is_returned_unsynchronized() -> None:
    req = build_request(COOKIE)
    reply, _ = Responder(unsynchronized(-20)).handle(req, PEER, unix_ns_to_ntp(NOW), NOW)
    assert reply is not None
    sample = parse_reply(reply.finalize(unix_ns_to_ntp(NOW)), COOKIE, NOW, NOW + 1000)
    assert not sample.synchronized and sample.stratum == 0
