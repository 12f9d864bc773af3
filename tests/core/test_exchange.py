"""The client exchange (``parse_reply``, ``ClientExchange``): what a client makes of a
server's reply, kiss-o'-death packets above all; and where authentication plugs in.

The kisses are the bytes real servers send: ntpy's own RATE kiss comes from the production
``Responder``; ntpd's and chrony's look the same (LI=3, stratum 0, the code as refid).
"""

from __future__ import annotations

import pytest

from ntpy.core.exchange import (
    ClientExchange,
    KissCode,
    KissOfDeath,
    Reason,
    ReplyRejected,
    build_request,
    kiss_reason,
    parse_reply,
)
from ntpy.core.packet import (
    LEAP_ALARM,
    MODE_CLIENT,
    MODE_SERVER,
    Packet,
    decode,
    encode,
    refid_from_text,
)
from ntpy.core.server import Responder
from ntpy.core.system import SystemState, unsynchronized
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


# ----------------------------------------------------------------- typed kiss codes


def test_kiss_codes_are_typed_and_name_their_reason() -> None:
    assert KissCode.from_refid(b"RATE") is KissCode.RATE
    assert KissCode.from_refid(b"DENY") is KissCode.DENY
    assert KissCode.from_refid(b"RSTR") is KissCode.RSTR
    for other in (b"INIT", b"AUTH", b"\0\0\0\0", b"GPS\0", b"\xff\xfe\0\0"):
        assert KissCode.from_refid(other) is None
    assert kiss_reason(KissCode.RATE) is Reason.KOD_RATE and Reason.KOD_RATE.kiss is KissCode.RATE
    assert [c.refuses_service for c in KissCode] == [False, True, True, False]
    assert Reason.BOGUS.kiss is None and Reason.OK.kiss is None
    assert f"kod_{KissCode.DENY}" == "kod_DENY"  # formats as its code in messages


# ----------------------------------------------------------------- the exchange object


def answer(request: bytes) -> bytes:
    """A synchronized server's genuine reply to ``request``."""
    good = SystemState(
        leap=0,
        stratum=1,
        refid=refid_from_text("GPS"),
        reference_ns=NOW - NS_PER_S,
        root_delay_ns=0,
        root_dispersion_ns=10_000,
        precision=-20,
    )
    reply, _ = Responder(good).handle(request, PEER, unix_ns_to_ntp(NOW + 500), NOW + 500)
    assert reply is not None
    return reply.finalize(unix_ns_to_ntp(NOW + 600))


def test_exchange_carries_the_cookie_and_judges_its_reply() -> None:
    ex = ClientExchange.start(COOKIE, version=3, poll=7)
    pkt = decode(ex.request)
    assert (pkt.transmit_ts, pkt.version, pkt.poll, pkt.mode) == (COOKIE, 3, 7, MODE_CLIENT)
    with pytest.raises(ReplyRejected) as info:
        ex.receive(answer(ex.request), NOW + 1_000)
    assert info.value.reason is Reason.UNEXPECTED  # not sent yet: no T1
    ex.sent(NOW)
    sample = ex.receive(answer(ex.request), NOW + 1_000)
    assert sample.t1_ns == NOW and sample.t4_ns == NOW + 1_000 and sample.synchronized
    other = ClientExchange.start(COOKIE + 1)
    with pytest.raises(ReplyRejected) as info:
        ex.receive(answer(other.request), NOW + 1_000)
    assert info.value.reason is Reason.BOGUS


class RecordingAuth:
    """An authenticator that tags requests and refuses replies whose refid is not GPS."""

    def __init__(self) -> None:
        self.verified: list[int] = []

    def protect(self, request: bytes) -> bytes:
        return request + bytes(4) + b"TAG!" * 4  # a 20-byte "MAC" trailer

    def verify(self, data: bytes, packet: Packet) -> None:
        self.verified.append(packet.origin_ts)
        if packet.refid != refid_from_text("GPS"):
            raise ReplyRejected(Reason.AUTH, "not signed")


def test_authentication_plugs_into_the_exchange() -> None:
    auth = RecordingAuth()
    ex = ClientExchange.start(COOKIE, auth=auth)
    assert len(ex.request) == 48 + 20 and ex.request.endswith(b"TAG!")
    ex.sent(NOW)
    assert ex.receive(answer(ex.request[:48]), NOW + 1_000).synchronized
    # A kiss is only read once the authenticator accepted the reply.
    with pytest.raises(ReplyRejected) as info:
        ex.receive(stratum0("DENY"), NOW + 1_000)
    assert info.value.reason is Reason.AUTH and not isinstance(info.value, KissOfDeath)
    # A reply that does not answer our request never reaches the authenticator.
    with pytest.raises(ReplyRejected):
        parse_reply(stratum0("DENY"), COOKIE + 1, NOW, NOW + 1, auth=auth)
    assert auth.verified == [COOKIE, COOKIE]
