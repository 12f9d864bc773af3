"""The broadcast client (``broadcastclient``), sans-IO: which mode 5 packets become samples.

A broadcast server sends its time unasked, so a client has no request to match a packet
against: anyone on the LAN can send one. As ntpd does, only packets whose MAC verifies
under a trusted key are used while authentication is on (the default); the others are
ignored and counted (``broadcast_unauthenticated`` without a MAC, ``broadcast_bad_mac``
with one that does not verify), and ``disable auth`` accepts unsigned ones -- except from
a sender under ``restrict ... nopeer`` (``broadcast_nopeer``), as ntpd's nopeer refuses
any unauthenticated packet that would mobilize an association.

There is no round trip either: the offset is T3 + delay/2 - T4 with the configured
``broadcastdelay`` as the delay (ntpd's, default 4 ms). Such a sample is built as an
exchange whose T1 is T4 - delay and whose T2 is T3, so it goes through the same checks
and statistics as a polled one.

Each sending server gets a ``broadcast`` source in the engine on its first valid packet,
like ntpd's ephemeral broadcast associations: at most ``max_sources`` of them (more are
counted as ``broadcast_too_many``), and one silent for ``SILENT_INTERVALS`` of its own
interval is removed (``expired``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ntpy.core import auth
from ntpy.core.exchange import Sample, make_sample
from ntpy.core.packet import MODE_BROADCAST, Packet, PacketError, decode
from ntpy.core.source import SourceConfig
from ntpy.core.timestamps import NS_PER_S, ntp_to_unix_ns

DEFAULT_DELAY_NS = 4_000_000
"""ntpd's default ``broadcastdelay``: 0.004 s."""
MAX_SOURCES = 8
SILENT_INTERVALS = 8
MIN_POLL, MAX_POLL = 3, 17


@dataclass(frozen=True, slots=True)
class BroadcastOptions:
    """``broadcastclient`` as configured: ``authenticate`` is the ``auth`` flag,
    ``keys`` the trusted keys."""

    delay_ns: int = DEFAULT_DELAY_NS
    authenticate: bool = True
    keys: Mapping[int, auth.MacKey] = field(default_factory=dict)
    max_sources: int = MAX_SOURCES


@dataclass(frozen=True, slots=True)
class Accepted:
    """A packet to use: its sample, the key it was signed with (None if unsigned) and the
    sender's interval (its poll, clamped)."""

    sample: Sample
    keyid: int | None
    poll: int


@dataclass(slots=True)
class Heard:
    """A sending server's source in the engine, and when we last heard it."""

    source_id: int
    last_mono: int
    poll: int


class BroadcastClient:
    """The checks and the per-server bookkeeping; the engine owns the sources."""

    def __init__(self, options: BroadcastOptions) -> None:
        self.opts = options
        self.servers: dict[str, Heard] = {}
        self.counters: Counter[str] = Counter()

    def check(self, data: bytes, t4_ns: int, nopeer: bool = False) -> Accepted | None:
        """The sample of ``data`` received at ``t4_ns`` (cooked clock), or None (counted).
        ``nopeer``: the sender is under ``restrict ... nopeer``, which (as in ntpd) refuses
        an unsigned packet even with ``disable auth``."""
        try:
            pkt = decode(data)
        except PacketError:
            self.counters["broadcast_malformed"] += 1
            return None
        if pkt.mode != MODE_BROADCAST or not 3 <= pkt.version <= 4:
            self.counters["broadcast_bad_mode"] += 1
            return None
        ok, keyid = self._authenticate(data, pkt, nopeer)
        if not ok:
            return None
        t3 = ntp_to_unix_ns(pkt.transmit_ts, t4_ns)
        delay = self.opts.delay_ns
        sample = make_sample(pkt, t4_ns - delay, t3, t3, t4_ns)
        poll = min(max(pkt.poll, MIN_POLL), MAX_POLL)
        self.counters["broadcast_received"] += 1
        return Accepted(sample, keyid, poll)

    def _authenticate(self, data: bytes, pkt: Packet, nopeer: bool) -> tuple[bool, int | None]:
        """(usable, the key id it verified under: None if unsigned); a refusal is counted."""
        mac = pkt.mac
        if mac is None:
            if self.opts.authenticate or nopeer:
                reason = "unauthenticated" if self.opts.authenticate else "nopeer"
                self.counters[f"broadcast_{reason}"] += 1
                return False, None
            return True, None
        signed = data[: pkt.mac_offset]
        if mac.is_crypto_nak or auth.verify(self.opts.keys, mac.keyid, signed, mac.digest) is None:
            self.counters["broadcast_bad_mac"] += 1
            return False, None
        return True, mac.keyid

    def source_for(self, address: str, got: Accepted) -> SourceConfig | None:
        """The config of a new source for ``address`` when it has none yet and there is
        room (else None; counted when full). The engine calls ``adopt`` with its id."""
        if address in self.servers:
            return None
        if len(self.servers) >= self.opts.max_sources:
            self.counters["broadcast_too_many"] += 1
            return None
        return SourceConfig(
            name=address,
            address=(address, 123),
            kind="broadcast",
            minpoll=got.poll,
            maxpoll=got.poll,
            key=got.keyid,
        )

    def adopt(self, address: str, source_id: int, now_mono: int, poll: int) -> None:
        self.servers[address] = Heard(source_id, now_mono, poll)

    def heard(self, address: str, now_mono: int, poll: int) -> int | None:
        """The source id of ``address`` (None if it has none), marked as heard now."""
        entry = self.servers.get(address)
        if entry is None:
            return None
        entry.last_mono, entry.poll = now_mono, poll
        return entry.source_id

    def expired(self, now_mono: int) -> list[int]:
        """The sources silent for ``SILENT_INTERVALS`` of their interval: forgotten here,
        for the engine to remove."""
        gone = [
            address
            for address, e in self.servers.items()
            if now_mono - e.last_mono > SILENT_INTERVALS * (1 << e.poll) * NS_PER_S
        ]
        self.counters["broadcast_expired"] += len(gone)
        return [self.servers.pop(address).source_id for address in gone]
