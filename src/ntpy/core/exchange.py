"""The client side of one NTP exchange, sans-IO: build the request, judge the reply, compute
the sample. ``ntpy query``, ``ntpy sync`` and the daemon's upstream sources all use it.

The request's transmit timestamp is a random 64-bit cookie supplied by the caller (as
chrony does) rather than our clock reading: it does not leak our time, and a reply is
accepted only if it echoes that cookie as its origin, which rejects duplicated, stale and
spoofed replies. The real send time T1 is kept in the ``ClientExchange`` (the shell tells it
when the request left) and the shell passes the receive time T4 with the reply.

The checks, in order: the packet decodes; its mode answers ours; its origin is our cookie
(or, in interleaved mode, the receive field we sent); the authenticator (``ClientAuth``)
accepts it; a stratum-0 reply with kiss code RATE, DENY or RSTR is a kiss-o'-death
(``KissOfDeath``, typed ``KissCode``); the transmit time is set and the root distance and
stratum are sane. Then the sample is computed.

Authentication plugs in here and nowhere else: ``ClientAuth.protect`` adds what proves the
request (a MAC, NTS extension fields) and ``ClientAuth.verify`` checks the reply once its
origin matched. A source without a key uses ``NO_AUTH``; ``server HOST key N`` uses
``ntpy.core.symkey.SymmetricKeyAuth``.

Interleaved mode (``server ... xleave``; draft-ietf-ntp-interleaved-modes, chrony's
``xleave``). A basic server reads T3 before its reply leaves, so T3 is early by its send
path. In interleaved mode the server sends, in its reply to our *next* request, the
kernel's transmit time of the previous reply; so each reply completes the exchange before
it. The request asks for that by carrying, as origin, the server's receive timestamp of
the previous exchange (the key under which the server kept its transmit time), and a
receive field that differs from the transmit field (here the cookie with its halves
swapped: as unguessable as the cookie, and in the same packet anyway). A server that
interleaves echoes our receive field as the origin; one that does not echoes the cookie,
and its reply is used in basic mode. ``Exchanged`` is what a source keeps of the last
exchange for that, and ``ClientExchange.reply`` returns the sample of either kind.
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
MAX_SERVER_INTERVAL_NS = 4_000_000_000
"""An interleaved T3 more than this from the T2 it completes is not believed (chrony's
MAX_SERVER_INTERVAL): a server's reply does not take seconds to leave."""
_MASK64 = (1 << 64) - 1


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
    INTERLEAVED_START = "interleaved_start"
    """A valid interleaved reply whose earlier exchange gives no sample (it was already
    used in basic mode, or its reply was unsynchronized): the next reply gives one."""

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
    interleaved: bool = False
    """From an interleaved reply: T1, T2 and T4 of the earlier exchange, and T3 the time
    the server's reply to it really left."""

    @property
    def synchronized(self) -> bool:
        return self.leap != LEAP_ALARM and self.stratum != 0

    @property
    def refid_text(self) -> str:
        return refid_to_text(self.refid, self.stratum)


@dataclass(slots=True, eq=False)
class Exchanged:
    """What interleaved mode keeps of the last valid exchange with a server: its server
    will send the true transmit time of that reply in its next one. Mutable: the shell's
    kernel TX timestamp replaces ``t1_ns``, and clock corrections re-express the times."""

    cookie: int
    """The transmit field of that request (matches its kernel TX timestamp)."""
    t1_ns: int
    t2_ntp: int
    """The server's receive timestamp as sent: our next request's origin."""
    t4_ns: int
    root_delay_ns: int
    root_dispersion_ns: int
    usable: bool
    """May still give a sample: its reply was synchronized and it gave none yet."""


def build_request(
    cookie: int,
    version: int = 4,
    mode: int = MODE_CLIENT,
    poll: int = 0,
    *,
    origin: int = 0,
    receive: int = 0,
) -> bytes:
    """A 48-byte request whose transmit timestamp is ``cookie`` (random, from the caller);
    ``origin`` and ``receive`` are set only to ask for interleaved mode."""
    if not 1 <= version <= 4:
        raise ValueError(f"NTP version must be 1..4, got {version}")
    b0 = (0 << 6) | (version << 3) | (0 if version == 1 and mode == MODE_CLIENT else mode)
    # Leap 0, stratum 0, our poll, precision 0; everything else zero but the timestamps.
    return (
        struct.pack("!BBbb", b0, 0, poll, 0)
        + bytes(20)
        + struct.pack("!QQQ", origin, receive, cookie)
    )


