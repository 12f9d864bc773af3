"""The NTS extension fields of NTPv4 (RFC 8915 sections 5.3-5.7): their codec, the
server's check and reply, on top of ``ntpy.core.packet``'s RFC 7822 field codec. The
client's side is ``ntpy.core.ntsclient``.

    Unique Identifier      0x0104  >= 32 random bytes, echoed by the server (replay guard)
    NTS Cookie             0x0204  one cookie from the key exchange or an earlier reply
    NTS Cookie Placeholder 0x0304  "send one more cookie"; as long as the cookie
    NTS Authenticator and  0x0404  nonce_len:u16 | ct_len:u16 | nonce | ct | padding; the
      Encrypted EFs                 AEAD covers the packet up to this field, and the
                                    ciphertext holds extension fields (the new cookies)

The server side plugs into ``_general`` in ``ntpy.core.server``, beside the MAC check: a
request with extension fields goes through :func:`check_request`, which finds the cookie,
opens it with the ``CookieKeys`` ring, verifies the authenticator with the C2S key and
returns an ``NtsRequest`` (keys, cookies wanted) -- or raises ``NtsError``, whose
``nak`` says whether to answer with an NTS NAK (a kiss with refid ``NTSN`` carrying
:func:`nak_fields`) or drop. :func:`seal_reply` then builds the authenticated reply from
the final 48-byte header (so the transmit timestamp must be stamped before sealing:
the AEAD covers it): the Unique Identifier echoed, fresh cookies encrypted with the S2C
key. It never makes a reply longer than the request: when the cookies asked for do not
fit, fewer are sent.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from ntpy.core.ntsaead import TAG_LENGTH, supported
from ntpy.core.ntscookie import NONCE_LEN, CookieContents, CookieKeys, RandomBytes, cookie_length
from ntpy.core.ntske import MAX_COOKIES
from ntpy.core.packet import HEADER_LEN, MIN_EF_LEN, ExtensionField

UNIQUE_IDENTIFIER = 0x0104
NTS_COOKIE = 0x0204
COOKIE_PLACEHOLDER = 0x0304
AUTHENTICATOR = 0x0404
NTS_TYPES = frozenset({UNIQUE_IDENTIFIER, NTS_COOKIE, COOKIE_PLACEHOLDER, AUTHENTICATOR})

NTS_NAK_REFID = "NTSN"
"""The kiss code of an NTS NAK (RFC 8915 5.7): stratum 0, this refid, the Unique
Identifier echoed and no authenticator. (``KissCode`` gains it when NTS is wired in.)"""
MIN_UNIQUE_ID = 32
MIN_NONCE_PADDED = 16
"""Nonce plus additional padding is at least 16 bytes, whatever the AEAD's nonce length."""

_HH = struct.Struct("!HH")


class Failure(StrEnum):
    """Why NTS refused a packet: the counter names."""

    MALFORMED = "nts_malformed"
    """Fields missing, repeated, misplaced or mis-sized: dropped, no NAK."""
    BAD_COOKIE = "nts_bad_cookie"
    """The cookie names no key we hold or does not open: NAK."""
    BAD_AUTH = "nts_bad_auth"
    """The authenticator does not verify: NAK (server) / reply rejected (client)."""
    NAK = "nts_nak"
    """(client) The server answered our request with an NTS NAK: re-key."""
    NOT_PENDING = "nts_not_pending"
    """(client) A reply when no request is outstanding, or its Unique Identifier differs."""
    NO_COOKIE = "nts_no_cookie"
    """(client) No cookie left to send: run the key exchange again."""


_NAK_FAILURES = frozenset({Failure.BAD_COOKIE, Failure.BAD_AUTH})


class NtsError(ValueError):
    """An NTS packet was refused. The only error this module and ``ntsclient`` raise.
    ``unique_id`` is the request's identifier when it had one (a NAK echoes it)."""

    def __init__(self, failure: Failure, message: str, unique_id: bytes | None = None) -> None:
        super().__init__(message)
        self.failure = failure
        self.unique_id = unique_id

    @property
    def nak(self) -> bool:
        """The server answers with an NTS NAK (it can: the request had an identifier)."""
        return self.failure in _NAK_FAILURES and self.unique_id is not None


