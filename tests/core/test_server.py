"""Responder semantics (RFC 5905 / ntpd): what is answered, how, and what is dropped."""

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.auth import MacKey
from ntpy.core.exchange import build_request, parse_reply
from ntpy.core.packet import LEAP_ALARM, decode, refid_from_text
from ntpy.core.server import Reason, Responder
from ntpy.core.system import REFID_LOCL, LocalReference, unsynchronized
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

REFID_LOCAL0 = 0x7F7F0100  # 127.127.1.0: what ntpd serves when synced to LOCAL above stratum 1
NOW = 1_790_000_000 * NS_PER_S
PEER = ("192.0.2.1", 40000)
KEY = MacKey(42, "md5", b"sekrit")


def synced_responder(keys: dict[int, MacKey] | None = None) -> Responder:
    return Responder(LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24), keys)


def request(
    version: int = 4, mode: int = 3, poll: int = 6, xmt: int = 0xDEADBEEF_01234567
) -> bytes:
    return bytes([(version << 3) | mode, 0, poll, 0]) + bytes(36) + struct.pack("!Q", xmt)


def answer(resp: Responder, req: bytes, tx: int = 0) -> tuple[bytes | None, Reason]:
    reply, reason = resp.handle(req, PEER, unix_ns_to_ntp(NOW), NOW)
    return (reply.finalize(tx or unix_ns_to_ntp(NOW + 5000)) if reply else None), reason


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_client_request_answered_with_same_version(version: int) -> None:
    out, reason = answer(
        synced_responder(), request(version=version, mode=0 if version == 1 else 3)
    )
    assert reason is Reason.SERVED and out is not None
    p = decode(out)
    assert (p.version, p.mode, p.leap, p.stratum) == (version, 4, 0, 11)
    assert p.origin_ts == 0xDEADBEEF_01234567
    assert p.receive_ts == unix_ns_to_ntp(NOW) | 1  # the interleaved-mode mark
    assert p.transmit_ts == unix_ns_to_ntp(NOW + 5000) & ~1
    assert p.refid == REFID_LOCAL0 and p.poll == 6 and p.precision == -24
    assert p.reference_ts == unix_ns_to_ntp(NOW - 10 * NS_PER_S)
    assert p.root_delay == 0 and 0 < p.root_dispersion < 0x10000


def test_root_dispersion_grows_with_age() -> None:
    r = synced_responder()
    a = decode(answer(r, request())[0] or b"").root_dispersion
    r.set_state(LocalReference.ntpd_style(10).state(NOW - 1000 * NS_PER_S, -24))
    b = decode(answer(r, request())[0] or b"").root_dispersion
    # 990 s more at 15 ppm = 14.85 ms more dispersion
    assert abs((b - a) / 65536 - 0.01485) < 0.0002


def test_unsynchronized_server_says_so() -> None:
    out, reason = answer(Responder(unsynchronized(-24)), request())
    p = decode(out or b"")
    assert reason is Reason.SERVED
    assert p.leap == LEAP_ALARM and p.stratum == 0 and p.refid == refid_from_text("INIT")
    assert p.reference_ts == 0


def test_symmetric_active_gets_passive_reply() -> None:
    out, _ = answer(synced_responder(), request(mode=1))
    assert decode(out or b"").mode == 2


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (2, Reason.NOT_REQUEST),
        (4, Reason.NOT_REQUEST),
        (5, Reason.NOT_REQUEST),
        (6, Reason.CONTROL),
        (7, Reason.PRIVATE),
        (0, Reason.BAD_MODE),
    ],
)
def test_never_answers_replies_broadcasts_or_private(mode: int, reason: Reason) -> None:
    assert answer(synced_responder(), request(mode=mode)) == (None, reason)


@pytest.mark.parametrize("version", [0, 5, 7])
def test_bad_versions_dropped(version: int) -> None:
    assert answer(synced_responder(), request(version=version)) == (None, Reason.BAD_VERSION)