def interleave_field(cookie: int, origin: int) -> int:
    """The receive field of an interleaved request: the cookie with its halves swapped,
    made to differ from the cookie, the origin and zero (a server tells interleaved
    requests by receive != transmit, and echoes this as the origin of its answer)."""
    value = ((cookie << 32) | (cookie >> 32)) & _MASK64
    while value in (cookie, origin, 0):
        value = (value + 1) & _MASK64
    return value


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


def check_reply(
    data: bytes,
    cookie: int,
    *,
    sent_mode: int = MODE_CLIENT,
    auth: ClientAuth = NO_AUTH,
    xleave_origin: int = 0,
) -> tuple[Packet, bool]:
    """The RFC 5905 checks of a reply to our request: (the packet, whether it answers in
    interleaved mode: its origin is ``xleave_origin``, the receive field we sent).

    Raises ReplyRejected as ``parse_reply`` documents."""
    try:
        pkt: Packet = decode(data)
    except PacketError as exc:
        raise ReplyRejected(Reason.MALFORMED, str(exc)) from exc
    # A symmetric active request is answered in passive mode, or in active mode by a peer
    # that configured us too (its own poll, whose origin is our last transmit time).
    expected = _ANSWER_MODES[MODE_ACTIVE if sent_mode == MODE_ACTIVE else MODE_CLIENT]
    if pkt.mode not in expected and not (pkt.version == 1 and pkt.mode == 0):
        raise ReplyRejected(Reason.BAD_MODE, f"mode {pkt.mode}, expected {expected[0]}")
    interleaved = bool(xleave_origin) and pkt.origin_ts == xleave_origin
    if pkt.origin_ts != cookie and not interleaved:
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
    return pkt, interleaved


def make_sample(
    pkt: Packet,
    t1_ns: int,
    t2_ns: int,
    t3_ns: int,
    t4_ns: int,
    *,
    root_delay_ns: int | None = None,
    root_dispersion_ns: int | None = None,
    interleaved: bool = False,
) -> Sample:
    """The sample of one exchange's four times (what the server said of itself from
    ``pkt``): offset ((T2 - T1) + (T3 - T4)) / 2, delay (T4 - T1) - (T3 - T2)."""
    offset = ((t2_ns - t1_ns) + (t3_ns - t4_ns)) // 2
    delay = (t4_ns - t1_ns) - (t3_ns - t2_ns)
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
        root_delay_ns=short_to_ns(pkt.root_delay) if root_delay_ns is None else root_delay_ns,
        root_dispersion_ns=short_to_ns(pkt.root_dispersion)
        if root_dispersion_ns is None
        else root_dispersion_ns,
        reference_ns=reference,
        t1_ns=t1_ns,
        t2_ns=t2_ns,
        t3_ns=t3_ns,
        t4_ns=t4_ns,
        interleaved=interleaved,
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
    """Validate ``data`` as the (basic mode) reply to our request and compute the sample.

    Raises ReplyRejected for a reply that fails the RFC 5905 sanity checks. A kiss-o'-death
    (stratum 0 with code RATE, DENY or RSTR, whatever the leap indicator: real ones carry
    LI=3) raises KissOfDeath, reason ``kod_XXXX``, once its origin proves it answers our
    request. An unsynchronized server (LI=3, or stratum 0 with any other refid) is
    *returned* (with ``synchronized`` False) so that callers can show what it said; a time
    source must not use such a sample.
    """
    pkt, _ = check_reply(data, cookie, sent_mode=sent_mode, auth=auth)
    t2 = ntp_to_unix_ns(pkt.receive_ts, t1_ns)
    t3 = ntp_to_unix_ns(pkt.transmit_ts, t4_ns)
    return make_sample(pkt, t1_ns, t2, t3, t4_ns)