def encode_fields(fields: Iterable[ExtensionField]) -> bytes:
    """Extension fields on the wire, each padded as ``packet.encode`` pads them."""
    out = bytearray()
    for ef in fields:
        flen = ef.encoded_length()
        out += struct.pack("!HH", ef.field_type, flen) + ef.body + bytes(flen - 4 - len(ef.body))
    return bytes(out)


def decode_fields(data: bytes) -> tuple[ExtensionField, ...]:
    """The extension fields inside an authenticator's plaintext, or NtsError."""
    fields: list[ExtensionField] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise NtsError(Failure.MALFORMED, "truncated encrypted extension field")
        ftype, flen = struct.unpack_from("!HH", data, pos)
        if flen < 4 or flen % 4 or pos + flen > len(data):
            raise NtsError(Failure.MALFORMED, f"encrypted extension field length {flen}")
        fields.append(ExtensionField(ftype, bytes(data[pos + 4 : pos + flen])))
        pos += flen
    return tuple(fields)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def authenticator_body(nonce: bytes, ciphertext: bytes) -> bytes:
    """The body of an NTS Authenticator field, with the padding RFC 8915 5.6 asks."""
    padded_nonce = _pad4(len(nonce))
    extra = max(MIN_NONCE_PADDED - padded_nonce, 0)
    return (
        struct.pack("!HH", len(nonce), len(ciphertext))
        + nonce.ljust(padded_nonce, b"\0")
        + ciphertext.ljust(_pad4(len(ciphertext)), b"\0")
        + bytes(extra)
    )


@lru_cache(maxsize=64)
def authenticator_length(nonce_len: int, ciphertext_len: int) -> int:
    """The on-wire size of an Authenticator field (header included). Cached: a server asks
    it for the same few sizes on every request."""
    body = authenticator_body(bytes(nonce_len), bytes(ciphertext_len))
    return ExtensionField(AUTHENTICATOR, body).encoded_length()


