"""The client side of one NTP exchange: build a request, validate the reply, compute a sample.

Used by ``ntpy query`` and by the upstream sources. The request's transmit timestamp is a
random 64-bit cookie supplied by the caller (as chrony does) rather than our clock reading:
it does not leak our time, and a reply is accepted only if it echoes that cookie as its
origin, which rejects duplicated, stale and spoofed replies. The real send time T1 is
kept by the caller and passed back with the receive time T4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
from ntpy.core.timestamps import ntp_to_unix_ns, short_to_ns

MAX_DISPERSION_NS = 16_000_000_000
"""RFC 5905 MAXDISP: a server claiming more root delay/dispersion than 16 s is not usable."""


class ReplyRejected(Exception):
    """A reply that must not be used; ``reason`` is a short counter-style name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


KISS_MEANINGS = {
    "RATE": "rate exceeded: the server asks us to poll less often",
    "DENY": "access denied by the server",
    "RSTR": "access restricted by the server",
}


class KissOfDeath(ReplyRejected):
    """A kiss-o'-death (RFC 5905 7.4): stratum 0 with an ASCII kiss code as refid.

    ``reason`` is ``kod_CODE``; ``poll`` is the poll (log2 s) the server advertised, which
    for RATE is the least interval it will accept.
    """

    def __init__(self, code: str, poll: int) -> None:
        meaning = KISS_MEANINGS.get(code)
        super().__init__(
            f"kod_{code}", f"kiss-o'-death {code}" + (f" ({meaning})" if meaning else "")
        )
        self.code = code
        self.poll = poll


def kiss_code(refid: bytes) -> str | None:
    """The kiss code in a stratum-0 refid if it is one a client must act on: RATE, DENY,
    RSTR (``KISS_MEANINGS``).

    Any other stratum-0 refid -- INIT from an unsynchronized ntpd or ntpy, zero from
    chrony, the refid a server kept when it lost sync, codes such as AUTH -- makes the
    reply one from an unsynchronized server, not usable and not an order: ntpd also acts
    only on the codes it knows, and taking every printable refid for a kiss would let an
    unsynchronized server that kept refid "GPS" look like it refuses us.
    """
    code = refid.rstrip(b"\0").decode("ascii", "replace")
    return code if code in KISS_MEANINGS else None


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


def parse_reply(
    data: bytes, cookie: int, t1_ns: int, t4_ns: int, *, sent_mode: int = MODE_CLIENT
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
        raise ReplyRejected("malformed", str(exc)) from exc
    expected_mode = MODE_PASSIVE if sent_mode == MODE_ACTIVE else MODE_SERVER
    if pkt.mode != expected_mode and not (pkt.version == 1 and pkt.mode == 0):
        raise ReplyRejected("bad_mode", f"mode {pkt.mode}, expected {expected_mode}")
    if pkt.origin_ts != cookie:
        raise ReplyRejected("bogus", "origin timestamp does not match our request")
    if pkt.stratum == 0:
        code = kiss_code(pkt.refid_bytes)
        if code is not None:
            raise KissOfDeath(code, pkt.poll)
    if pkt.transmit_ts == 0:
        raise ReplyRejected("bogus", "transmit timestamp is zero")
    root_delay = short_to_ns(pkt.root_delay)
    root_disp = short_to_ns(pkt.root_dispersion)
    if pkt.leap != LEAP_ALARM and (
        root_delay / 2 + root_disp >= MAX_DISPERSION_NS or pkt.stratum > 15
    ):
        raise ReplyRejected("insane", "root distance or stratum out of range")
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


__all__ = [
    "HEADER_LEN",
    "KISS_MEANINGS",
    "KissOfDeath",
    "ReplyRejected",
    "Sample",
    "build_request",
    "kiss_code",
    "parse_reply",
]
