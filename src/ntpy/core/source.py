"""One upstream time source: when to poll, what to send, which replies to believe.

Sans-IO: the engine asks ``due(now)``/``poll(now, cookie)`` for requests and feeds replies
to ``receive``. Everything a source learns lands in its ``SourceStats``.

Behaviour, following ntpd where it is the reference:
- Poll interval 2**poll s between minpoll and maxpoll, with +-5% randomization so many
  clients started together do not synchronize their queries.
- ``iburst``: while the source is unreachable (including at start), each poll is a burst of
  8 requests 2 s apart, so the first clock update comes in seconds, not minutes. ``burst``
  does that at every poll (the NTP Pool considers it abuse; we still honour it when asked).
- An 8-bit reach register: shifted left at every poll, bit 0 set by a valid reply.
- Every request carries a fresh random transmit timestamp (the "cookie"); only a reply
  whose origin echoes the outstanding cookie is accepted: duplicates, replays, stale and
  spoofed replies are dropped and counted.
- Kiss-o'-death: RATE doubles our poll interval, to at least the poll the server asks for,
  and raises the floor there; DENY and RSTR stop the source.
- Unreachable sources back off: each poll without any reply raises the interval toward
  maxpoll, so a dead server costs little.
- ``xleave`` (interleaved mode, as chrony): once a valid reply came, each request asks for
  the true transmit time of the server's previous reply (``core.exchange``); the sample of
  an interleaved reply is that of the previous exchange. A server that does not
  interleave answers in basic mode, which is used as such. After ``XLEAVE_MAX_UNANSWERED``
  interleaved requests without a valid reply the source asks in basic mode again (as
  chrony: a server must not answer with a transmit time many polls old).
- ``peer HOST``: a symmetric active association (RFC 5905 mode 1). Its packets carry our
  system variables and real timestamps (origin = the peer's last transmit time, receive =
  when we got it, transmit = now with random low bits, still the cookie its answer must
  echo); the peer answers in mode 2, or mode 1 if it configured us too. The sample is
  computed as for a server: T1..T4 cancel however long the peer held the packet.
- A source whose refid is one of our addresses (stratum > 1) is synchronized to us, and a
  peer whose refid is the source we follow is synchronized to it through or beside us:
  both are kept reachable but never become samples (``loop``, ntpd's TEST12).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ntpy.core.address import host
from ntpy.core.exchange import (
    NO_AUTH,
    ClientAuth,
    ClientExchange,
    Exchanged,
    KissCode,
    KissOfDeath,
    Reason,
    ReplyRejected,
    Sample,
    kiss_reason,
)
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.refclock import Refclock
from ntpy.core.sourcestats import MAX_SAMPLES, Estimate, Measurement, SourceStats
from ntpy.core.status import SourceState
from ntpy.core.system import PHI_PPB, SystemState
from ntpy.core.timestamps import NS_PER_S, precision_to_ns, unix_ns_to_ntp

BURST_COUNT = 8
POLL_NOISE_FACTOR = 0.5
POLL_TARGET = 32.0
"""Lengthen the poll only once the fit is worth this many equally good samples: at high
jitter each sample is worth little, so the poll stays short and more of them are averaged
(chrony's polltarget counts samples; counting effective ones adapts the poll to jitter)."""
HISTORY_FULL = MAX_SAMPLES * 3 // 4
"""... or once the fit uses nearly all stored samples: then the window is limited by
storage, not by wander, and a longer poll widens it in time."""
BURST_SPACING_NS = 2 * NS_PER_S
MAX_POLL = 17
"""RFC 5905 MAXPOLL (36 h): the longest interval a RATE kiss can push us to."""
AUTH_REASONS = frozenset({Reason.AUTH, Reason.CRYPTO_NAK})
"""Rejections by the authenticator: counted as ``drop_auth`` / ``drop_crypto_nak``."""
XLEAVE_MAX_UNANSWERED = 4
"""Interleaved requests in a row without a valid reply before asking in basic mode
(chrony's MAX_CLIENT_INTERLEAVED_TX)."""


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """An upstream server as the daemon resolved it."""

    name: str
    address: object
    kind: str = "server"
    iburst: bool = False
    burst: bool = False
    prefer: bool = False
    noselect: bool = False
    minpoll: int = 6
    maxpoll: int = 10
    version: int = 4
    pool: str | None = None
    key: int | None = None
    """The symmetric key id its exchanges are signed with (``server HOST key N``)."""
    nts: bool = False
    """Authenticated with NTS (``server HOST nts``): the auth is a ``core.ntsauth.NtsAuth``."""
    xleave: bool = False
    """Ask for interleaved mode (``server HOST xleave``)."""

    @property
    def auth_label(self) -> str:
        """How the source is authenticated, as ``ntpy peers`` shows it: ``nts``, ``key N``
        or ``none``."""
        if self.nts:
            return "nts"
        return "none" if self.key is None else f"key {self.key}"


class Source:
    """State of one upstream server."""

    def __init__(
        self,
        source_id: int,
        config: SourceConfig,
        precision_ns: int,
        now_mono: int,
        jitter: float,
        auth: ClientAuth = NO_AUTH,
    ) -> None:
        self.id = source_id
        self.config = config
        self.stats = SourceStats(precision_ns)
        self.precision_ns = precision_ns
        self.minpoll = config.minpoll
        self.maxpoll = max(config.maxpoll, config.minpoll)
        self.poll = self.minpoll
        self.reach = 0
        self.polls_unanswered = 0
        self.pending: ClientExchange | None = None
        """The request in flight, if any: a reply must answer it."""
        self.auth = auth
        """How this source's requests are protected and replies verified."""
        self.authentic = False
        """The last reply passed an authenticator (not ``NO_AUTH``): ntpq's ``authentic``."""
        self.auth_error: str | None = None
        """Why the last reply failed authentication; cleared by an authentic reply."""
        self.burst_left = 0
        self.kod: KissCode | None = None
        """DENY/RSTR once the server refused us: the source is no longer used."""
        self.panic_offset_ns: int | None = None
        """Set while the source's offset is beyond the panic threshold after we synced: the
        engine ignores it (holdover) instead of exiting; cleared when it comes back."""
        self.counters: Counter[str] = Counter()
        self.last_reply_mono: int | None = None
        self.last_sample: Sample | None = None
        self.state = SourceState.INIT
        self.tally = " "
        self.falseticker_count = 0
        self.replace_requested = False
        self.error: str | None = None
        """Set by the shell when requests cannot go out (no socket): shown in status."""
        self.refclock: Refclock | None = None
        """For a reference clock (``kind == "refclock"``): its samples between polls."""
        self.xleave_prev: Exchanged | None = None
        """Interleaved mode: the last valid exchange, whose true T3 the next request asks
        for."""
        self.xleave_unanswered = 0
        """Interleaved requests sent since the last valid reply."""
        self.interleaved = False
        """The last sample came from an interleaved reply (``ntpy peers`` shows it)."""
        self.loop = False
        """Its last reply showed a timing loop: selection skips it until a clean one."""
        self.peer_xmt = 0
        self.peer_rec = 0
        """A peer's last transmit timestamp and when we received it (NTP format): the
        origin and receive fields of our next mode 1 packet."""
        # First poll soon after start, spread a little so sources do not fire together.
        self.next_poll_mono = now_mono + int(jitter * NS_PER_S)

    # ----------------------------------------------------------------- polling

    @property
    def reachable(self) -> bool:
        return self.reach != 0

    @property
    def active(self) -> bool:
        return self.kod is None

    def poll_interval_ns(self) -> int:
        return (1 << self.poll) * NS_PER_S

    @property
    def needs_key_exchange(self) -> bool:
        """An NTS source without usable keys or cookies: it does not poll until the shell's
        key exchange gives it some (never a request in the clear)."""
        return bool(getattr(self.auth, "needs_key_exchange", False))

    def due(self, now_mono: int) -> bool:
        return (
            self.polls
            and self.active
            and now_mono >= self.next_poll_mono
            and not self.needs_key_exchange
        )

    @property
    def polls(self) -> bool:
        """We send it requests: every kind but a broadcast server (it sends unasked)."""
        return self.config.kind != "broadcast"

    @property
    def symmetric(self) -> bool:
        """A ``peer`` line: symmetric active, mode 1."""
        return self.config.kind == "peer"

    def poll_request(
        self,
        now_mono: int,
        cookie: int,
        randomize: float,
        now_clock: int | None = None,
        system: SystemState | None = None,
    ) -> bytes:
        """Build the request for a due poll and schedule the next one.

        ``randomize`` in [-1, 1) spreads the interval by +-5%. A peer's mode 1 packet needs
        ``now_clock`` (cooked clock) and ``system`` (what we serve); without them it goes as
        a client request.
        """
        # Every request shifts the reach register, burst packets included (as ntpd does:
        # after an iburst, ntpq shows 377).
        self.reach = (self.reach << 1) & 0xFF
        if self.burst_left > 0:
            self.burst_left -= 1
        else:
            if self.pending is not None:
                self.polls_unanswered += 1
            if self.reach == 0 and self.polls_unanswered >= 2 and self.poll < self.maxpoll:
                self.poll += 1  # back off while nobody answers
            if self.config.burst or (self.config.iburst and self.reach == 0):
                self.burst_left = BURST_COUNT - 1
        if self.symmetric and now_clock is not None and system is not None:
            xmt = (unix_ns_to_ntp(now_clock) & ~0xFFFF) | (cookie & 0xFFFF)  # below 16 us
            self.pending = ClientExchange.symmetric(
                xmt,
                system,
                now_clock,
                org=self.peer_xmt,
                rec=self.peer_rec,
                version=self.config.version,
                poll=self.poll,
                auth=self.auth,
            )
        else:
            self.pending = ClientExchange.start(
                cookie,
                version=self.config.version,
                poll=self.poll,
                auth=self.auth,
                previous=self._xleave_previous(),
            )
        if self.burst_left > 0:
            self.next_poll_mono = now_mono + BURST_SPACING_NS
        else:
            interval = self.poll_interval_ns()
            self.next_poll_mono = now_mono + int(interval * (1.0 + 0.05 * randomize))
        self.counters["requests"] += 1
        return self.pending.request

    def _xleave_previous(self) -> Exchanged | None:
        """The exchange the next request asks the true T3 of, or None for basic mode."""
        prev = self.xleave_prev
        if prev is None:
            return None
        if self.xleave_unanswered >= XLEAVE_MAX_UNANSWERED:
            self.xleave_prev = None  # its T3 would be many polls old: start over
            self.counters["xleave_fallbacks"] += 1
            return None
        self.xleave_unanswered += 1
        return prev

    def mark_sent(self, t1_ns: int) -> None:
        if self.pending is not None:
            self.pending.sent(t1_ns)

    def tx_stamped(self, cookie: int, t1_ns: int) -> bool:
        """The kernel's transmit time of our request whose transmit field was ``cookie``
        (the shell's ``t1_ns``, mapped to the cooked clock): it replaces the clock reading
        taken before the send, for the reply in flight or the exchange kept for the next
        interleaved reply. False if neither is that request's (a late stamp)."""
        pending = self.pending
        if pending is not None and pending.cookie == cookie and pending.t1_ns is not None:
            pending.t1_ns = t1_ns
            return True
        prev = self.xleave_prev
        if prev is not None and prev.cookie == cookie:
            prev.t1_ns = t1_ns
            return True
        return False

    def correct_times(self, at_ns: int, offset_ns: int, dfreq: float) -> None:
        """Re-express the times of our own clock this source still holds (the request in
        flight; the exchange kept for interleaved mode) after a clock correction of
        ``offset_ns`` at ``at_ns`` and a rate change ``dfreq``, as the source statistics
        are (``SourceStats.apply_correction``)."""

        def shifted(t: int) -> int:
            return t + round(offset_ns + dfreq * (t - at_ns))

        pending = self.pending
        if pending is not None and pending.t1_ns is not None:
            pending.t1_ns = shifted(pending.t1_ns)
        prev = self.xleave_prev  # (the request in flight's ``previous``, if it has one)
        if prev is not None:
            prev.t1_ns, prev.t4_ns = shifted(prev.t1_ns), shifted(prev.t4_ns)

    # ----------------------------------------------------------------- replies

    @property
    def auth_failures(self) -> int:
        """Replies refused by the authenticator (bad or missing MAC, crypto-NAK)."""
        return sum(self.counters[f"drop_{reason}"] for reason in AUTH_REASONS)

    def receive(
        self,
        data: bytes,
        t4_ns: int,
        now_mono: int,
        loop_refids: frozenset[int] = frozenset(),
    ) -> tuple[Measurement | None, Reason]:
        """Validate a reply. Returns (measurement to use or None, reason); a kiss's reason
        names its code (``reason.kiss``). A synchronized reply whose refid is in
        ``loop_refids`` (stratum > 1) is a timing loop: counted, never a sample."""
        pending = self.pending
        if pending is None or pending.t1_ns is None:
            self.counters["drop_unexpected"] += 1
            return None, Reason.UNEXPECTED
        try:
            got = pending.reply(data, t4_ns)
        except KissOfDeath as kiss:
            return None, self._kiss(kiss.code, kiss.poll, now_mono)
        except ReplyRejected as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            if exc.reason in AUTH_REASONS:
                self.authentic = False
                self.auth_error = exc.detail
            return None, exc.reason
        self.pending = None  # one reply per request: a duplicate is now "unexpected"
        self.reach |= 1
        self.polls_unanswered = 0
        self.last_reply_mono = now_mono
        self.counters["replies"] += 1
        self.authentic = self.auth is not NO_AUTH
        self.auth_error = None
        self.peer_xmt = int.from_bytes(data[40:48], "big")
        self.peer_rec = unix_ns_to_ntp(t4_ns)
        if self.config.xleave:
            self.xleave_prev = got.exchanged
            self.xleave_unanswered = 0
            if pending.previous is not None and not got.interleaved:
                self.counters["xleave_basic_replies"] += 1  # the server did not interleave
        sample = got.sample
        if sample is None:
            self.counters[Reason.INTERLEAVED_START.value] += 1
            return None, Reason.INTERLEAVED_START
        return self.measure(sample, loop_refids)

    def broadcast(
        self, sample: Sample, now_mono: int, loop_refids: frozenset[int], *, authentic: bool
    ) -> tuple[Measurement | None, Reason]:
        """A broadcast server's packet (``core.bcastclient`` checked it): no request to
        match, so reach shifts in one bit per packet."""
        self.reach = ((self.reach << 1) | 1) & 0xFF
        self.last_reply_mono = now_mono
        self.counters["replies"] += 1
        self.authentic = authentic
        self.auth_error = None
        return self.measure(sample, loop_refids)

    def measure(
        self, sample: Sample, loop_refids: frozenset[int]
    ) -> tuple[Measurement | None, Reason]:
        """The measurement of a valid reply's ``sample``, unless it is unsynchronized or
        a timing loop (counted)."""
        self.last_sample = sample
        self.interleaved = sample.interleaved
        if sample.leap == LEAP_ALARM or not 1 <= sample.stratum <= 15:
            self.counters["unsynchronized"] += 1
            self.state = SourceState.UNSYNCHRONIZED
            return None, Reason.UNSYNCHRONIZED
        if sample.stratum > 1 and sample.refid in loop_refids:
            self.counters["loop"] += 1
            self.loop = True
            self.state = SourceState.LOOP
            return None, Reason.LOOP
        self.loop = False
        # RFC 5905: both clocks' precision plus PHI times the round trip.
        dispersion = (
            precision_to_ns(sample.precision)
            + self.precision_ns
            + (sample.delay_ns * PHI_PPB) // NS_PER_S
        )
        m = Measurement(
            time_ns=(sample.t1_ns + sample.t4_ns) // 2,
            offset_ns=sample.offset_ns,
            delay_ns=max(sample.delay_ns, self.precision_ns),
            dispersion_ns=dispersion,
            root_delay_ns=sample.root_delay_ns,
            root_dispersion_ns=sample.root_dispersion_ns,
            stratum=sample.stratum,
            leap=sample.leap,
        )
        self.counters["samples"] += 1
        if sample.interleaved:
            self.counters["samples_interleaved"] += 1
        return m, Reason.OK

    def _kiss(self, code: KissCode, server_poll: int, now_mono: int) -> Reason:
        """Act on a kiss (its origin already matched our request, so it is no spoof).

        RATE: double the poll (RFC 5905: reduce the rate at each RATE kiss) up to maxpoll,
        and go at least to the poll the server advertised, even beyond maxpoll (as ntpd,
        which raises minpoll to it) but not beyond RFC 5905's MAXPOLL. The floor follows, so
        poll adaptation cannot creep back to the refused rate, and the burst stops.
        DENY/RSTR: stop polling for good. NTSN (an NTS NAK, only ever raised after our
        Unique Identifier matched): nothing here -- the source's ``NtsAuth`` now needs a key
        exchange, which the shell runs; for any other source it means nothing.
        """
        self.counters[kiss_reason(code).value] += 1
        self.pending = None
        if code.asks_rekey:
            return kiss_reason(code)
        if not code.refuses_service:  # RATE
            ceiling = min(max(self.maxpoll, server_poll), MAX_POLL)
            self.poll = min(max(self.poll + 1, server_poll, self.minpoll), ceiling)
            self.minpoll = self.poll
            self.maxpoll = max(self.maxpoll, self.poll)
            self.burst_left = 0
            self.next_poll_mono = max(self.next_poll_mono, now_mono + self.poll_interval_ns())
        else:  # DENY, RSTR
            self.kod = code
            self.state = SourceState.KOD
        return kiss_reason(code)

    # ----------------------------------------------------------------- poll adaptation

    def adapt_poll(self, innovation_ns: float, sd_ns: float, est: Estimate) -> None:
        """Lengthen the poll while the clock is well modelled, shorten it on surprises.

        The next interval is worth it only if our frequency is known well enough that it
        drifts less than the measurement noise across it: freq_sd * interval < noise. The
        regression's sample count and the runs test (which drops samples when the frequency
        wanders) feed freq_sd, so wander pulls the poll back down by itself.
        """
        if self.burst_left > 0:
            return
        noise = POLL_NOISE_FACTOR * max(est.offset_sd_ns, float(self.precision_ns))
        interval_s = float(1 << self.poll)
        drift_next = math.hypot(
            est.frequency_sd * 2.0 * interval_s * 1e9, self.stats.wander_sd_ns(2.0 * interval_s)
        )
        drift_now = math.hypot(
            est.frequency_sd * interval_s * 1e9, self.stats.wander_sd_ns(interval_s)
        )
        if abs(innovation_ns) > 4.0 * sd_ns and self.poll > self.minpoll:
            self.poll -= 1
        elif (
            (est.effective_samples >= POLL_TARGET or est.samples_used >= HISTORY_FULL)
            and drift_next < noise
            and self.poll < self.maxpoll
        ):
            self.poll += 1
        elif (drift_now > 2.0 * noise or est.samples_used < 4) and self.poll > self.minpoll:
            self.poll -= 1

    def dispersion_now(self, now_clock: int) -> int:
        last = self.stats.last()
        if last is None:
            return 16 * NS_PER_S
        age = max(0, now_clock - last.time_ns)
        return last.dispersion_ns + age * PHI_PPB // NS_PER_S


def label(src: Source) -> str:
    """``name (address)``, or the address alone when that is the name: how log lines and
    status sentences name a source."""
    addr = host(src.config.address)
    return addr if src.config.name == addr else f"{src.config.name} ({addr})"
