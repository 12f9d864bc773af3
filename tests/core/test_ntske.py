"""NTS-KE records (RFC 8915 section 4): codec, the server's respond, the client's parse."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nts_helpers import FakeTls, rand, ring

from ntpy.core import ntsaead
from ntpy.core.ntscookie import CookieKeys, cookie_length
from ntpy.core.ntske import (
    MAX_MESSAGE_LEN,
    Direction,
    ErrorCode,
    NtsKeError,
    Record,
    RecordType,
    decode_message,
    encode_message,
    exporter_context,
    message_length,
    u16_record,
)
from ntpy.core.ntskeclient import client_request, parse_response
from ntpy.core.ntskeserver import KeServerConfig, respond, serve_message

SIV = ntsaead.AEAD_AES_SIV_CMAC_256
GCM = ntsaead.AEAD_AES_128_GCM_SIV
HAS_GCM = GCM in ntsaead.supported()
NTPV4 = u16_record(RecordType.NEXT_PROTOCOL, (0,), critical=True)


def siv_only() -> KeServerConfig:
    return KeServerConfig(aeads=(SIV,))


def serve(records: list[Record], config: KeServerConfig | None = None):  # type: ignore[no-untyped-def]
    return serve_message(
        encode_message(records), config or siv_only(), ring(), FakeTls().export, rand
    )


def error_of(reply_records: tuple[Record, ...]) -> int | None:
    for r in reply_records:
        if r.record_type == RecordType.ERROR:
            return r.u16s()[0]
    return None


# -- codec ---------------------------------------------------------------------------------


def test_record_wire_format_and_critical_bit() -> None:
    assert NTPV4.encode() == bytes.fromhex("80010002 0000")
    assert Record(RecordType.NEW_COOKIE, b"ab").encode() == bytes.fromhex("00050002 6162")
    assert encode_message([]) == bytes.fromhex("80000000")
    assert decode_message(bytes.fromhex("80010002000080000000")) == (NTPV4,)


def test_exporter_context_rfc8915_5_1() -> None:
    assert exporter_context(SIV, Direction.C2S) == bytes.fromhex("00 00 00 0f 00")
    assert exporter_context(SIV, Direction.S2C) == bytes.fromhex("00 00 00 0f 01")
    assert exporter_context(GCM, Direction.S2C) == bytes.fromhex("00 00 00 1e 01")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("8001"),
        bytes.fromhex("80010002 0000"),  # no End of Message
        bytes.fromhex("00000000"),  # End of Message not critical
        bytes.fromhex("80000001 00"),  # End of Message with a body
        bytes.fromhex("80000000 00"),  # trailing byte
    ],
)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(NtsKeError) as err:
        decode_message(data)
    assert err.value.code == ErrorCode.BAD_REQUEST


def test_message_length_streams_and_bounds() -> None:
    msg = client_request((SIV,))
    for cut in range(len(msg)):
        assert message_length(msg[:cut]) is None
    assert message_length(msg + b"extra") == len(msg)
    with pytest.raises(NtsKeError):  # one record longer than allowed
        message_length(struct.pack("!HH", 5, 4000))
    filler = Record(0x4000, bytes(1000)).encode() * 17
    with pytest.raises(NtsKeError):
        message_length(filler)
    assert len(filler) > MAX_MESSAGE_LEN


# -- server ----------------------------------------------------------------------------------


def test_respond_happy_path() -> None:
    tls = FakeTls()
    keys = ring()
    reply = serve_message(client_request((SIV,)), siv_only(), keys, tls.export, rand)
    assert reply.error is None and reply.aead == SIV
    types = [r.record_type for r in reply.records]
    assert types[:2] == [RecordType.NEXT_PROTOCOL, RecordType.AEAD_ALGORITHM]
    cookies = [r.body for r in reply.records if r.record_type == RecordType.NEW_COOKIE]
    assert len(cookies) == 8 and all(len(c) == cookie_length(SIV) for c in cookies)
    assert len(set(cookies)) == 8
    assert all(not r.critical for r in reply.records if r.record_type == RecordType.NEW_COOKIE)
    assert tls.contexts == [exporter_context(SIV, d) for d in Direction]
    opened = keys.open(cookies[0])
    assert opened is not None
    assert opened.c2s == FakeTls().export(exporter_context(SIV, Direction.C2S), 32)
    assert RecordType.NTPV4_PORT not in types and RecordType.NTPV4_SERVER not in types


def test_respond_port_and_server_negotiation() -> None:
    config = KeServerConfig(aeads=(SIV,), ntp_server="ntp1.example.net", ntp_port=1123)
    reply = serve_message(client_request((SIV,)), config, ring(), FakeTls().export, rand)
    result = parse_response(reply.message, (SIV,))
    assert result.server == "ntp1.example.net" and result.port == 1123


def test_server_prefers_siv_and_falls_back() -> None:
    config = KeServerConfig(aeads=(SIV, GCM))
    reply = serve_message(client_request((GCM, SIV)), config, ring(), FakeTls().export, rand)
    assert reply.aead == SIV
    reply = serve([NTPV4, u16_record(RecordType.AEAD_ALGORITHM, (99, 7), True)])
    assert reply.error is None and reply.aead is None
    assert [r.body for r in reply.records] == [b"\0\0", b""]  # empty AEAD: none in common


@pytest.mark.skipif(not HAS_GCM, reason="cryptography without AES-GCM-SIV")
@pytest.mark.parametrize("compliant", [True, False])
def test_gcm_siv_exporter_context(compliant: bool) -> None:
    records = [NTPV4, u16_record(RecordType.AEAD_ALGORITHM, (GCM,), True)]
    if compliant:
        records.append(Record(RecordType.COMPLIANT_128GCM_EXPORT))
    tls = FakeTls()
    reply = serve_message(
        encode_message(records), KeServerConfig(aeads=(GCM, SIV)), ring(), tls.export, rand
    )
    result = parse_response(reply.message, (GCM,))
    assert result.aead == GCM and result.key_length == 16
    assert result.exporter_aead == (GCM if compliant else SIV)
    assert tls.contexts[0] == exporter_context(result.exporter_aead, Direction.C2S)


def test_no_common_protocol_gets_empty_next_protocol() -> None:
    reply = serve([u16_record(RecordType.NEXT_PROTOCOL, (0x8001,), True)])
    assert reply.records == (Record(RecordType.NEXT_PROTOCOL, b"", True),)


@pytest.mark.parametrize(
    ("records", "code"),
    [
        ([], ErrorCode.BAD_REQUEST),
        ([NTPV4], ErrorCode.BAD_REQUEST),  # NTPv4 without AEAD
        ([NTPV4, NTPV4], ErrorCode.BAD_REQUEST),
        ([Record(RecordType.NEXT_PROTOCOL, b"\0", True)], ErrorCode.BAD_REQUEST),
        ([Record(RecordType.NEXT_PROTOCOL, b"", True)], ErrorCode.BAD_REQUEST),
        ([NTPV4, Record(RecordType.NEW_COOKIE, b"x")], ErrorCode.BAD_REQUEST),
        ([NTPV4, u16_record(RecordType.ERROR, (1,), True)], ErrorCode.BAD_REQUEST),
        ([NTPV4, u16_record(RecordType.WARNING, (1,), True)], ErrorCode.BAD_REQUEST),
        ([NTPV4, Record(0x1234, b"", True)], ErrorCode.UNRECOGNIZED_CRITICAL_RECORD),
    ],
)
def test_respond_errors(records: list[Record], code: ErrorCode) -> None:
    reply = serve(records)
    assert reply.error == code
    assert reply.records == (u16_record(RecordType.ERROR, (int(code),), True),)
    assert decode_message(reply.message) == reply.records


def test_unknown_noncritical_and_client_suggestions_ignored() -> None:
    aead = u16_record(RecordType.AEAD_ALGORITHM, (SIV,), True)
    extra = [Record(0x1234, b"whatever"), Record(RecordType.NTPV4_SERVER, b"x", True)]
    extra.append(u16_record(RecordType.NTPV4_PORT, (5,), True))
    reply = serve([NTPV4, aead, *extra])
    assert reply.error is None and reply.aead == SIV


def test_internal_error_without_cookie_key_or_exporter() -> None:
    msg = client_request((SIV,))
    reply = serve_message(msg, siv_only(), CookieKeys(rotate_ns=0), FakeTls().export, rand)
    assert reply.error == ErrorCode.INTERNAL_SERVER_ERROR

    def broken(context: bytes, length: int) -> bytes:
        raise OSError("exporter failed")

    reply = serve_message(msg, siv_only(), ring(), broken, rand)
    assert reply.error == ErrorCode.INTERNAL_SERVER_ERROR
    assert respond((), siv_only(), ring(), broken, rand).error == ErrorCode.BAD_REQUEST


# -- client ----------------------------------------------------------------------------------


def test_client_request_records() -> None:
    records = decode_message(client_request((SIV,)))
    assert records == (NTPV4, u16_record(RecordType.AEAD_ALGORITHM, (SIV,), True))
    if HAS_GCM:
        records = decode_message(client_request((GCM, SIV)))
        assert Record(RecordType.COMPLIANT_128GCM_EXPORT) in records


def response(*records: Record) -> bytes:
    return encode_message(list(records))


AEAD_OK = u16_record(RecordType.AEAD_ALGORITHM, (SIV,), True)
COOKIE = Record(RecordType.NEW_COOKIE, b"c" * 100)


def test_parse_response_keeps_at_most_eight_cookies() -> None:
    result = parse_response(response(NTPV4, AEAD_OK, *[COOKIE] * 12), (SIV,))
    assert len(result.cookies) == 8 and result.aead == SIV == result.exporter_aead
    assert result.server is None and result.port is None


@pytest.mark.parametrize(
    ("records", "code"),
    [
        ((u16_record(RecordType.ERROR, (2,), True),), ErrorCode.INTERNAL_SERVER_ERROR),
        ((NTPV4, AEAD_OK, COOKIE, u16_record(RecordType.WARNING, (0,), True)), 1),
        ((NTPV4, AEAD_OK), 1),  # no cookie
        ((AEAD_OK, COOKIE), 1),  # no protocol
        ((NTPV4, COOKIE), 1),  # no AEAD
        ((NTPV4, u16_record(RecordType.AEAD_ALGORITHM, (GCM,), True), COOKIE), 1),  # not offered
        ((NTPV4, AEAD_OK, AEAD_OK, COOKIE), 1),
        ((NTPV4, AEAD_OK, Record(RecordType.NEW_COOKIE, b"")), 1),
        ((NTPV4, AEAD_OK, COOKIE, Record(RecordType.NTPV4_PORT, b"\0", True)), 1),
        ((NTPV4, AEAD_OK, COOKIE, Record(RecordType.NTPV4_SERVER, b"a b", True)), 1),
        ((NTPV4, AEAD_OK, COOKIE, Record(0x2000, b"", True)), 0),
    ],
)
def test_parse_response_refuses(records: tuple[Record, ...], code: int) -> None:
    with pytest.raises(NtsKeError) as err:
        parse_response(response(*records), (SIV,))
    assert err.value.code == code


def test_parse_response_ignores_unknown_noncritical() -> None:
    result = parse_response(response(NTPV4, AEAD_OK, Record(0x2000, b"zz"), COOKIE), (SIV,))
    assert result.cookies == (COOKIE.body,)


# -- properties ------------------------------------------------------------------------------

records_st = st.builds(
    Record,
    st.integers(0, 0x7FFF) | st.sampled_from(list(RecordType)),
    st.binary(max_size=40),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.lists(records_st, max_size=6).map(encode_message))
def test_any_bytes_decode_or_nts_ke_error(data: bytes) -> None:
    with contextlib.suppress(NtsKeError):
        decode_message(data)
    with contextlib.suppress(NtsKeError):
        message_length(data)
    with contextlib.suppress(NtsKeError):
        parse_response(data, (SIV, GCM))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.lists(records_st, max_size=6).map(encode_message))
def test_server_answers_anything_with_a_valid_message(data: bytes) -> None:
    reply = serve_message(data, siv_only(), ring(), FakeTls().export, rand)
    records = decode_message(reply.message)
    assert (reply.error is None) == (error_of(records) is None)
    if reply.error is not None:
        assert len(records) == 1


def test_round_trip_client_server_agree_on_keys() -> None:
    tls = FakeTls(b"one session")
    keys = ring()
    reply = serve_message(client_request((SIV,)), siv_only(), keys, tls.export, rand)
    result = parse_response(reply.message, (SIV,))
    c2s = tls.export(exporter_context(result.exporter_aead, Direction.C2S), result.key_length)
    opened = keys.open(result.cookies[0])
    assert opened is not None and opened.c2s == c2s and opened.aead == SIV


@pytest.mark.parametrize(
    "kwargs",
    [{"aeads": ()}, {"aeads": (99,)}, {"ntp_port": 0}, {"cookies": 9}, {"ntp_server": "ü"}],
)
def test_server_config_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        KeServerConfig(**kwargs)  # type: ignore[arg-type]
