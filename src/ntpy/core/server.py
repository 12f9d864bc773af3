"""The responder: turns one request into one reply (or a named reason to drop it).

``Responder.handle(request, client, rx_time, now)`` is the whole server side of RFC 5905
for unicast: it needs no socket and no clock. The I/O shell passes the kernel receive
timestamp (already mapped through the Clock) as ``rx_time`` and stamps the transmit
timestamp into the returned ``Reply`` as late as it can, right before the send.

What we answer, as ntpd does:
- mode 3 (client), any version 1..4, echoing the version and poll -> mode 4;
- NTPv1 packets have no mode field (mode 0): they are client requests -> mode 4;
- mode 1 (symmetric active, e.g. Windows w32time) -> a mode 2 reply without mobilizing an
  association (ntpd's answer to unauthenticated peers it will not keep state for).
What we never answer: mode 2/4/5 (replies and broadcasts: answering them makes loops),
mode 7 (ntpdc's private mode, the monlist amplifier), versions 0 and > 4, and anything that
does not parse. A request with a MAC under a trusted key gets a MAC'd reply; a MAC that does
not verify gets a crypto-NAK, as RFC 5905 asks. No reply to an unauthenticated request is
larger than the request.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

from ntpy.core import auth
from ntpy.core.packet import (
    HEADER_LEN,
    MODE_ACTIVE,
    MODE_BROADCAST,
    MODE_CLIENT,
    MODE_CONTROL,
    MODE_PASSIVE,
    MODE_PRIVATE,
    MODE_RESERVED,
    MODE_SERVER,
    PacketError,
    decode_trailer,
)
from ntpy.core.system import SystemState
from ntpy.core.timestamps import ns_to_short, unix_ns_to_ntp

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TEMPLATE = struct.Struct("!BBbbIII Q".replace(" ", ""))


class Reason(StrEnum):
    """Why a request was answered or dropped: each one is a stats counter."""

    SERVED = "served"
    SERVED_AUTH = "served_auth"
    CRYPTO_NAK = "crypto_nak"
    TOO_SHORT = "drop_too_short"
    BAD_VERSION = "drop_bad_version"
    BAD_MODE = "drop_bad_mode"
    NOT_REQUEST = "drop_not_request"
    CONTROL = "drop_mode6"
    PRIVATE = "drop_mode7"
    MALFORMED = "drop_malformed"
    BAD_PORT = "drop_bad_port"
    RESTRICTED = "drop_restricted"
    """``restrict ... ignore|noserve`` (or a chrony ``deny``) matched the client."""
    CONTROL_DENIED = "drop_mode6_noquery"
    VERSION_DENIED = "drop_restrict_version"
    UNAUTHENTICATED = "drop_notrust"
    RATE_LIMITED = "drop_rate_limited"
    KOD_RATE = "kod_rate_sent"

    @property
    def answered(self) -> bool:
        return self in (Reason.SERVED, Reason.SERVED_AUTH, Reason.CRYPTO_NAK, Reason.KOD_RATE)


class AccessPolicy(Protocol):
    """What the responder needs from access control (``ntpy.core.access.AccessControl``)."""

    def flags(self, address: str, port: int | None = None) -> frozenset[str]: ...


class Limiter(Protocol):
    """What the responder needs from rate limiting (``ntpy.core.ratelimit.RateLimiter``)."""

    def check(self, address: str, now_ns: int, *, kod: bool) -> int: ...


VERDICT_ALLOW = 0
VERDICT_DROP = 1
VERDICT_KOD = 2
REFID_RATE = int.from_bytes(b"RATE", "big")


class Reply:
    """A reply waiting for its transmit timestamp.

    The transmit timestamp (bytes 40..48) must be read from the clock as late as possible,
    so the shell calls ``finalize(tx_ntp)`` immediately before sending. A MAC, when the
    request was authenticated, covers the transmit timestamp and is computed there too.
    """

    __slots__ = ("buf", "key", "nak")

    def __init__(self, buf: bytearray, key: auth.MacKey | None = None, nak: bool = False) -> None:
        self.buf = buf
        self.key = key
        self.nak = nak

    def finalize(self, tx_ntp: int) -> bytes:
        """The bytes to send, with ``tx_ntp`` as the transmit timestamp."""
        buf = self.buf
        _U64.pack_into(buf, 40, tx_ntp)
        if self.key is not None:
            return auth.sign(self.key, bytes(buf))
        if self.nak:
            return bytes(buf) + b"\0\0\0\0"
        return bytes(buf)


_NO_FLAGS: frozenset[str] = frozenset()


class _KissReply(Reply):
    """A kiss carries the client's transmit timestamp in every field, ours in none."""

    __slots__ = ("xmt",)

    def __init__(self, buf: bytearray, xmt: bytes) -> None:
        super().__init__(buf)
        self.xmt = xmt

    def finalize(self, tx_ntp: int) -> bytes:
        self.buf[40:48] = self.xmt
        return bytes(self.buf)


