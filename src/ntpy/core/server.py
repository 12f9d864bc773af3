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

The fast path. Almost every request a public server sees is a plain 48-byte mode 3
packet from a client the access rules let through. For those the shell asks
:meth:`Responder.plain_class` once per client address (it caches the answer per raw
address until :meth:`Responder.plain_generation` changes) and then has
:meth:`Responder.answer_plain_into` write the reply over the request in place: one
``struct.pack_into`` of a header prebuilt in ``set_state``. ``handle`` builds its replies
with the same pack and the same header, so both paths produce identical bytes.

Root dispersion grows with time (PHI = 15 ppm). Instead of recomputing it per request it
is computed for the *end* of the aligned window of 2**30 ns (~1.07 s) that ``now`` falls
in, so the value served is never smaller than the exact one and at most
15 ppm x 1.07 s = 16 us larger -- about one unit of the 16-bit fraction (15.3 us) the
field has anyway. ntpd and chrony likewise serve a dispersion updated per second or per
clock update, not per packet.
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
from ntpy.core.timestamps import NS_PER_S as _NS
from ntpy.core.timestamps import NTP_UNIX_OFFSET_NS as _NTP_EPOCH_NS
from ntpy.core.timestamps import ns_to_short, unix_ns_to_ntp

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TAIL = struct.Struct("!bIIIQ")
"""Bytes 3..24 of a reply: precision, root delay, root dispersion, refid, reference time."""
_PLAIN = struct.Struct("!BBB21s8sQ")
"""Bytes 0..40 of a reply: LI/VN/mode, stratum, poll, the tail above, origin, receive."""
_HALF_S = 500_000_000
_MASK64 = (1 << 64) - 1
DISPERSION_WINDOW_LOG2 = 30
"""Root dispersion is served as of the end of the aligned 2**30 ns window ``now`` is in."""


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

PLAIN_SERVE = 0
"""plain_class: no restriction applies -- answer."""
PLAIN_LIMIT = 1
"""``limited``: ask the rate limiter first (drop when over)."""
PLAIN_LIMIT_KOD = 2
"""``limited kod``: ask the rate limiter first (RATE kiss or drop when over)."""
PLAIN_IGNORE = 3
"""``ignore``: every non-empty datagram from it is dropped as ``drop_restricted``."""
PLAIN_GENERAL = 4
"""Anything else (``noserve``, ``version``, ``notrust``, ...): use :meth:`Responder.handle`."""
_GENERAL_FLAGS = frozenset({"noserve", "version", "notrust"})


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
        self._leap_bits = 0
        self._stratum = 0
        self._tail = bytes(_TAIL.size)
        self._win_lo = self._win_hi = 0
        self.plain_b0: dict[int, int] = {}
        """Request byte 0 of a plain client request (any LI, version 1..4, mode 3) ->
        reply byte 0 (our LI, the same version, mode 4). A miss means "not plain"."""
        self._gen = 0
        self._gen_key: tuple[object, object, object] | None = None
        self.plain_port_matters = False
        """Whether :meth:`plain_class` can differ between source port 123 and others."""
        self.state = state
        self.set_state(state)

    def set_state(self, state: SystemState) -> None:
        """Adopt new system variables (called when synchronization changes)."""
        self.state = state
        self._leap_bits = leap_bits = (state.leap & 3) << 6
        self._stratum = state.wire_stratum
        self.plain_b0 = {
            (li << 6) | (v << 3) | MODE_CLIENT: leap_bits | (v << 3) | MODE_SERVER
            for li in range(4)
            for v in range(1, 5)
        }
        self._win_lo = self._win_hi = 0  # an empty window: the next request rebuilds _tail

    def _build_tail(self, now: int) -> bytes:
        """Rebuild the header bytes 3..24 for the dispersion window ``now`` is in."""
        state = self.state
        lo = (now >> DISPERSION_WINDOW_LOG2) << DISPERSION_WINDOW_LOG2
        hi = lo + (1 << DISPERSION_WINDOW_LOG2)
        ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
        self._tail = _TAIL.pack(
            state.precision,
            ns_to_short(state.root_delay_ns),
            ns_to_short(state.root_dispersion_at(hi)),
            state.refid,
            ref,
        )
        self._win_lo, self._win_hi = lo, hi
        return self._tail

    def answer_plain_into(self, buf: bytearray, off: int, reply_b0: int, rx_ns: int) -> None:
        """Turn the plain request at ``buf[off:off+48]`` into its reply, in place.

        ``reply_b0`` is ``plain_b0[buf[off]]``; ``rx_ns`` the served receive time (also the
        "now" of root dispersion). The caller has checked access and rate limits (see
        :meth:`plain_class`) and writes the transmit timestamp (bytes 40..48) last.
        """
        tail = self._tail
        if not self._win_lo <= rx_ns < self._win_hi:
            tail = self._build_tail(rx_ns)
        _PLAIN.pack_into(
            buf,
            off,
            reply_b0,
            self._stratum,
            buf[off + 2],
            tail,
            buf[off + 40 : off + 48],
            (((rx_ns + _NTP_EPOCH_NS) << 32) + _HALF_S) // _NS & _MASK64,
        )

    def plain_class(self, host: str, port: int | None = None) -> int:
        """What to do with a plain request from ``host``/``port``: a PLAIN_* constant.

        Valid for every plain request from that address (and port class, see
        ``plain_port_matters``) until :meth:`plain_generation` changes.
        """
        if self.access is None:
            return PLAIN_SERVE
        flags = self.access.flags(host, port)
        if not flags:
            return PLAIN_SERVE
        if "ignore" in flags:
            return PLAIN_IGNORE
        if not flags.isdisjoint(_GENERAL_FLAGS):
            return PLAIN_GENERAL
        if "limited" in flags and self.limiter is not None:
            return PLAIN_LIMIT_KOD if "kod" in flags else PLAIN_LIMIT
        return PLAIN_SERVE

    def plain_generation(self) -> int | None:
        """A number that changes whenever cached :meth:`plain_class` answers may be stale
        (new access policy, new rules inside it, new limiter); None when the policy cannot
        promise stable answers per address (then ask every time)."""
        access = self.access
        rules = None
        if access is not None:
            rules = getattr(access, "rules", None)
            if rules is None:
                return None
        limiter = self.limiter
        key = self._gen_key
        if key is None or key[0] is not access or key[1] is not rules or key[2] is not limiter:
            self._gen += 1
            self._gen_key = (access, rules, limiter)
            self.plain_port_matters = bool(getattr(rules, "has_ntpport", rules is not None))
        return self._gen

    def kiss_rate(self, request: bytes, version: int, reply_mode: int = MODE_SERVER) -> Reply:
        """The RATE kiss for ``request`` (see ``_kiss_rate``); for the shell's fast path."""
        return self._kiss_rate(request, version, reply_mode)

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

        tail = self._tail
        if not self._win_lo <= now < self._win_hi:
            tail = self._build_tail(now)
        buf = bytearray(HEADER_LEN)
        _PLAIN.pack_into(
            buf,
            0,
            self._leap_bits | (version << 3) | reply_mode,
            self._stratum,
            request[2],
            tail,
            request[40:48],
            rx_time,
        )
        return Reply(buf, key, nak), reason
