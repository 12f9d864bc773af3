"""The NTS-KE server's side of the exchange, sans-IO: request records in, response
records out (RFC 8915 section 4).

The TLS shell (the daemon's key-exchange listener, a later slice) reads one request
message (``ntske.message_length`` bounds it), calls :func:`serve_message` with a function
that exports keys from its TLS session, and writes back ``KeReply.message``. Everything
else -- what the request may hold, which AEAD, the cookies, the errors -- is decided here:

- Next Protocol Negotiation must come exactly once; we speak NTPv4 (0). A request that
  offers no protocol we speak gets an empty Next Protocol record (RFC 8915 4.1.2).
- AEAD Algorithm Negotiation must come exactly once with NTPv4; we pick our most
  preferred algorithm the client offers (default: AES-SIV-CMAC-256, then AES-128-GCM-SIV),
  or send an empty AEAD record when there is none.
- A client must not send Error, Warning or New Cookie records: Bad Request. Server and
  Port Negotiation records from a client are suggestions we are free to ignore.
- An unknown record with the critical bit set gets Error 0 (Unrecognized Critical
  Record); unknown non-critical records are ignored.
- On success: eight cookies, the Port record when our NTP port is not 123, the Server
  record when ``nts ntpserver`` names one, and chrony's compliant-export record echoed.
- If our own side fails (no cookie key, the exporter raising): Error 2 (Internal Server
  Error). An error response is the Error record and End of Message, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ntpy.core import ntsaead
from ntpy.core.ntscookie import NONCE_LEN, CookieContents, CookieKeys, RandomBytes
from ntpy.core.ntske import (
    MAX_COOKIES,
    NTP_PORT,
    PROTOCOL_NTPV4,
    Direction,
    ErrorCode,
    NtsKeError,
    Record,
    RecordType,
    decode_message,
    encode_message,
    exporter_context,
    u16_record,
)

Exporter = Callable[[bytes, int], bytes]
"""``export(context, length)``: key material from the TLS session with label
``ntske.EXPORTER_LABEL`` (pyOpenSSL: ``conn.export_keying_material(label, length, ctx)``)."""

_FROM_SERVER_ONLY = frozenset(
    {RecordType.ERROR, RecordType.WARNING, RecordType.NEW_COOKIE, RecordType.END_OF_MESSAGE}
)
_IGNORED = frozenset({RecordType.NTPV4_SERVER, RecordType.NTPV4_PORT})


@dataclass(frozen=True, slots=True)
class KeServerConfig:
    """What the key-exchange server offers (``nts aead``, ``nts ntpserver``, the NTP port)."""

    aeads: tuple[int, ...] = field(default_factory=ntsaead.supported)
    ntp_server: str | None = None
    ntp_port: int = NTP_PORT
    cookies: int = MAX_COOKIES

    def __post_init__(self) -> None:
        if not self.aeads or any(a not in ntsaead.KEY_LENGTHS for a in self.aeads):
            raise ValueError(f"AEADs {self.aeads}: each must be one of {sorted(ntsaead.NAMES)}")
        if not 0 < self.ntp_port < 65536:
            raise ValueError(f"NTP port {self.ntp_port} out of range")
        if not 1 <= self.cookies <= MAX_COOKIES:
            raise ValueError(f"{self.cookies} cookies per exchange (1..{MAX_COOKIES})")
        if self.ntp_server is not None and not (
            self.ntp_server.isascii() and 0 < len(self.ntp_server) <= 255
        ):
            raise ValueError(f"NTP server {self.ntp_server!r}: an ASCII name or address")


@dataclass(frozen=True, slots=True)
class KeReply:
    """The response, and what happened for the counters: the AEAD agreed (None when no
    keys were made) or the error code sent."""

    records: tuple[Record, ...]
    aead: int | None = None
    error: ErrorCode | None = None
    reason: str = ""

    @property
    def message(self) -> bytes:
        return encode_message(self.records)


def error_reply(code: ErrorCode, reason: str) -> KeReply:
    return KeReply((u16_record(RecordType.ERROR, (int(code),), critical=True),), None, code, reason)


def serve_message(
    data: bytes,
    config: KeServerConfig,
    keys: CookieKeys,
    export: Exporter,
    random_bytes: RandomBytes,
) -> KeReply:
    """Decode a request message and :func:`respond`; a malformed one gets its Error."""
    try:
        records = decode_message(data)
    except NtsKeError as exc:
        return error_reply(exc.code, str(exc))
    return respond(records, config, keys, export, random_bytes)


def respond(
    request: tuple[Record, ...],
    config: KeServerConfig,
    keys: CookieKeys,
    export: Exporter,
    random_bytes: RandomBytes,
) -> KeReply:
    """The response to a request's records (End of Message excluded)."""
    try:
        protocols, aeads, compliant = _read_request(request)
    except NtsKeError as exc:
        return error_reply(exc.code, str(exc))
    if PROTOCOL_NTPV4 not in protocols:
        return KeReply(
            (Record(RecordType.NEXT_PROTOCOL, b"", critical=True),), reason="no protocol"
        )
    if aeads is None:
        return error_reply(ErrorCode.BAD_REQUEST, "NTPv4 offered without an AEAD record")
    next_protocol = u16_record(RecordType.NEXT_PROTOCOL, (PROTOCOL_NTPV4,), critical=True)
    chosen = next((a for a in config.aeads if a in aeads), None)
    if chosen is None:
        empty = Record(RecordType.AEAD_ALGORITHM, b"", critical=True)
        return KeReply((next_protocol, empty), reason="no common AEAD")
    out = [next_protocol, u16_record(RecordType.AEAD_ALGORITHM, (chosen,), critical=True)]
    exporter_aead = chosen
    if chosen == ntsaead.AEAD_AES_128_GCM_SIV:
        if compliant:
            out.append(Record(RecordType.COMPLIANT_128GCM_EXPORT))
        else:
            exporter_aead = ntsaead.AEAD_AES_SIV_CMAC_256
    if config.ntp_port != NTP_PORT:
        out.append(u16_record(RecordType.NTPV4_PORT, (config.ntp_port,), critical=True))
    if config.ntp_server:
        out.append(Record(RecordType.NTPV4_SERVER, config.ntp_server.encode("ascii"), True))
    try:
        klen = ntsaead.KEY_LENGTHS[chosen]
        c2s = export(exporter_context(exporter_aead, Direction.C2S), klen)
        s2c = export(exporter_context(exporter_aead, Direction.S2C), klen)
        if len(c2s) != klen or len(s2c) != klen:
            raise ValueError("exporter returned keys of the wrong length")
        contents = CookieContents(chosen, bytes(c2s), bytes(s2c))
        # One draw for all the nonces: a getrandom() per cookie was 8 syscalls per exchange.
        nonces = random_bytes(NONCE_LEN * config.cookies)
        cookies = [
            keys.seal(contents, nonces[i : i + NONCE_LEN])
            for i in range(0, NONCE_LEN * config.cookies, NONCE_LEN)
        ]
    except Exception as exc:  # our side failed: the client is told, the shell counts it
        return error_reply(ErrorCode.INTERNAL_SERVER_ERROR, f"cannot make cookies: {exc}")
    out.extend(Record(RecordType.NEW_COOKIE, c) for c in cookies)
    return KeReply(tuple(out), chosen)