@dataclass(frozen=True, slots=True)
class Reply:
    """A valid reply as a source sees it (``ClientExchange.reply``)."""

    sample: Sample | None
    """None only for ``Reason.INTERLEAVED_START``."""
    exchanged: Exchanged
    """This exchange, for the next interleaved request."""
    interleaved: bool


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
    previous: Exchanged | None = None
    """Interleaved mode: the exchange whose true T3 this request asks for (None: basic)."""
    xleave_origin: int = 0
    """The receive field we sent: the origin of an interleaved answer (0: basic)."""

    @classmethod
    def start(
        cls,
        cookie: int,
        *,
        version: int = 4,
        mode: int = MODE_CLIENT,
        poll: int = 0,
        auth: ClientAuth = NO_AUTH,
        previous: Exchanged | None = None,
    ) -> ClientExchange:
        """A new exchange whose request carries ``cookie`` as its transmit timestamp; with
        ``previous``, it asks for interleaved mode (see the module docstring)."""
        origin = receive = 0
        if previous is not None:
            origin = previous.t2_ntp
            receive = interleave_field(cookie, origin)
        request = build_request(
            cookie, version=version, mode=mode, poll=poll, origin=origin, receive=receive
        )
        return cls(cookie, auth.protect(request), mode, auth, None, previous, receive)

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
        got = self.reply(data, t4_ns)
        if got.sample is None:
            raise ReplyRejected(Reason.INTERLEAVED_START, "no sample from this reply")
        return got.sample

    def reply(self, data: bytes, t4_ns: int) -> Reply:
        """Judge ``data`` (received at T4 = ``t4_ns``) as the reply, in basic or
        interleaved mode, or raise as ``receive`` does.

        Basic: the sample of this exchange (T1..T4), which is then used up. Interleaved:
        the sample of the previous exchange, its T3 now the time the server's reply to it
        really left (none if that exchange is not ``usable``: ``sample`` None), and this
        exchange is kept whole for the next reply.
        """
        t1 = self.t1_ns
        if t1 is None:
            raise ReplyRejected(Reason.UNEXPECTED, "the request was not sent")
        pkt, interleaved = check_reply(
            data,
            self.cookie,
            sent_mode=self.mode,
            auth=self.auth,
            xleave_origin=self.xleave_origin,
        )
        synced = pkt.leap != LEAP_ALARM and 1 <= pkt.stratum <= 15
        sample: Sample | None = None
        prev = self.previous
        if not interleaved:
            t2 = ntp_to_unix_ns(pkt.receive_ts, t1)
            sample = make_sample(pkt, t1, t2, ntp_to_unix_ns(pkt.transmit_ts, t4_ns), t4_ns)
        elif prev is not None and prev.usable:
            t2 = ntp_to_unix_ns(prev.t2_ntp, prev.t1_ns)
            t3 = ntp_to_unix_ns(pkt.transmit_ts, prev.t4_ns)
            if not abs(t3 - t2) <= MAX_SERVER_INTERVAL_NS:
                raise ReplyRejected(
                    Reason.BOGUS, "interleaved transmit time is not within 4 s of its receive time"
                )
            sample = make_sample(
                pkt,
                prev.t1_ns,
                t2,
                t3,
                prev.t4_ns,
                root_delay_ns=max(short_to_ns(pkt.root_delay), prev.root_delay_ns),
                root_dispersion_ns=max(short_to_ns(pkt.root_dispersion), prev.root_dispersion_ns),
                interleaved=True,
            )
        exchanged = Exchanged(
            cookie=self.cookie,
            t1_ns=t1,
            t2_ntp=pkt.receive_ts,
            t4_ns=t4_ns,
            root_delay_ns=short_to_ns(pkt.root_delay),
            root_dispersion_ns=short_to_ns(pkt.root_dispersion),
            usable=interleaved and synced,
        )
        return Reply(sample, exchanged, interleaved)


__all__ = [
    "HEADER_LEN",
    "KISS_MEANINGS",
    "NO_AUTH",
    "ClientAuth",
    "ClientExchange",
    "Exchanged",
    "KissCode",
    "KissOfDeath",
    "NoAuth",
    "Reason",
    "Reply",
    "ReplyRejected",
    "Sample",
    "build_request",
    "build_symmetric",
    "check_reply",
    "interleave_field",
    "kiss_reason",
    "make_sample",
    "parse_reply",
]
