"""NTS Key Establishment records (RFC 8915 section 4): the codec, the one error type, and
the TLS exporter context. The two sides of the exchange over these records are
``ntpy.core.ntskeserver`` (``respond``) and ``ntpy.core.ntskeclient``.

A record is ``C:1 | type:15 | body_length:u16 | body``. C, the critical bit, tells a
receiver that does not know the type to fail rather than ignore it. A message is records
up to and including End of Message (type 0, critical, empty body). ``decode_message``
returns the records before End of Message, or raises ``NtsKeError`` -- never anything
else, for any bytes (the property tests hold it to that); its error code is the one the
server sends back in an Error record.

The TLS part lives in the daemon's shell: TLS 1.3 only, ALPN ``ntske/1``, and the two
keys from the exporter (RFC 5705 / RFC 8446 section 7.5) with label ``EXPORTER_LABEL``
and the context ``exporter_context`` computes. The shell reads until ``message_length``
says a whole message is in, which also bounds what one connection may send.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

ALPN = b"ntske/1"
EXPORTER_LABEL = b"EXPORTER-network-time-security"
DEFAULT_PORT = 4460
NTP_PORT = 123

MAX_MESSAGE_LEN = 16384
"""No message, request or response, may be longer: a peer sending more is cut off."""
MAX_RECORD_BODY = 1024
"""No record body may be longer (cookies are ~100 bytes; hostnames at most 255)."""
MAX_COOKIES = 8
"""Cookies a server hands out per exchange, and a client keeps."""
MAX_COOKIE_LEN = 256
"""A client refuses longer cookies: they ride in every NTP request."""

PROTOCOL_NTPV4 = 0
CRITICAL = 0x8000


class RecordType(IntEnum):
    END_OF_MESSAGE = 0
    NEXT_PROTOCOL = 1
    ERROR = 2
    WARNING = 3
    AEAD_ALGORITHM = 4
    NEW_COOKIE = 5
    NTPV4_SERVER = 6
    NTPV4_PORT = 7
    COMPLIANT_128GCM_EXPORT = 1024
    """Not in RFC 8915: chrony's non-critical, empty record saying "derive AES-128-GCM-SIV
    keys with the RFC's exporter context (AEAD id 30)". Without it, chrony (and so we,
    for compatibility) put id 15 in the context for AES-128-GCM-SIV, as chrony's servers
    and clients before 4.8 did."""


class ErrorCode(IntEnum):
    """The Error record's codes (RFC 8915 section 4.1.3)."""

    UNRECOGNIZED_CRITICAL_RECORD = 0
    BAD_REQUEST = 1
    INTERNAL_SERVER_ERROR = 2


class Direction(IntEnum):
    """Which key the exporter context is for: the last byte of the context."""

    C2S = 0
    S2C = 1


class NtsKeError(ValueError):
    """The peer's NTS-KE message cannot be used. ``code`` is the RFC error code: what a
    server sends back, and (on a client) what the server refused with or what is wrong
    with its response. The only error this module and the exchange sides raise."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Record:
    """One NTS-KE record. ``record_type`` excludes the critical bit."""

    record_type: int
    body: bytes = b""
    critical: bool = False

    def encode(self) -> bytes:
        if not 0 <= self.record_type < CRITICAL:
            raise ValueError(f"record type {self.record_type} out of range")
        if len(self.body) > 0xFFFF:
            raise ValueError("record body over 65535 bytes")
        word = self.record_type | (CRITICAL if self.critical else 0)
        return struct.pack("!HH", word, len(self.body)) + self.body

    def u16s(self) -> tuple[int, ...]:
        """The body as 16-bit big-endian integers (protocols, AEADs, codes, a port)."""
        if len(self.body) % 2:
            raise NtsKeError(
                ErrorCode.BAD_REQUEST,
                f"record type {self.record_type}: odd body length {len(self.body)}",
            )
        return struct.unpack(f"!{len(self.body) // 2}H", self.body)


END_OF_MESSAGE = Record(RecordType.END_OF_MESSAGE, b"", critical=True)


def u16_record(record_type: int, values: tuple[int, ...] | list[int], critical: bool) -> Record:
    """A record whose body is a list of 16-bit integers."""
    return Record(record_type, struct.pack(f"!{len(values)}H", *values), critical)


def encode_message(records: tuple[Record, ...] | list[Record]) -> bytes:
    """The records followed by End of Message."""
    return b"".join(r.encode() for r in records) + END_OF_MESSAGE.encode()


def message_length(buffer: bytes) -> int | None:
    """How many bytes of ``buffer`` make one whole message (through End of Message), or
    None while more must be read. Raises NtsKeError once the message is too long or a
    record is: the shell stops reading and answers (or drops) at once."""
    pos = 0
    n = len(buffer)
    while n - pos >= 4:
        word, length = (int(v) for v in struct.unpack_from("!HH", buffer, pos))
        if length > MAX_RECORD_BODY:
            raise NtsKeError(
                ErrorCode.BAD_REQUEST, f"record body of {length} bytes (max {MAX_RECORD_BODY})"
            )
        end = pos + 4 + length
        if end > MAX_MESSAGE_LEN:
            raise NtsKeError(ErrorCode.BAD_REQUEST, f"message over {MAX_MESSAGE_LEN} bytes")
        if end > n:
            return None
        if word & ~CRITICAL == RecordType.END_OF_MESSAGE:
            return end
        pos = end
    if n >= MAX_MESSAGE_LEN:
        raise NtsKeError(ErrorCode.BAD_REQUEST, f"message over {MAX_MESSAGE_LEN} bytes")
    return None


def decode_message(data: bytes) -> tuple[Record, ...]:
    """The records of one whole message, End of Message excluded, or NtsKeError: the
    message must end exactly with a critical, empty End of Message."""
    end = message_length(data)
    if end is None:
        raise NtsKeError(ErrorCode.BAD_REQUEST, "message incomplete: no End of Message record")
    if end != len(data):
        raise NtsKeError(ErrorCode.BAD_REQUEST, f"{len(data) - end} bytes after End of Message")
    records: list[Record] = []
    pos = 0
    while True:
        word, length = struct.unpack_from("!HH", data, pos)
        record = Record(
            word & ~CRITICAL, bytes(data[pos + 4 : pos + 4 + length]), bool(word & CRITICAL)
        )
        pos += 4 + length
        if record.record_type == RecordType.END_OF_MESSAGE:
            if record.body or not record.critical:
                raise NtsKeError(
                    ErrorCode.BAD_REQUEST, "End of Message must be critical with an empty body"
                )
            return tuple(records)
        records.append(record)


def exporter_context(aead: int, direction: Direction, protocol: int = PROTOCOL_NTPV4) -> bytes:
    """The TLS exporter context for one key (RFC 8915 section 5.1): the Next Protocol id,
    the AEAD id (both 16-bit big-endian) and 0x00 for C2S or 0x01 for S2C. For
    AES-128-GCM-SIV without the compliant-export record, pass the id the exchange says
    (``exporter_aead`` of the server's or client's result), which is then 15."""
    return struct.pack("!HHB", protocol, aead, int(direction))