def parse_authenticator(body: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of an Authenticator field body, or NtsError."""
    if len(body) < 4:
        raise NtsError(Failure.MALFORMED, "authenticator too short")
    nonce_len, ct_len = struct.unpack_from("!HH", body, 0)
    nonce_end = 4 + _pad4(nonce_len)
    if nonce_len == 0 or ct_len < TAG_LENGTH or nonce_end + _pad4(ct_len) > len(body):
        raise NtsError(
            Failure.MALFORMED, f"authenticator nonce {nonce_len} / ciphertext {ct_len} bytes"
        )
    return body[4 : 4 + nonce_len], body[nonce_end : nonce_end + ct_len]


def with_offsets(fields: Iterable[ExtensionField]) -> Iterator[tuple[int, ExtensionField]]:
    """Each decoded field with its byte offset in the packet (bodies keep their padding,
    so the offsets are exact)."""
    pos = HEADER_LEN
    for ef in fields:
        yield pos, ef
        pos += 4 + len(ef.body)


@dataclass(frozen=True, slots=True)
class NtsRequest:
    """A verified NTS request: what the reply needs."""

    unique_id: bytes
    keys: CookieContents
    cookies_wanted: int
    request_len: int


def check_request(
    data: bytes, fields: tuple[ExtensionField, ...], mac_offset: int, keys: CookieKeys
) -> NtsRequest | None:
    """Verify an NTS request (``fields`` and ``mac_offset`` from ``packet.decode_trailer``).

    None when the packet carries no NTS field (not an NTS request: the plain path).
    """
    if not any(ef.field_type in NTS_TYPES for ef in fields):
        return None
    uid: bytes | None = None
    cookie: bytes | None = None
    placeholders: list[int] = []
    auth_at = -1
    auth_body = b""
    offset = HEADER_LEN - 4  # (with_offsets, inlined: this is every NTS request's path)
    body_len = 0
    for ef in fields:
        offset += 4 + body_len
        body_len = len(ef.body)
        if auth_at >= 0:
            raise NtsError(Failure.MALFORMED, "extension field after the authenticator", uid)
        if ef.field_type == UNIQUE_IDENTIFIER:
            if uid is not None or len(ef.body) < MIN_UNIQUE_ID:
                raise NtsError(Failure.MALFORMED, "Unique Identifier repeated or short", uid)
            uid = ef.body
        elif ef.field_type == NTS_COOKIE:
            if cookie is not None:
                raise NtsError(Failure.MALFORMED, "more than one cookie", uid)
            cookie = ef.body
        elif ef.field_type == COOKIE_PLACEHOLDER:
            placeholders.append(len(ef.body))
        elif ef.field_type == AUTHENTICATOR:
            auth_at, auth_body = offset, ef.body
    if uid is None:
        raise NtsError(Failure.MALFORMED, "NTS request without a Unique Identifier")
    if cookie is None or auth_at < 0 or mac_offset != len(data):
        raise NtsError(Failure.MALFORMED, "NTS request needs a cookie and an authenticator", uid)
    nonce, ciphertext = parse_authenticator(auth_body)
    contents = keys.open(cookie)
    if contents is None or contents.aead not in supported():
        # (an AEAD this host cannot compute: a fleet host older than the key-exchange host)
        raise NtsError(Failure.BAD_COOKIE, "cookie does not open", uid)
    c2s = keys.session_aead(contents.aead, contents.c2s)
    plain = c2s.open(nonce, ciphertext, data[:auth_at])
    if plain is None:
        raise NtsError(Failure.BAD_AUTH, "authenticator does not verify", uid)
    try:
        inner = decode_fields(plain)
    except NtsError as exc:
        raise NtsError(Failure.MALFORMED, str(exc), uid) from None
    placeholders += [len(ef.body) for ef in inner if ef.field_type == COOKIE_PLACEHOLDER]
    wanted = 1 + sum(1 for n in placeholders if n == len(cookie))
    return NtsRequest(uid, contents, min(wanted, MAX_COOKIES), len(data))


def seal_reply(
    header: bytes, request: NtsRequest, keys: CookieKeys, random_bytes: RandomBytes
) -> bytes:
    """The reply to a verified request: ``header`` (48 bytes, final), the Unique
    Identifier, and the authenticator with as many fresh cookies as were asked for and
    fit in the request's size. NtsError if not even the authenticator fits."""
    aead = request.keys.aead
    s2c = keys.session_aead(aead, request.keys.s2c)
    prefix = bytes(header[:HEADER_LEN]) + _field(UNIQUE_IDENTIFIER, request.unique_id)
    per_cookie = _field_length(cookie_length(aead))
    nonce_len = s2c.nonce_length
    count = request.cookies_wanted
    while count >= 0:
        size = len(prefix) + authenticator_length(nonce_len, count * per_cookie + TAG_LENGTH)
        if size <= request.request_len:
            break
        count -= 1
    if count < 0:
        raise NtsError(Failure.MALFORMED, "request too small for an authenticated reply")
    contents, seal = request.keys, keys.seal
    cookies = b"".join(
        _field(NTS_COOKIE, seal(contents, random_bytes(NONCE_LEN))) for _ in range(count)
    )
    nonce = random_bytes(nonce_len)
    ciphertext = s2c.seal(nonce, cookies, prefix)
    return prefix + _field(AUTHENTICATOR, authenticator_body(nonce, ciphertext))


def _field_length(body_len: int) -> int:
    """``ExtensionField.encoded_length`` for a body of ``body_len`` bytes."""
    return max((4 + body_len + 3) & ~3, MIN_EF_LEN)


def _field(field_type: int, body: bytes) -> bytes:
    """One field on the wire, padded as ``encode_fields`` pads it (without building an
    ``ExtensionField``: the reply path encodes two or three per request)."""
    flen = _field_length(len(body))
    return _HH.pack(field_type, flen) + body + bytes(flen - 4 - len(body))


def nak_fields(unique_id: bytes) -> bytes:
    """What follows the 48-byte kiss header (refid ``NTSN``, stratum 0) in an NTS NAK."""
    return encode_fields([ExtensionField(UNIQUE_IDENTIFIER, unique_id)])
