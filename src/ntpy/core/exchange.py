"""The client side of one NTP exchange, sans-IO: build the request, judge the reply, compute
the sample. ``ntpy query``, ``ntpy sync`` and the daemon's upstream sources all use it.

The request's transmit timestamp is a random 64-bit cookie supplied by the caller (as
chrony does) rather than our clock reading: it does not leak our time, and a reply is
accepted only if it echoes that cookie as its origin, which rejects duplicated, stale and
spoofed replies. The real send time T1 is kept in the ``ClientExchange`` (the shell tells it
when the request left) and the shell passes the receive time T4 with the reply.

The checks, in order: the packet decodes; its mode answers ours; its origin is our cookie;
the authenticator (``ClientAuth``) accepts it; a stratum-0 reply with kiss code RATE, DENY
or RSTR is a kiss-o'-death (``KissOfDeath``, typed ``KissCode``); the transmit time is set
and the root distance and stratum are sane. Then the sample is computed.

Authentication plugs in here and nowhere else: ``ClientAuth.protect`` adds what proves the
request (a MAC, NTS extension fields) and ``ClientAuth.verify`` checks the reply once its
origin matched. A source without a key uses ``NO_AUTH``; ``server HOST key N`` uses
``ntpy.core.symkey.SymmetricKeyAuth``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ntpy.core.kiss import KISS_MEANINGS, KissCode
from ntpy.core.packet import (
    HEADER_LEN,
    LEAP_ALARM,
    MODE_ACTIVE,
    MODE_CLIENT,
    MODE_PASSIVE,
    MODE_SERVER,
    Packet,
    PacketError,
    decode,
    refid_to_text,
)
from ntpy.core.system import SystemState
from ntpy.core.timestamps import ns_to_short, ntp_to_unix_ns, short_to_ns, unix_ns_to_ntp

MAX_DISPERSION_NS = 16_000_000_000
"""RFC 5905 MAXDISP: a server claiming more root delay/dispersion than 16 s is not usable."""


class Reason(StrEnum):
    """What became of a reply, in counter-style names (``drop_bogus``, ``kod_RATE``...)."""

    OK = "ok"
    """A usable sample from a synchronized server."""
    UNEXPECTED = "unexpected"
    """No request of ours is waiting for a reply (a duplicate, or one we never sent)."""
    UNSYNCHRONIZED = "unsynchronized"
    """A genuine reply from a server that is not synchronized itself: carries no time."""
    MALFORMED = "malformed"
    BAD_MODE = "bad_mode"
    BOGUS = "bogus"
    """The origin is not our cookie (stale, duplicated, spoofed), or no transmit time."""
    INSANE = "insane"
    """Root distance or stratum out of range."""
    LOOP = "loop"
    """A genuine reply from a source synchronized to us (its refid is our address) or,
    for a peer, to the source we follow: using it would make a timing loop (ntpd's
    TEST12)."""
    AUTH = "auth"
    """The authenticator refused the reply (no MAC, wrong key id, a MAC that does not
    verify)."""
    CRYPTO_NAK = "crypto_nak"
    """The server answered with a crypto-NAK: it did not accept our request's MAC."""
    KOD_RATE = "kod_RATE"
    KOD_DENY = "kod_DENY"
    KOD_RSTR = "kod_RSTR"
    KOD_NTSN = "kod_NTSN"

    @property
    def kiss(self) -> KissCode | None:
        """The kiss code, for the ``kod_*`` reasons."""
        return _REASON_KISSES.get(self)


_KISS_REASONS = {
    KissCode.RATE: Reason.KOD_RATE,
    KissCode.DENY: Reason.KOD_DENY,
    KissCode.RSTR: Reason.KOD_RSTR,
    KissCode.NTSN: Reason.KOD_NTSN,
}
_REASON_KISSES = {reason: code for code, reason in _KISS_REASONS.items()}


_ANSWER_MODES = {MODE_CLIENT: (MODE_SERVER,), MODE_ACTIVE: (MODE_PASSIVE, MODE_ACTIVE)}


def kiss_reason(code: KissCode) -> Reason:
    """The reason (and counter name) a reply with this kiss gets: ``kod_RATE``..."""
    return _KISS_REASONS[code]


