"""NTS in the one serve decision (``Responder._general`` via ``ntpy.core.ntsserve``).

What it proves: an NTS request from ``NtsClientSession`` gets an Answer whose reply is
sealed only at ``finalize`` (so T3 is covered) and verifies on the client, with fresh
cookies refilling its jar; the reply is never larger than the request; an unknown cookie
and a tampered authenticator get an NTS NAK (kiss NTSN echoing the Unique Identifier);
malformed NTS fields are dropped with a named reason; without ``nts`` set the NTS fields
are ignored (a plain 48-byte answer).
"""

from __future__ import annotations

from nts_helpers import T0, header, rand, ring
from test_ntsef import key_exchange

from ntpy.core.decision import Answer, Drop, Reason
from ntpy.core.ntsef import NTS_NAK_REFID, Failure, NtsError
from ntpy.core.ntsserve import NtsServing
from ntpy.core.packet import decode, refid_from_text
from ntpy.core.server import Responder, decide
from ntpy.core.system import SystemState

CLIENT = ("192.0.2.1", 40000)
TX = 0xE000_0000_1234_5678


def responder(keys: object | None = None) -> Responder:
    r = Responder(SystemState(0, 2, 0x47505300, T0 - 3 * 10**9, 123_456, 789_012, -23))
    if keys is not None:
        r.nts = NtsServing(keys, rand)  # type: ignore[arg-type]
    return r


def test_nts_request_gets_sealed_reply_that_verifies() -> None:
    keys = ring()
    r = responder(keys)
    session = key_exchange(keys)
    for _ in range(3):
        before = len(session.cookies)
        request = session.protect(header())
        d = decide(request, CLIENT, T0, r)
        assert isinstance(d, Answer) and d.reason is Reason.SERVED_NTS
        out = d.reply.finalize(TX)
        assert len(out) <= len(request)
        packet = decode(out)
        assert int.from_bytes(out[40:48], "big") == TX  # T3 is in what the AEAD covers
        session.verify(out, packet)
        assert len(session.cookies) == before  # one used, one received
    assert r.nts is not None and r.nts.cookies_issued == 3


def test_session_refills_from_placeholders() -> None:
    keys = ring()
    r = responder(keys)
    session = key_exchange(keys)
    for _ in range(3):
        session.cookies.popleft()
    request = session.protect(header())
    d = decide(request, CLIENT, T0, r)
    assert isinstance(d, Answer)
    out = d.reply.finalize(TX)
    assert len(out) <= len(request)
    session.verify(out, decode(out))
    assert len(session.cookies) == 8


def test_unknown_cookie_gets_nak() -> None:
    session = key_exchange(ring())
    r = responder(ring(T0 + 1))  # another ring: the cookie names no key held
    request = session.protect(header())
    d = decide(request, CLIENT, T0, r)
    assert isinstance(d, Answer) and d.reason is Reason.NTS_NAK
    out = d.reply.finalize(TX)
    assert len(out) <= len(request)
    packet = decode(out)
    assert packet.stratum == 0 and packet.refid == refid_from_text(NTS_NAK_REFID)
    try:
        session.verify(out, packet)
    except NtsError as exc:
        assert exc.failure is Failure.NAK
    else:
        raise AssertionError("the NAK was not recognized")


def test_tampered_request_gets_nak_or_drop() -> None:
    keys = ring()
    r = responder(keys)
    session = key_exchange(keys)
    request = bytearray(session.protect(header()))
    request[-5] ^= 1  # inside the authenticator's ciphertext
    d = decide(bytes(request), CLIENT, T0, r)
    assert d.reason in (Reason.NTS_NAK, Reason.NTS_MALFORMED)
    if isinstance(d, Answer):
        assert len(d.reply.finalize(TX)) <= len(request)


def test_tampered_header_gets_nak() -> None:
    keys = ring()
    r = responder(keys)
    request = bytearray(key_exchange(keys).protect(header()))
    request[24] ^= 0x80  # the origin timestamp the AEAD covers
    d = decide(bytes(request), CLIENT, T0, r)
    assert d.reason is Reason.NTS_NAK


def test_malformed_nts_request_is_dropped() -> None:
    keys = ring()
    r = responder(keys)
    request = key_exchange(keys).protect(header())
    # cut the authenticator off: a Unique Identifier and a cookie but no authenticator
    uid_and_cookie = request[: 48 + 36 + 4 + 104]
    d = decide(uid_and_cookie, CLIENT, T0, r)
    assert isinstance(d, Drop) and d.reason is Reason.NTS_MALFORMED


def test_without_nts_the_fields_are_ignored() -> None:
    keys = ring()
    request = key_exchange(keys).protect(header())
    d = decide(request, CLIENT, T0, responder())
    assert isinstance(d, Answer) and d.reason is Reason.SERVED
    assert len(d.reply.finalize(TX)) == 48