def _read_request(
    request: tuple[Record, ...],
) -> tuple[tuple[int, ...], tuple[int, ...] | None, bool]:
    """(protocols offered, AEADs offered or None, compliant-export asked) or NtsKeError."""
    protocols: tuple[int, ...] | None = None
    aeads: tuple[int, ...] | None = None
    compliant = False
    for record in request:
        rtype = record.record_type
        if rtype == RecordType.NEXT_PROTOCOL:
            if protocols is not None:
                raise NtsKeError(ErrorCode.BAD_REQUEST, "Next Protocol Negotiation repeated")
            protocols = record.u16s()
        elif rtype == RecordType.AEAD_ALGORITHM:
            if aeads is not None:
                raise NtsKeError(ErrorCode.BAD_REQUEST, "AEAD Algorithm Negotiation repeated")
            aeads = record.u16s()
        elif rtype in _FROM_SERVER_ONLY:
            raise NtsKeError(ErrorCode.BAD_REQUEST, f"a client must not send record type {rtype}")
        elif rtype == RecordType.COMPLIANT_128GCM_EXPORT:
            compliant = True
        elif rtype in _IGNORED:
            continue
        elif record.critical:
            raise NtsKeError(
                ErrorCode.UNRECOGNIZED_CRITICAL_RECORD, f"unknown critical record type {rtype}"
            )
    if protocols is None:
        raise NtsKeError(ErrorCode.BAD_REQUEST, "no Next Protocol Negotiation record")
    if not protocols:
        raise NtsKeError(ErrorCode.BAD_REQUEST, "Next Protocol Negotiation lists no protocol")
    return protocols, aeads, compliant
