"""Packet codec: header, RFC 7822 extension fields, legacy MAC; parse-or-PacketError."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.packet import (
    MAC_LENGTHS,
    ExtensionField,
    Mac,
    Packet,
    PacketError,
    decode,
    encode,
    refid_from_ipv4,
    refid_from_text,
    refid_to_text,
)


def header(**kw: int) -> Packet:
    base = dict(
        leap=0,
        version=4,
        mode=3,
        stratum=0,
        poll=6,
        precision=-20,
        root_delay=0,
        root_dispersion=0,
        refid=0,
        reference_ts=0,
        origin_ts=0,
        receive_ts=0,
        transmit_ts=0x1234_5678_9ABC_DEF0,
    )
    base.update(kw)
    return Packet(**base)  # type: ignore[arg-type]


def test_decode_header_fields() -> None:
    raw = (
        bytes([0xE3, 2, 6, 0xEC])
        + struct.pack("!III", 0x10, 0x20, 0x7F000001)
        + struct.pack("!QQQQ", 1, 2, 3, 4)
    )
    p = decode(raw)
    assert (p.leap, p.version, p.mode, p.stratum, p.poll, p.precision) == (3, 4, 3, 2, 6, -20)
    assert (p.root_delay, p.root_dispersion, p.refid) == (0x10, 0x20, 0x7F000001)
    assert (p.reference_ts, p.origin_ts, p.receive_ts, p.transmit_ts) == (1, 2, 3, 4)
    assert p.extensions == () and p.mac is None
    assert encode(p) == raw


@pytest.mark.parametrize("n", [0, 1, 47])
def test_too_short(n: int) -> None:
    with pytest.raises(PacketError, match="too short"):
        decode(bytes(n))


@pytest.mark.parametrize("digest_len", [0, 8, 16, 20])
def test_mac_trailer(digest_len: int) -> None:
    p = header(mac=Mac(7, bytes(range(digest_len))))
    raw = encode(p)
    q = decode(raw)
    assert q.mac == Mac(7, bytes(range(digest_len)))
    assert q.mac_offset == 48
    assert q.mac.is_crypto_nak == (digest_len == 0)


def test_extension_fields_then_mac() -> None:
    p = header(
        extensions=(ExtensionField(0x0104, b"u" * 32), ExtensionField(0x0204, b"c" * 100)),
        mac=Mac(1, b"d" * 20),
    )
    raw = encode(p)
    assert len(raw) == 48 + 36 + 104 + 24
    q = decode(raw)
    assert [e.field_type for e in q.extensions] == [0x0104, 0x0204]
    assert q.extensions[0].body == b"u" * 32
    assert q.mac_offset == 48 + 36 + 104


def test_short_extension_is_padded_to_16() -> None:
    raw = encode(
        header(extensions=(ExtensionField(0x2000, b"ab"), ExtensionField(0x2001, b"x" * 24)))
    )
    assert struct.unpack_from("!HH", raw, 48) == (0x2000, 16)
    assert decode(raw).extensions[0].body == b"ab" + bytes(10)


@pytest.mark.parametrize("flen", [0, 4, 12, 18, 1000])
def test_bad_extension_length(flen: int) -> None:
    raw = encode(header()) + struct.pack("!HH", 0x0104, flen) + bytes(28)
    with pytest.raises(PacketError, match="bad length"):
        decode(raw)


def test_v3_with_trailing_junk_is_rejected() -> None:
    with pytest.raises(PacketError, match="not a MAC"):
        decode(encode(header(version=3)) + bytes(32))


def test_odd_trailer() -> None:
    with pytest.raises(PacketError):
        decode(encode(header()) + bytes(7))


def test_refids() -> None:
    assert refid_to_text(refid_from_text("LOCL"), 1) == "LOCL"
    assert refid_to_text(refid_from_text("GPS"), 1) == "GPS"
    assert refid_to_text(refid_from_ipv4("192.0.2.7"), 2) == "192.0.2.7"
    with pytest.raises(ValueError):
        refid_from_ipv4("300.1.1.1")


@settings(max_examples=2000)
@given(st.binary(max_size=600))
def test_fuzz_decode_parses_or_raises_packet_error(data: bytes) -> None:
    try:
        p = decode(data)
    except PacketError:
        return
    # Whatever parses re-encodes to the same bytes (the codec loses nothing it accepted),
    # except padding of short extension bodies, which decode keeps as body bytes.
    assert encode(p) == data


@settings(max_examples=1000)
@given(
    st.binary(min_size=48, max_size=48),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=12, max_size=64)), max_size=3),
    st.sampled_from([None, 0, 8, 16, 20]),
)
def test_fuzz_structured(head: bytes, efs: list[tuple[int, bytes]], mac_len: int | None) -> None:
    p = decode(head)
    fields = tuple(ExtensionField(t, b + bytes((-len(b)) % 4)) for t, b in efs)
    p2 = Packet(
        **{
            **{s: getattr(p, s) for s in Packet.__slots__},
            "version": 4,  # type: ignore[arg-type]
            "extensions": fields,
            "mac": None if mac_len is None else Mac(5, bytes(mac_len)),
        }
    )
    raw = encode(p2)
    tail = fields[-1].encoded_length() + (0 if mac_len is None else 4 + mac_len) if fields else 0
    if tail in MAC_LENGTHS:
        return  # inherently ambiguous on the wire (e.g. a 16-byte field + crypto-NAK = a MD5 MAC)
    try:
        q = decode(raw)
    except PacketError:
        # Only legal rejection: a last field < 28 bytes with no MAC looks like a MAC or garbage.
        assert mac_len is None and fields
        return
    if mac_len is not None or not fields or fields[-1].encoded_length() >= 28:
        assert q.extensions == fields
        assert q.mac == p2.mac
