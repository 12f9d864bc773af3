"""NTP packet codec: the 48-byte header, RFC 7822 extension fields and a legacy MAC trailer.

``decode`` either returns a ``Packet`` or raises ``PacketError`` -- never anything else, for
any input (the fuzz tests hold it to that). ``encode`` is its inverse for well-formed values.

Layout after the header (RFC 7822): zero or more extension fields (NTPv4 only), then an
optional MAC. A field is ``type:u16, length:u16, body``; its length counts the 4-byte
header, is a multiple of 4 and is at least 16. A MAC is ``keyid:u32`` plus a digest: 0
bytes (a crypto-NAK), 8 (legacy DES), 16 (MD5, AES-CMAC) or 20 (SHA-1). Because the last
extension field must be at least 28 bytes when no MAC follows, a trailer of 4, 12, 20 or 24
bytes is read as a MAC, never as a field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

HEADER_LEN = 48
MAC_LENGTHS = frozenset({4, 12, 20, 24})
"""Total MAC trailer sizes (key id + digest) we recognize."""
MIN_EF_LEN = 16
MAX_PACKET_LEN = 65535

LEAP_NONE = 0
LEAP_ADD = 1
LEAP_DEL = 2
LEAP_ALARM = 3
"""Leap indicator 3: the clock is not synchronized."""

MODE_RESERVED = 0
MODE_ACTIVE = 1
MODE_PASSIVE = 2
MODE_CLIENT = 3
MODE_SERVER = 4
MODE_BROADCAST = 5
MODE_CONTROL = 6
MODE_PRIVATE = 7

_HEADER = struct.Struct("!BBbbIII QQQQ".replace(" ", ""))


class PacketError(ValueError):
    """The peer sent bytes that are not a valid NTP packet. The only error decode raises."""


@dataclass(frozen=True, slots=True)
class ExtensionField:
    """One RFC 7822 extension field. ``body`` excludes the 4-byte type/length header."""

    field_type: int
    body: bytes

    def encoded_length(self) -> int:
        """On-wire size: header + body padded to a multiple of 4, at least 16 bytes."""
        n = 4 + len(self.body)
        n = (n + 3) & ~3
        return max(n, MIN_EF_LEN)


@dataclass(frozen=True, slots=True)
class Mac:
    """A legacy symmetric-key MAC trailer. An empty digest is a crypto-NAK."""

    keyid: int
    digest: bytes

    @property
    def is_crypto_nak(self) -> bool:
        return not self.digest


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded NTP packet: timestamps as raw 64-bit NTP integers, delay/dispersion as 16.16."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int
    root_dispersion: int
    refid: int
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int
    extensions: tuple[ExtensionField, ...] = field(default=())
    mac: Mac | None = None
    mac_offset: int = HEADER_LEN
    """Byte offset where the MAC starts (== what the MAC covers), or the packet length."""

    @property
    def refid_bytes(self) -> bytes:
        return self.refid.to_bytes(4, "big")


def decode(data: bytes) -> Packet:
    """Parse an NTP mode 1-5 packet (header, extension fields, MAC) or raise PacketError."""
    n = len(data)
    if n < HEADER_LEN:
        raise PacketError(f"too short: {n} bytes, an NTP header is {HEADER_LEN}")
    if n > MAX_PACKET_LEN:
        raise PacketError(f"too long: {n} bytes")
    (b0, stratum, poll, precision, rdelay, rdisp, refid, ref, org, rec, xmt) = _HEADER.unpack_from(
        data, 0
    )
    version = (b0 >> 3) & 7
    extensions, mac, mac_offset = decode_trailer(data, version)
    return Packet(
        leap=b0 >> 6,
        version=version,
        mode=b0 & 7,
        stratum=stratum,
        poll=poll,
        precision=precision,
        root_delay=rdelay,
        root_dispersion=rdisp,
        refid=refid,
        reference_ts=ref,
        origin_ts=org,
        receive_ts=rec,
        transmit_ts=xmt,
        extensions=extensions,
        mac=mac,
        mac_offset=mac_offset,
    )


def decode_trailer(data: bytes, version: int) -> tuple[tuple[ExtensionField, ...], Mac | None, int]:
    """Parse what follows the header: (extension fields, MAC or None, offset of the MAC)."""
    n = len(data)
    pos = HEADER_LEN
    fields: list[ExtensionField] = []
    while n - pos > 0 and (n - pos) not in MAC_LENGTHS:
        remaining = n - pos
        if version < 4:
            raise PacketError(
                f"NTPv{version} packet with {remaining} trailing bytes that are not a MAC"
            )
        if remaining < MIN_EF_LEN:
            raise PacketError(f"{remaining} trailing bytes: neither an extension field nor a MAC")
        ftype, flen = struct.unpack_from("!HH", data, pos)
        if flen < MIN_EF_LEN or flen % 4 or flen > remaining:
            raise PacketError(
                f"extension field at byte {pos} has bad length {flen} "
                f"(must be >= {MIN_EF_LEN}, a multiple of 4, and fit in {remaining})"
            )
        fields.append(ExtensionField(ftype, bytes(data[pos + 4 : pos + flen])))
        pos += flen
    mac: Mac | None = None
    mac_offset = pos
    if n - pos:
        (keyid,) = struct.unpack_from("!I", data, pos)
        mac = Mac(keyid, bytes(data[pos + 4 : n]))
    return tuple(fields), mac, mac_offset


def encode(packet: Packet) -> bytes:
    """Serialize a packet: header, extension fields (padded), then the MAC if any."""
    b0 = ((packet.leap & 3) << 6) | ((packet.version & 7) << 3) | (packet.mode & 7)
    out = bytearray(
        _HEADER.pack(
            b0,
            packet.stratum,
            packet.poll,
            packet.precision,
            packet.root_delay,
            packet.root_dispersion,
            packet.refid,
            packet.reference_ts,
            packet.origin_ts,
            packet.receive_ts,
            packet.transmit_ts,
        )
    )
    for ef in packet.extensions:
        flen = ef.encoded_length()
        out += struct.pack("!HH", ef.field_type, flen)
        out += ef.body
        out += bytes(flen - 4 - len(ef.body))
    if packet.mac is not None:
        out += struct.pack("!I", packet.mac.keyid) + packet.mac.digest
    return bytes(out)


def refid_from_text(text: str) -> int:
    """A refid from up to 4 ASCII characters (kiss codes, reference identifiers): 'LOCL', 'GPS'."""
    raw = text.encode("ascii")[:4]
    return int.from_bytes(raw.ljust(4, b"\0"), "big")


def refid_from_ipv4(address: str) -> int:
    """A refid that is an IPv4 address, as stratum >= 2 servers send."""
    parts = [int(p) for p in address.split(".")]
    if len(parts) != 4 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError(f"not an IPv4 address: {address!r}")
    return int.from_bytes(bytes(parts), "big")


def refid_to_text(refid: int, stratum: int) -> str:
    """Render a refid as ntpq does: ASCII at stratum 0/1 (kiss codes, clocks), dotted quad above."""
    raw = refid.to_bytes(4, "big")
    if stratum <= 1:
        text = raw.rstrip(b"\0").decode("ascii", "replace")
        return text if text.isprintable() else raw.hex()
    return ".".join(str(b) for b in raw)
