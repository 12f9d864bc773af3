"""The NTS-KE client's side of the exchange, sans-IO (RFC 8915 section 4).

The TLS shell (a later slice: TLS 1.3, ALPN ``ntske/1``, certificate and hostname
checks) writes :func:`client_request`, reads until ``ntske.message_length`` says the
response is whole, passes it to :func:`parse_response`, then exports the two keys with
``ntske.exporter_context(result.exporter_aead, ...)`` and ``result.key_length``. The
cookies and keys then go to ``ntpy.core.ntsef.NtsClientSession``, which is what the
client exchange's ``ClientAuth`` (``ntpy.core.exchange``) will hold for an ``nts`` source.

A response is refused (``NtsKeError``) when the server sent an Error or any Warning (no
warning codes are defined, so none is understood and RFC 8915 4.1.4 says abort), when it
did not agree to NTPv4 and exactly one AEAD we offered, when it gave no cookie, when a
record is malformed or repeated, or when it has an unknown critical record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ntpy.core import ntsaead, ntske
from ntpy.core.ntske import (
    MAX_COOKIE_LEN,
    MAX_COOKIES,
    NTP_PORT,
    PROTOCOL_NTPV4,
    ErrorCode,
    NtsKeError,
    Record,
    RecordType,
    decode_message,
    encode_message,
    u16_record,
)

MAX_HOSTNAME = 255


@dataclass(frozen=True, slots=True)
class KeResult:
    """What the key exchange agreed: the AEAD, the id its exporter context names (15 for
    AES-128-GCM-SIV unless the server echoed the compliant-export record), up to eight
    cookies, and where to send NTP (None: the key-exchange host / port 123)."""

    aead: int
    exporter_aead: int
    cookies: tuple[bytes, ...]
    server: str | None
    port: int | None

    @property
    def key_length(self) -> int:
        return ntsaead.KEY_LENGTHS[self.aead]

    def session_keys(self, export: Callable[[bytes, int, bytes], bytes]) -> tuple[bytes, bytes]:
        """The (C2S, S2C) keys from the TLS exporter: ``export(label, length, context)``
        (pyOpenSSL's ``conn.export_keying_material``) with RFC 8915 section 5.1's contexts."""
        c2s, s2c = (
            bytes(
                export(
                    ntske.EXPORTER_LABEL,
                    self.key_length,
                    ntske.exporter_context(self.exporter_aead, direction),
                )
            )
            for direction in ntske.Direction
        )
        return c2s, s2c


def client_request(aeads: tuple[int, ...] | None = None) -> bytes:
    """The request message: NTPv4, the AEADs in our order of preference, and chrony's
    compliant-export record when AES-128-GCM-SIV is offered."""
    offered = ntsaead.supported() if aeads is None else aeads
    records = [
        u16_record(RecordType.NEXT_PROTOCOL, (PROTOCOL_NTPV4,), critical=True),
        u16_record(RecordType.AEAD_ALGORITHM, offered, critical=True),
    ]
    if ntsaead.AEAD_AES_128_GCM_SIV in offered:
        records.append(Record(RecordType.COMPLIANT_128GCM_EXPORT))
    return encode_message(records)


def parse_response(data: bytes, offered: tuple[int, ...] | None = None) -> KeResult:
    """The agreed parameters from a whole response message, or NtsKeError."""
    return read_records(decode_message(data), ntsaead.supported() if offered is None else offered)


def _bad(message: str) -> NtsKeError:
    return NtsKeError(ErrorCode.BAD_REQUEST, f"bad NTS-KE response: {message}")


def read_records(records: tuple[Record, ...], offered: tuple[int, ...]) -> KeResult:
    """:func:`parse_response` on decoded records."""
    protocols: tuple[int, ...] | None = None
    aeads: tuple[int, ...] | None = None
    cookies: list[bytes] = []
    server: str | None = None
    port: int | None = None
    compliant = False
    for record in records:
        rtype = record.record_type
        if rtype == RecordType.ERROR:
            codes = record.u16s()
            code = codes[0] if len(codes) == 1 else -1
            known = code in ErrorCode._value2member_map_
            raise NtsKeError(
                ErrorCode(code) if known else ErrorCode.BAD_REQUEST,
                f"the server refused: error {code}"
                + (f" ({ErrorCode(code).name.lower().replace('_', ' ')})" if known else ""),
            )
        if rtype == RecordType.WARNING:
            raise _bad(f"warning {record.body.hex()} (no warning codes are defined)")
        if rtype == RecordType.NEXT_PROTOCOL:
            if protocols is not None:
                raise _bad("Next Protocol Negotiation repeated")
            protocols = record.u16s()
        elif rtype == RecordType.AEAD_ALGORITHM:
            if aeads is not None:
                raise _bad("AEAD Algorithm Negotiation repeated")
            aeads = record.u16s()
        elif rtype == RecordType.NEW_COOKIE:
            if not record.body or len(record.body) > MAX_COOKIE_LEN:
                raise _bad(f"cookie of {len(record.body)} bytes (1..{MAX_COOKIE_LEN})")
            if len(cookies) < MAX_COOKIES:
                cookies.append(record.body)
        elif rtype == RecordType.NTPV4_SERVER:
            if server is not None:
                raise _bad("NTPv4 Server Negotiation repeated")
            server = _hostname(record.body)
        elif rtype == RecordType.NTPV4_PORT:
            ports = record.u16s()
            if port is not None or len(ports) != 1 or ports[0] == 0:
                raise _bad("NTPv4 Port Negotiation repeated or not one non-zero port")
            port = ports[0]
        elif rtype == RecordType.COMPLIANT_128GCM_EXPORT:
            compliant = True
        elif record.critical:
            raise NtsKeError(
                ErrorCode.UNRECOGNIZED_CRITICAL_RECORD, f"unknown critical record type {rtype}"
            )
    if protocols != (PROTOCOL_NTPV4,):
        raise _bad(f"the server did not agree to NTPv4 (offered back {protocols})")
    if aeads is None or len(aeads) != 1 or aeads[0] not in offered:
        raise _bad(f"the server agreed to no AEAD we offered (it sent {aeads})")
    if not cookies:
        raise _bad("no cookies")
    aead = aeads[0]
    gcm_legacy = aead == ntsaead.AEAD_AES_128_GCM_SIV and not compliant
    exporter_aead = ntsaead.AEAD_AES_SIV_CMAC_256 if gcm_legacy else aead
    return KeResult(aead, exporter_aead, tuple(cookies), server, port if port != NTP_PORT else None)


def _hostname(body: bytes) -> str:
    """An NTPv4 Server Negotiation body: a hostname or an address in ASCII, no port."""
    if not body or len(body) > MAX_HOSTNAME:
        raise _bad(f"NTPv4 server of {len(body)} bytes")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _bad("NTPv4 server is not ASCII") from exc
    if not all(c.isalnum() or c in ".-:_" for c in text):
        raise _bad(f"NTPv4 server {text!r} is not a hostname or an address")
    return text