def test_short_and_bad_port() -> None:
    r = synced_responder()
    assert answer(r, request()[:47]) == (None, Reason.TOO_SHORT)
    assert answer(r, b"") == (None, Reason.TOO_SHORT)
    reply, reason = r.handle(request(), ("192.0.2.1", 0), 0, NOW)
    assert reply is None and reason is Reason.BAD_PORT


def test_malformed_trailer_dropped() -> None:
    assert answer(synced_responder(), request() + bytes(7)) == (None, Reason.MALFORMED)


def test_unknown_extension_fields_ignored_reply_is_plain() -> None:
    req = request() + struct.pack("!HH", 0x7777, 32) + bytes(28)
    out, reason = answer(synced_responder(), req)
    assert reason is Reason.SERVED and out is not None and len(out) == 48


def test_authenticated_request_gets_mac_reply() -> None:
    req = request()
    req += struct.pack("!I", 42) + hashlib.md5(b"sekrit" + req).digest()
    out, reason = answer(synced_responder({42: KEY}), req)
    assert reason is Reason.SERVED_AUTH and out is not None and len(out) == len(req)
    p = decode(out)
    assert p.mac is not None and p.mac.keyid == 42
    assert p.mac.digest == hashlib.md5(b"sekrit" + out[:48]).digest()


@pytest.mark.parametrize("keyid", [42, 43])
def test_bad_mac_gets_crypto_nak(keyid: int) -> None:
    req = request() + struct.pack("!I", keyid) + bytes(16)
    out, reason = answer(synced_responder({42: KEY}), req)
    assert reason is Reason.CRYPTO_NAK and out is not None
    assert len(out) == 52 and out[48:] == bytes(4)


def test_client_roundtrip_offset_and_delay() -> None:
    cookie = 0x0102030405060708
    req = build_request(cookie, version=4)
    t1 = NOW - 300_000  # client is 0 offset; 300 us outbound, 200 us back
    reply, _ = synced_responder().handle(req, PEER, unix_ns_to_ntp(NOW), NOW)
    assert reply is not None
    out = reply.finalize(unix_ns_to_ntp(NOW + 100_000))
    s = parse_reply(out, cookie, t1, NOW + 300_000)
    assert abs(s.delay_ns - 500_000) <= 2 and abs(s.offset_ns - 50_000) <= 2
    assert s.synchronized and s.stratum == 11 and s.refid == REFID_LOCAL0
    assert s.refid_text == "127.127.1.0"


@settings(max_examples=3000)
@given(st.binary(max_size=300), st.sampled_from([None, ("198.51.100.9", 123), ("::1", 5, 0, 0)]))
def test_fuzz_responder_never_raises_never_amplifies(
    data: bytes, peer: tuple[object, ...] | None
) -> None:
    for r in (synced_responder({42: KEY}), Responder(unsynchronized(-20))):
        reply, reason = r.handle(data, peer, 123, NOW)
        assert isinstance(reason, Reason)
        if reply is not None:
            out = reply.finalize(456)
            assert len(out) <= len(data)
            assert decode(out).mode in (2, 4)


@settings(max_examples=1000)
@given(st.integers(1, 4), st.sampled_from([1, 3]), st.binary(min_size=0, max_size=200))
def test_fuzz_valid_headers_with_random_trailers(version: int, mode: int, tail: bytes) -> None:
    req = request(version=version, mode=mode) + tail
    reply, _ = synced_responder({42: KEY}).handle(req, PEER, 1, NOW)
    if reply is not None:
        assert len(reply.finalize(2)) <= len(req)


def test_local_clock_refid_follows_ntpd() -> None:
    """ntpd's clock_update(): peer refid at stratum 1, the refclock address above."""
    assert LocalReference.ntpd_style(0).refid == REFID_LOCL
    assert LocalReference.ntpd_style(0).served_stratum == 1
    assert LocalReference.ntpd_style(10, unit=3).refid == 0x7F7F0103
    assert LocalReference.ntpd_style(15).served_stratum == 15
