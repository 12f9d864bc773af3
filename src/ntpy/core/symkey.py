"""Symmetric keys on the client side: ``server HOST key N`` (RFC 5905 section 7.3).

Why a ``ClientAuth``: the client exchange has one place for authentication, so a source
with a key signs each request with its key and believes a reply only when its MAC verifies
under that same key. Everything else is refused with ``ReplyRejected`` before the reply's
contents are read (a kiss-o'-death included: an unsigned RATE or DENY could otherwise be
forged to slow or silence an authenticated source):

* no MAC at all (``Reason.AUTH``): the server ignored our key or an attacker stripped it;
* a crypto-NAK (``Reason.CRYPTO_NAK``): a 4-byte MAC trailer, a key id and no digest, which
  ntpd and ntpy send when the request's MAC did not verify (the server lacks our key or
  has another value for it);
* a MAC under another key id, or a digest that does not verify (``Reason.AUTH``).

The MAC is what the server side checks (``ntpy.core.auth``): the key id, then the digest
of key || packet (truncated to 20 bytes) or AES-128-CMAC over the packet.
"""

from __future__ import annotations

from ntpy.core import auth
from ntpy.core.exchange import Reason, ReplyRejected
from ntpy.core.packet import Packet


class SymmetricKeyAuth:
    """Authenticates one source's exchanges with one trusted key (a ``ClientAuth``)."""

    __slots__ = ("key",)

    def __init__(self, key: auth.MacKey) -> None:
        self.key = key

    @property
    def keyid(self) -> int:
        return self.key.keyid

    def protect(self, request: bytes) -> bytes:
        """The request followed by the MAC trailer: key id and digest."""
        return auth.sign(self.key, request)

    def verify(self, data: bytes, packet: Packet) -> None:
        """Raise ``ReplyRejected`` unless ``data`` carries a valid MAC under our key."""
        mac = packet.mac
        keyid = self.key.keyid
        if mac is None:
            raise ReplyRejected(Reason.AUTH, f"reply without a MAC (sent with key {keyid})")
        if mac.is_crypto_nak:
            raise ReplyRejected(
                Reason.CRYPTO_NAK,
                f"crypto-NAK: the server did not accept our MAC with key {keyid} "
                "(it lacks the key or has another value for it)",
            )
        if mac.keyid != keyid:
            raise ReplyRejected(Reason.AUTH, f"reply MAC uses key {mac.keyid}, not key {keyid}")
        if auth.verify({keyid: self.key}, keyid, data[: packet.mac_offset], mac.digest) is None:
            raise ReplyRejected(Reason.AUTH, f"reply MAC does not verify with key {keyid}")