class ReplyRejected(Exception):
    """A reply that must not be used; ``reason`` says why, ``detail`` for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KissOfDeath(ReplyRejected):
    """A kiss-o'-death (RFC 5905 7.4): stratum 0 with a kiss code as refid.

    ``reason`` is ``kod_CODE``; ``poll`` is the poll (log2 s) the server advertised, which
    for RATE is the least interval it will accept.
    """

    def __init__(self, code: KissCode, poll: int) -> None:
        super().__init__(kiss_reason(code), f"kiss-o'-death {code} ({code.meaning})")
        self.code = code
        self.poll = poll


class ClientAuth(Protocol):
    """The place for client-side authentication (symmetric keys, NTS): one instance per
    server, holding whatever keys or cookies it needs."""

    def protect(self, request: bytes) -> bytes:
        """The request as sent: ``request`` plus what proves it (MAC, extension fields)."""
        ...

    def verify(self, data: bytes, packet: Packet) -> None:
        """Raise ``ReplyRejected`` (``Reason.AUTH`` or ``CRYPTO_NAK``) unless the reply (raw
        bytes and decoded, its origin already matched) is authentic. Called before a kiss is
        read."""
        ...


class NoAuth:
    """Unauthenticated NTP: the request goes as built and every reply passes."""

    def protect(self, request: bytes) -> bytes:
        return request

    def verify(self, data: bytes, packet: Packet) -> None:
        return None


NO_AUTH: ClientAuth = NoAuth()


@dataclass(frozen=True, slots=True)
class Sample:
    """One offset/delay measurement against a server, plus what the server said of itself."""

    offset_ns: int
    """Server time minus our time: add it to our clock to agree with the server."""
    delay_ns: int
    stratum: int
    leap: int
    refid: int
    version: int
    mode: int
    poll: int
    precision: int
    root_delay_ns: int
    root_dispersion_ns: int
    reference_ns: int | None
    t1_ns: int
    t2_ns: int
    t3_ns: int
    t4_ns: int

    @property
    def synchronized(self) -> bool:
        return self.leap != LEAP_ALARM and self.stratum != 0

    @property
    def refid_text(self) -> str:
        return refid_to_text(self.refid, self.stratum)


def build_request(cookie: int, version: int = 4, mode: int = MODE_CLIENT, poll: int = 0) -> bytes:
    """A 48-byte request whose transmit timestamp is ``cookie`` (random, from the caller)."""
    if not 1 <= version <= 4:
        raise ValueError(f"NTP version must be 1..4, got {version}")
    b0 = (0 << 6) | (version << 3) | (0 if version == 1 and mode == MODE_CLIENT else mode)
    # Leap 0, stratum 0, our poll, precision 0; everything else zero but the cookie.
    return struct.pack("!BBbb", b0, 0, poll, 0) + bytes(36) + struct.pack("!Q", cookie)


def build_symmetric(
    xmt: int,
    state: SystemState,
    now_ns: int,
    *,
    org: int = 0,
    rec: int = 0,
    version: int = 4,
    poll: int = 0,
) -> bytes:
    """A 48-byte symmetric active (mode 1) packet, RFC 5905 section 9.

    Unlike a client request it carries real time: our system variables (so the peer can
    select us), ``org`` = the peer's last transmit timestamp, ``rec`` = when we received
    it, and ``xmt`` = our transmit time (its lowest bits random, from the caller), because
    a peer that keeps its own association computes its sample from exactly these. ``xmt``
    is also the cookie the answer must echo as its origin.
    """
    if not 1 <= version <= 4:
        raise ValueError(f"NTP version must be 1..4, got {version}")
    ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
    return struct.pack(
        "!BBbbIIIQQQQ",
        ((state.leap & 3) << 6) | (version << 3) | MODE_ACTIVE,
        state.wire_stratum,
        poll,
        state.precision,
        ns_to_short(state.root_delay_ns),
        ns_to_short(state.root_dispersion_at(now_ns)),
        state.refid,
        ref,
        org,
        rec,
        xmt,
    )


def parse_reply(
    data: bytes,
    cookie: int,
    t1_ns: int,
    t4_ns: int,
    *,
    sent_mode: int = MODE_CLIENT,
    auth: ClientAuth = NO_AUTH,
) -> Sample:
    """Validate ``data`` as the reply to our request and compute the sample.

    Raises ReplyRejected for a reply that fails the RFC 5905 sanity checks. A kiss-o'-death
    (stratum 0 with code RATE, DENY or RSTR, whatever the leap indicator: real ones carry
    LI=3) raises KissOfDeath, reason ``kod_XXXX``, once its origin proves it answers our
    request. An unsynchronized server (LI=3, or stratum 0 with any other refid) is
    *returned* (with ``synchronized`` False) so that callers can show what it said; a time
    source must not use such a sample.
    """
    try:
        pkt: Packet = decode(data)
    except PacketError as exc:
        raise ReplyRejected(Reason.MALFORMED, str(exc)) from exc
    # A symmetric active request is answered in passive mode, or in active mode by a peer
    # that configured us too (its own poll, whose origin is our last transmit time).
    expected = _ANSWER_MODES[MODE_ACTIVE if sent_mode == MODE_ACTIVE else MODE_CLIENT]
    if pkt.mode not in expected and not (pkt.version == 1 and pkt.mode == 0):
        raise ReplyRejected(Reason.BAD_MODE, f"mode {pkt.mode}, expected {expected[0]}")
    if pkt.origin_ts != cookie:
        raise ReplyRejected(Reason.BOGUS, "origin timestamp does not match our request")
    auth.verify(data, pkt)
    if pkt.stratum == 0:
        code = KissCode.from_refid(pkt.refid_bytes)
        if code is not None:
            raise KissOfDeath(code, pkt.poll)
    if pkt.transmit_ts == 0:
        raise ReplyRejected(Reason.BOGUS, "transmit timestamp is zero")
    root_delay = short_to_ns(pkt.root_delay)
    root_disp = short_to_ns(pkt.root_dispersion)
    if pkt.leap != LEAP_ALARM and (
        root_delay / 2 + root_disp >= MAX_DISPERSION_NS or pkt.stratum > 15
    ):
        raise ReplyRejected(Reason.INSANE, "root distance or stratum out of range")
    t2 = ntp_to_unix_ns(pkt.receive_ts, t1_ns)
    t3 = ntp_to_unix_ns(pkt.transmit_ts, t4_ns)
    offset = ((t2 - t1_ns) + (t3 - t4_ns)) // 2
    delay = (t4_ns - t1_ns) - (t3 - t2)
    reference = ntp_to_unix_ns(pkt.reference_ts, t1_ns) if pkt.reference_ts else None
    return Sample(
        offset_ns=offset,
        delay_ns=max(delay, 0),
        stratum=pkt.stratum,
        leap=pkt.leap,
        refid=pkt.refid,
        version=pkt.version,
        mode=pkt.mode,
        poll=pkt.poll,
        precision=pkt.precision,
        root_delay_ns=root_delay,
        root_dispersion_ns=root_disp,
        reference_ns=reference,
        t1_ns=t1_ns,
        t2_ns=t2,
        t3_ns=t3,
        t4_ns=t4_ns,
    )


@dataclass(slots=True, eq=False)
class ClientExchange:
    """One request in flight and the rules its reply must pass.

    ``start`` builds the request (the caller draws the cookie, the core has no randomness);
    the shell sends ``request``, then calls ``sent`` with its clock reading T1; each datagram
    that comes back goes to ``receive`` with its receive time T4. The shell may correct
    ``t1_ns`` when the clock is corrected while the request is in flight.
    """

    cookie: int
    request: bytes
    mode: int = MODE_CLIENT
    auth: ClientAuth = NO_AUTH
    t1_ns: int | None = None
    """Our clock when the request left; None until the shell says it was sent."""

    @classmethod
    def start(
        cls,
        cookie: int,
        *,
        version: int = 4,
        mode: int = MODE_CLIENT,
        poll: int = 0,
        auth: ClientAuth = NO_AUTH,
    ) -> ClientExchange:
        """A new exchange whose request carries ``cookie`` as its transmit timestamp."""
        request = auth.protect(build_request(cookie, version=version, mode=mode, poll=poll))
        return cls(cookie, request, mode, auth)

    @classmethod
    def symmetric(
        cls,
        xmt: int,
        state: SystemState,
        now_ns: int,
        *,
        org: int = 0,
        rec: int = 0,
        version: int = 4,
        poll: int = 0,
        auth: ClientAuth = NO_AUTH,
    ) -> ClientExchange:
        """A symmetric active exchange (``peer HOST``): see :func:`build_symmetric`."""
        packet = build_symmetric(xmt, state, now_ns, org=org, rec=rec, version=version, poll=poll)
        return cls(xmt, auth.protect(packet), MODE_ACTIVE, auth)

    def sent(self, t1_ns: int) -> None:
        """The request left at T1 = ``t1_ns`` (our clock, as close to the send as can be)."""
        self.t1_ns = t1_ns

    def receive(self, data: bytes, t4_ns: int) -> Sample:
        """Judge ``data`` (received at T4 = ``t4_ns``) as the reply: the sample, or raise
        ``ReplyRejected`` (``KissOfDeath`` for a kiss); ``UNEXPECTED`` before ``sent``."""
        if self.t1_ns is None:
            raise ReplyRejected(Reason.UNEXPECTED, "the request was not sent")
        return parse_reply(
            data, self.cookie, self.t1_ns, t4_ns, sent_mode=self.mode, auth=self.auth
        )


__all__ = [
    "HEADER_LEN",
    "KISS_MEANINGS",
    "NO_AUTH",
    "ClientAuth",
    "ClientExchange",
    "KissCode",
    "KissOfDeath",
    "NoAuth",
    "Reason",
    "ReplyRejected",
    "Sample",
    "build_request",
    "build_symmetric",
    "kiss_reason",
    "parse_reply",
]