class Responder:
    """Answers NTP requests from the current ``SystemState``.

    The fixed part of every reply (stratum, precision, root delay, refid, reference time) is
    packed once per state change, so the per-request work is a copy and three small packs.
    """

    def __init__(
        self,
        state: SystemState,
        keys: Mapping[int, auth.MacKey] | None = None,
        *,
        access: AccessPolicy | None = None,
        limiter: Limiter | None = None,
        kod_min_poll: int = 4,
    ) -> None:
        self._keys: Mapping[int, auth.MacKey] = keys or {}
        self.access = access
        self.limiter = limiter
        self.kod_min_poll = kod_min_poll
        """The poll (log2 s) a RATE kiss asks for at least: the limiter's average interval."""
        self._template = bytearray(HEADER_LEN)
        self._leap_bits = 0
        self.state = state
        self.set_state(state)

    def set_state(self, state: SystemState) -> None:
        """Adopt new system variables (called when synchronization changes)."""
        self.state = state
        ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
        self._leap_bits = (state.leap & 3) << 6
        _TEMPLATE.pack_into(
            self._template,
            0,
            0,
            state.wire_stratum,
            0,
            state.precision,
            ns_to_short(state.root_delay_ns),
            0,
            state.refid,
            ref,
        )

    def set_keys(self, keys: Mapping[int, auth.MacKey]) -> None:
        self._keys = keys

    def _kiss_rate(self, request: bytes, version: int, reply_mode: int) -> Reply:
        """A RATE kiss-o'-death (RFC 5905 7.4): leap alarm, stratum 0, refid 'RATE', and a
        poll the client should back off to. Every timestamp is the client's own transmit
        timestamp, so the packet carries no time anyone could use; 48 bytes, never larger
        than the request."""
        xmt = request[40:48]
        buf = bytearray(HEADER_LEN)
        buf[0] = (3 << 6) | (version << 3) | reply_mode
        buf[1] = 0
        buf[2] = max(request[2] if request[2] < 128 else 0, self.kod_min_poll)
        buf[3] = self.state.precision & 0xFF
        _U32.pack_into(buf, 12, REFID_RATE)
        buf[16:24] = xmt
        buf[24:32] = xmt
        buf[32:40] = xmt
        return _KissReply(buf, bytes(xmt))

    def handle(
        self, request: bytes, client: Any, rx_time: int, now: int
    ) -> tuple[Reply | None, Reason]:
        """Answer one request.

        ``client`` is the peer's socket address (port checked; access control uses it),
        ``rx_time`` the receive timestamp as a 64-bit NTP value, ``now`` served time in ns
        (root dispersion grows with it).
        """
        n = len(request)
        if n == 0:
            return None, Reason.TOO_SHORT
        b0 = request[0]
        version = (b0 >> 3) & 7
        mode = b0 & 7
        flags: frozenset[str] = _NO_FLAGS
        if self.access is not None and client is not None:
            flags = self.access.flags(client[0], client[1])
            if "ignore" in flags:
                return None, Reason.RESTRICTED
        if mode == MODE_CONTROL:
            # Mode 6 (ntpq) is not served yet; noquery clients are counted apart so the
            # counters show who was refused rather than unserved.
            return None, Reason.CONTROL_DENIED if "noquery" in flags else Reason.CONTROL
        if mode == MODE_PRIVATE:
            return None, Reason.PRIVATE
        if version == 0 or version > 4:
            return None, Reason.BAD_VERSION
        if mode == MODE_CLIENT or (mode == MODE_RESERVED and version == 1):
            reply_mode = MODE_SERVER
        elif mode == MODE_ACTIVE:
            reply_mode = MODE_PASSIVE
        elif mode in (MODE_PASSIVE, MODE_SERVER, MODE_BROADCAST):
            return None, Reason.NOT_REQUEST
        else:
            return None, Reason.BAD_MODE
        if n < HEADER_LEN:
            return None, Reason.TOO_SHORT
        if client is not None and len(client) >= 2 and client[1] == 0:
            return None, Reason.BAD_PORT
        if flags:
            if "noserve" in flags:
                return None, Reason.RESTRICTED
            if "version" in flags and version != 4:
                return None, Reason.VERSION_DENIED

        key: auth.MacKey | None = None
        nak = False
        reason = Reason.SERVED
        if n > HEADER_LEN:
            try:
                _fields, mac, mac_offset = decode_trailer(request, version)
            except PacketError:
                return None, Reason.MALFORMED
            if mac is not None:
                key = auth.verify(self._keys, mac.keyid, request[:mac_offset], mac.digest)
                if key is None:
                    nak = True
                    reason = Reason.CRYPTO_NAK
                else:
                    reason = Reason.SERVED_AUTH

        if flags:
            if "notrust" in flags and key is None:
                return None, Reason.UNAUTHENTICATED
            if "limited" in flags and self.limiter is not None:
                verdict = self.limiter.check(client[0], now, kod="kod" in flags)
                if verdict == VERDICT_DROP:
                    return None, Reason.RATE_LIMITED
                if verdict == VERDICT_KOD:
                    return self._kiss_rate(request, version, reply_mode), Reason.KOD_RATE

        buf = self._template.copy()
        buf[0] = self._leap_bits | (version << 3) | reply_mode
        buf[2] = request[2]
        _U32.pack_into(buf, 8, ns_to_short(self.state.root_dispersion_at(now)))
        buf[24:32] = request[40:48]
        _U64.pack_into(buf, 32, rx_time)
        return Reply(buf, key, nak), reason
