"""NTS for NTP in memory: a client session and the server check/reply talking bytes.

What it proves: the client builds a request with a cookie the key exchange issued, the
server verifies it and replies with fresh cookies inside the authenticator, the client
verifies the reply and refills its jar; the reply is never larger than the request; any
flipped bit in what is authenticated is refused on both sides; unknown or expired cookie
keys get an NTS NAK, which the client recognizes; and no bytes make a parser raise
anything but ``NtsError``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nts_helpers import T0, FakeTls, header, rand, ring, server_header

from ntpy.core import ntsaead
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntscookie import DEFAULT_ROTATE_NS, CookieKeys
from ntpy.core.ntsef import (
    AUTHENTICATOR,
    MIN_UNIQUE_ID,
    NTS_NAK_REFID,
    UNIQUE_IDENTIFIER,
    Failure,
    NtsError,
    NtsRequest,
    authenticator_body,
    check_request,
    decode_fields,
    encode_fields,
    nak_fields,
    parse_authenticator,
    seal_reply,
)
from ntpy.core.ntske import Direction, exporter_context
from ntpy.core.ntskeclient import client_request, parse_response
from ntpy.core.ntskeserver import KeServerConfig, serve_message
from ntpy.core.packet import ExtensionField, PacketError, decode, decode_trailer, refid_from_text

SIV = ntsaead.AEAD_AES_SIV_CMAC_256


def key_exchange(keys: CookieKeys, aead: int = SIV) -> NtsClientSession:
    """A whole NTS-KE in memory: client request -> server respond -> client parse."""
    tls = FakeTls()
    config = KeServerConfig(aeads=(aead,))
    reply = serve_message(client_request((aead,)), config, keys, tls.export, rand)
    result = parse_response(reply.message, (aead,))
    c2s = tls.export(exporter_context(result.exporter_aead, Direction.C2S), result.key_length)
    s2c = tls.export(exporter_context(result.exporter_aead, Direction.S2C), result.key_length)
    return NtsClientSession(result.aead, c2s, s2c, result.cookies, rand)


def server_check(data: bytes, keys: CookieKeys) -> NtsRequest | None:
    fields, _mac, mac_offset = decode_trailer(data, 4)
    return check_request(data, fields, mac_offset, keys)


def exchange(session: NtsClientSession, keys: CookieKeys) -> tuple[bytes, bytes]:
    request = session.protect(header())
    checked = server_check(request, keys)
    assert checked is not None
    return request, seal_reply(server_header(), checked, keys, rand)


@pytest.mark.parametrize("aead", ntsaead.supported())
def test_round_trip_refills_cookies(aead: int) -> None:
    keys = ring()
    session = key_exchange(keys, aead)
    assert len(session.cookies) == 8
    for _ in range(3):
        request, reply = exchange(session, keys)
        assert len(reply) <= len(request)
        assert len(session.cookies) == 7
        session.verify(reply, decode(reply))
        assert len(session.cookies) == 8 and session.pending is None
    # Running down the jar: each request asks for what is missing, with placeholders.
    for _ in range(4):
        session.cookies.pop()
    request, reply = exchange(session, keys)
    checked = server_check(request, keys)
    assert checked is not None and checked.cookies_wanted == 5
    session.verify(reply, decode(reply))
    assert len(session.cookies) == 8 and not session.needs_key_exchange


def test_reply_never_larger_than_request() -> None:
    keys = ring()
    session = key_exchange(keys)
    request = session.protect(header())
    checked = server_check(request, keys)
    assert checked is not None
    # A request asking for 8 cookies but shrunk: fewer cookies are sent, never more bytes.
    for size in range(len(request), 150, -37):
        shrunk = NtsRequest(checked.unique_id, checked.keys, 8, size)
        assert len(seal_reply(server_header(), shrunk, keys, rand)) <= size
    with pytest.raises(NtsError):
        seal_reply(server_header(), NtsRequest(checked.unique_id, checked.keys, 1, 100), keys, rand)


def test_every_flipped_request_bit_is_refused() -> None:
    keys = ring()
    session = key_exchange(keys)
    request = session.protect(header())
    assert server_check(request, keys) is not None
    for i in range(len(request) * 8):  # header, fields, and the authenticator itself
        flipped = bytearray(request)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            fields, _mac, mac_offset = decode_trailer(bytes(flipped), 4)
            result = check_request(bytes(flipped), fields, mac_offset, keys)
        except (NtsError, PacketError):
            continue
        assert result is None, f"bit {i} flipped and still accepted"


def test_every_flipped_reply_bit_is_refused() -> None:
    keys = ring()
    session = key_exchange(keys)
    _request, reply = exchange(session, keys)
    uid = session.pending
    for i in range(len(reply) * 8):
        flipped = bytearray(reply)
        flipped[i // 8] ^= 1 << (i % 8)
        session.pending = uid
        try:
            session.verify(bytes(flipped), decode(bytes(flipped)))
        except (NtsError, PacketError):
            continue
        raise AssertionError(f"bit {i} of the reply flipped and still accepted")


def test_unknown_and_expired_cookie_key_get_a_nak() -> None:
    keys = ring(T0)
    session = key_exchange(keys)
    request = session.protect(header())
    with pytest.raises(NtsError) as err:
        server_check(request, ring())  # a server that never issued it
    assert err.value.failure is Failure.BAD_COOKIE and err.value.nak
    assert err.value.unique_id == session.pending
    # Rotation keeps the previous keys valid, then they expire.
    keys.rotate(T0 + DEFAULT_ROTATE_NS, rand)
    keys.rotate(T0 + 2 * DEFAULT_ROTATE_NS, rand)
    assert server_check(request, keys) is not None
    keys.rotate(T0 + 3 * DEFAULT_ROTATE_NS, rand)
    with pytest.raises(NtsError) as err:
        server_check(request, keys)
    assert err.value.nak


def test_client_recognizes_nts_nak() -> None:
    keys = ring()
    session = key_exchange(keys)
    request = session.protect(header())
    with pytest.raises(NtsError) as err:
        server_check(request, ring())
    uid = err.value.unique_id
    assert uid is not None
    nak = server_header(0, refid_from_text(NTS_NAK_REFID)) + nak_fields(uid)
    assert len(nak) <= len(request)
    with pytest.raises(NtsError) as got:
        session.verify(nak, decode(nak))
    assert got.value.failure is Failure.NAK and session.needs_key_exchange
    # A NAK for someone else's identifier is not ours to act on.
    other = key_exchange(keys)
    other.protect(header())
    with pytest.raises(NtsError) as got:
        other.verify(nak, decode(nak))
    assert got.value.failure is Failure.NOT_PENDING and not other.needs_key_exchange


def test_client_refuses_unauthenticated_and_replayed_replies() -> None:
    keys = ring()
    session = key_exchange(keys)
    _request, reply = exchange(session, keys)
    plain = server_header()
    with pytest.raises(NtsError):
        session.verify(plain, decode(plain))
    session.verify(reply, decode(reply))
    with pytest.raises(NtsError) as err:  # the same reply again
        session.verify(reply, decode(reply))
    assert err.value.failure is Failure.NOT_PENDING
    session.cookies.clear()
    with pytest.raises(NtsError) as err:
        session.protect(header())
    assert err.value.failure is Failure.NO_COOKIE and session.needs_key_exchange


def test_server_refuses_malformed_nts_requests() -> None:
    keys = ring()
    session = key_exchange(keys)
    request = session.protect(header())
    fields, _mac, _off = decode_trailer(request, 4)
    assert check_request(header(), (), 48, keys) is None  # no NTS: the plain path
    uid, cookie, auth = fields[0], fields[1], fields[-1]
    cases = {
        "no uid": [cookie, auth],
        "short uid": [ExtensionField(UNIQUE_IDENTIFIER, bytes(16)), cookie, auth],
        "two cookies": [uid, cookie, cookie, auth],
        "no cookie": [uid, auth],
        "no authenticator": [uid, cookie],
        "field after authenticator": [uid, cookie, auth, uid],
        "bad authenticator": [uid, cookie, ExtensionField(AUTHENTICATOR, bytes(12))],
    }
    for name, efs in cases.items():
        data = header() + encode_fields(efs)
        with pytest.raises(NtsError) as err:
            server_check(data, keys)
        assert err.value.failure is Failure.MALFORMED, name
        assert not err.value.nak, name
    with pytest.raises(NtsError) as err:  # a MAC trailer after NTS fields
        server_check(request + bytes(20), keys)
    assert err.value.failure is Failure.MALFORMED


def test_authenticator_padding() -> None:
    body = authenticator_body(b"n" * 12, b"c" * 17)
    assert len(body) == 4 + 12 + 20 + 4  # nonce + padding reaches 16
    assert parse_authenticator(body) == (b"n" * 12, b"c" * 17)
    assert len(authenticator_body(b"n" * 16, b"c" * 16)) == 36


# -- properties ------------------------------------------------------------------------------

_KEYS = ring()
_SESSION = key_exchange(_KEYS)
_REQUEST = _SESSION.protect(header())


def _mutations() -> st.SearchStrategy[bytes]:
    flips = st.sets(st.integers(0, len(_REQUEST) * 8 - 1), min_size=1, max_size=4).map(
        lambda bits: bytes(
            b ^ sum(1 << (i % 8) for i in bits if i // 8 == n) for n, b in enumerate(_REQUEST)
        )
    )
    cuts = st.integers(0, len(_REQUEST)).map(lambda n: _REQUEST[:n])
    fields = st.lists(
        st.builds(
            ExtensionField,
            st.sampled_from([0x0104, 0x0204, 0x0304, 0x0404, 0x2005]),
            st.binary(max_size=120),
        ),
        max_size=5,
    ).map(lambda efs: header() + encode_fields(efs))
    return flips | cuts | fields | st.binary(min_size=48, max_size=300)


@settings(max_examples=500, deadline=None)
@given(_mutations())
def test_server_check_any_bytes(data: bytes) -> None:
    if len(data) < 48:  # _general checks the header length first
        return
    try:
        fields, _mac, mac_offset = decode_trailer(data, 4)
    except PacketError:
        return
    try:
        checked = check_request(data, fields, mac_offset, _KEYS)
    except NtsError as exc:
        if exc.nak:
            assert len(header() + nak_fields(exc.unique_id or b"")) <= len(data)
        return
    if checked is not None:
        assert len(seal_reply(server_header(), checked, _KEYS, rand)) <= len(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=48, max_size=400) | _mutations())
def test_client_verify_any_bytes(data: bytes) -> None:
    session = key_exchange(_KEYS)
    session.protect(header())
    try:
        packet = decode(data)
    except PacketError:
        return
    with pytest.raises(NtsError):
        session.verify(data, packet)


def test_uid_is_caller_random() -> None:
    calls: list[int] = []

    def counting(n: int) -> bytes:
        calls.append(n)
        return bytes(n)

    session = key_exchange(ring())
    session.random_bytes = counting
    session.protect(header())
    assert MIN_UNIQUE_ID in calls and session.pending == bytes(MIN_UNIQUE_ID)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_field_parsers_any_bytes(data: bytes) -> None:
    """The authenticator body and the encrypted-field parsers: a value or NtsError."""
    try:
        nonce, ciphertext = parse_authenticator(data)
        assert nonce and len(ciphertext) >= 16
    except NtsError as exc:
        assert exc.failure is Failure.MALFORMED
    try:
        fields = decode_fields(data)
        assert sum(4 + len(ef.body) for ef in fields) == len(data)
    except NtsError as exc:
        assert exc.failure is Failure.MALFORMED


@given(st.integers(0, 0xFFFF), st.binary(max_size=80))
def test_fast_field_encoding_matches_encode_fields(ftype: int, body: bytes) -> None:
    """The reply path's direct field encoder gives the bytes ``encode_fields`` gives."""
    from ntpy.core.ntsef import _field

    assert _field(ftype, body) == encode_fields([ExtensionField(ftype, body)])
