"""The NTS client's side of authenticated NTP (RFC 8915 sections 5.7 and 5.8), sans-IO.

``NtsClientSession`` holds what one key exchange gave (``ntpy.core.ntskeclient``): the
AEAD, the C2S and S2C keys and up to eight cookies. :meth:`NtsClientSession.protect`
turns a 48-byte request into an NTS request -- a Unique Identifier from the caller's
random bytes, one cookie (each used once: cookies are unlinkable only if never reused),
a placeholder for each cookie the jar lacks, the authenticator over it all -- and
:meth:`NtsClientSession.verify` accepts only the reply to the outstanding request: the
Unique Identifier matches, the authenticator verifies under S2C, and the cookies inside
go to the jar. Anything else raises ``ntsef.NtsError``; an NTS NAK (kiss ``NTSN`` echoing
our identifier) raises it with ``Failure.NAK`` and sets ``needs_key_exchange``.

This is what the client exchange's ``ClientAuth`` hook (``ntpy.core.exchange``) wraps for
a source configured ``nts``: ``protect`` and ``verify`` have its shape, with NtsError
mapped to a rejected reply. Re-keying (on NAK, no cookies, or a schedule) is the source's
decision, made from ``needs_key_exchange``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ntpy.core.ntsaead import TAG_LENGTH, Aead
from ntpy.core.ntscookie import RandomBytes
from ntpy.core.ntsef import (
    AUTHENTICATOR,
    COOKIE_PLACEHOLDER,
    MIN_UNIQUE_ID,
    NTS_COOKIE,
    NTS_NAK_REFID,
    UNIQUE_IDENTIFIER,
    Failure,
    NtsError,
    authenticator_body,
    decode_fields,
    encode_fields,
    parse_authenticator,
    with_offsets,
)
from ntpy.core.ntske import MAX_COOKIE_LEN, MAX_COOKIES
from ntpy.core.packet import HEADER_LEN, ExtensionField, Packet, refid_from_text

_NAK_REFID = refid_from_text(NTS_NAK_REFID)


class NtsClientSession:
    """One server's NTS state on the client: keys, cookie jar, the outstanding request."""

    def __init__(
        self,
        aead: int,
        c2s: bytes,
        s2c: bytes,
        cookies: Iterable[bytes],
        random_bytes: RandomBytes,
    ) -> None:
        self.c2s = Aead(aead, c2s)
        self.s2c = Aead(aead, s2c)
        self.cookies: deque[bytes] = deque(list(cookies)[:MAX_COOKIES], maxlen=MAX_COOKIES)
        self.random_bytes = random_bytes
        self.pending: bytes | None = None
        self.naks = 0
        self.nak_seen = False

    @property
    def aead(self) -> int:
        return self.c2s.algorithm

    @property
    def needs_key_exchange(self) -> bool:
        """No cookie left, or the server NAKed us: run the key exchange again."""
        return self.nak_seen or not self.cookies

    def protect(self, request: bytes) -> bytes:
        """The NTS request for a 48-byte NTPv4 request header. Uses up one cookie."""
        if not self.cookies:
            raise NtsError(Failure.NO_COOKIE, "no NTS cookie left")
        cookie = self.cookies.popleft()
        uid = self.random_bytes(MIN_UNIQUE_ID)
        if len(uid) != MIN_UNIQUE_ID:
            raise ValueError("the random source returned too few bytes")
        wanted = MAX_COOKIES - len(self.cookies) - 1
        fields = [ExtensionField(UNIQUE_IDENTIFIER, uid), ExtensionField(NTS_COOKIE, cookie)]
        placeholder = ExtensionField(COOKIE_PLACEHOLDER, bytes(len(cookie)))
        fields += [placeholder] * wanted
        prefix = bytes(request[:HEADER_LEN]) + encode_fields(fields)
        nonce = self.random_bytes(self.c2s.nonce_length)
        ciphertext = self.c2s.seal(nonce, b"", prefix)
        self.pending = uid
        return prefix + encode_fields(
            [ExtensionField(AUTHENTICATOR, authenticator_body(nonce, ciphertext))]
        )

    def verify(self, data: bytes, packet: Packet) -> None:
        """Accept the reply to the outstanding request (its origin already matched), or
        raise NtsError. On success the cookies it carried join the jar."""
        uid = self.pending
        if uid is None:
            raise NtsError(Failure.NOT_PENDING, "no NTS request outstanding")
        if packet.mac is not None:
            raise NtsError(Failure.MALFORMED, "NTS reply with a MAC trailer")
        echoed = [ef.body for ef in packet.extensions if ef.field_type == UNIQUE_IDENTIFIER]
        if echoed != [uid]:
            raise NtsError(Failure.NOT_PENDING, "reply does not echo our Unique Identifier")
        if packet.stratum == 0 and packet.refid == _NAK_REFID:
            self.pending = None
            self.naks += 1
            self.nak_seen = True
            raise NtsError(Failure.NAK, "the server sent an NTS NAK: our cookie is not valid")
        auth = [
            (at, ef) for at, ef in with_offsets(packet.extensions) if ef.field_type == AUTHENTICATOR
        ]
        if len(auth) != 1:
            raise NtsError(Failure.MALFORMED, f"{len(auth)} authenticators in the reply")
        at, ef = auth[0]
        nonce, ciphertext = parse_authenticator(ef.body)
        if len(ciphertext) < TAG_LENGTH:
            raise NtsError(Failure.MALFORMED, "authenticator too short")
        plain = self.s2c.open(nonce, ciphertext, data[:at])
        if plain is None:
            raise NtsError(Failure.BAD_AUTH, "the reply's authenticator does not verify")
        fresh = [
            f.body
            for f in decode_fields(plain)
            if f.field_type == NTS_COOKIE and 0 < len(f.body) <= MAX_COOKIE_LEN
        ]
        self.pending = None
        self.cookies.extend(fresh[: MAX_COOKIES - len(self.cookies)])
