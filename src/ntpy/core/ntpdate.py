"""ntpdate's decisions, sans-IO: pace the requests to each server, filter each server's
samples, drop the unusable servers, select one, and choose between step and slew.

``ntpy sync`` (``cli/sync.py``) is the I/O shell around this: it resolves names, moves the
datagrams, reads the clocks and prints. What is ntpdate's (facts, reimplemented): every
address of every name is a server; each gets ``-p`` requests, the next one sent one timeout
after the last reply or at once after a timeout (a lost request is a lost sample); the
sample with the lowest delay is the server's; servers that are unsynchronized, kissed, too
far away (> 8 s), broken (reference time after transmit time) or stale (not synchronized
for a day) are dropped; the rest are ranked by stratum and dispersion, cut to the two best
strata, ranked by stratum and delay, and outliers are pruned by offset before the first is
taken. The clock is stepped when the offset is at least 0.5 s and slewed otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ntpy.core.exchange import ClientExchange, KissCode, KissOfDeath, Reason, ReplyRejected, Sample
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.timestamps import NS_PER_S, precision_to_ns

STEP_THRESHOLD_NS = NS_PER_S // 2
"""ntpdate's NTPDATE_THRESHOLD: offsets of 0.5 s or more are stepped, smaller ones slewed."""
MAX_DELAY_NS = 8 * NS_PER_S
"""NTP_MAXWGT: a server with a longer round trip is 'too far away'."""
MAX_AGE_NS = 86_400 * NS_PER_S
"""NTP_MAXAGE: a server whose reference time is a day old has lost its own sync."""
MAX_DISPERSION_NS = 64 * NS_PER_S
"""PEER_MAXDISP: what a lost sample (or a wild one) adds to a server's dispersion."""
MAX_LIST = 5
"""NTP_MAXLIST: candidates kept for the falseticker pruning."""
SKEW_ALLOWANCE_NS = 10_000_000
"""NTP_MAXSKW (0.01 s): part of the pruning threshold."""
OWN_PRECISION_NS = NS_PER_S >> 6
"""NTPDATE_PRECISION (2**-6 s): ntpdate's claimed precision, the other fixed part."""
STRATUM_UNSPEC = 16
MAX_STRATUM = 15

KISS_MEANINGS = {
    # ntpdate's wording, not the exchange's (``KissCode.meaning``): scripts match it.
    KissCode.RATE: "rate limit response from server",
    KissCode.DENY: "access denied by the server",
    KissCode.RSTR: "access restricted by the server",
}


@dataclass(frozen=True, slots=True)
class Target:
    """One server address to poll (a name may resolve to several)."""

    name: str
    address: str
    port: int
    family: int
    sockaddr: tuple[object, ...]


@dataclass(slots=True)
class ServerPoll:
    """What one server said: a slot per request (None = no usable reply in time)."""

    target: Target
    samples: list[Sample | None] = field(default_factory=list)
    kiss: KissCode | None = None
    """The kiss code if the server sent a kiss-o'-death (polling stopped there)."""
    error: str | None = None
    """Why polling stopped early: refused, unreachable, an insane reply."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A server after filtering: its best sample and why it may not be used."""

    target: Target
    best: Sample | None
    dispersion_ns: int
    dropped: str | None
    """None if the server may be selected, else the reason (for the message)."""

    @property
    def stratum(self) -> int:
        """As ntpdate shows it: 0 without data, 16 for a server that sent stratum 0."""
        if self.best is None:
            return 0
        return self.best.stratum or STRATUM_UNSPEC


@dataclass(slots=True)
class Pacer:
    """ntpdate's pacing of the requests to one server, sans-IO (times are monotonic ns).

    The shell asks ``due(now)``, sends ``start(cookie, version)`` and reports ``sent``; it
    hands each datagram to ``receive`` and calls ``expire(now)`` at ``wakeup()``. The next
    request goes one timeout after a reply, or at once after a timeout (a lost sample).
    A reply that does not echo our cookie (stale, duplicate, spoofed) is ignored and the
    request stays outstanding; a kiss, or an insane reply, ends the server's polling.
    """

    poll: ServerPoll
    samples: int
    timeout_ns: int
    exchange: ClientExchange | None = None
    deadline: int | None = None
    """When the outstanding request times out; None if none is outstanding."""
    next_send: int = 0
    done: bool = False

    def finish(self, error: str | None = None) -> None:
        """Stop polling this server (``error``: why, if it stopped early)."""
        self.done = True
        self.deadline = None
        if error is not None:
            self.poll.error = error

    def expire(self, now: int) -> None:
        """Count the outstanding request as lost if its timeout has passed."""
        if self.deadline is not None and now >= self.deadline:
            self.poll.samples.append(None)  # lost: ntpdate shifts a zero sample in
            self.deadline = None
            self.next_send = now
            if len(self.poll.samples) >= self.samples:
                self.finish()

    def due(self, now: int) -> bool:
        """True when the next request should go now."""
        return not self.done and self.deadline is None and now >= self.next_send

    def start(self, cookie: int, version: int) -> bytes:
        """The next request, carrying ``cookie``."""
        self.exchange = ClientExchange.start(cookie, version=version)
        return self.exchange.request

    def sent(self, t1_ns: int, now: int) -> None:
        """The request left at clock time ``t1_ns``; its timeout runs from ``now``."""
        assert self.exchange is not None
        self.exchange.sent(t1_ns)
        self.deadline = now + self.timeout_ns

    def wakeup(self) -> int | None:
        """When ``expire`` or the next send is due; None once done."""
        if self.done:
            return None
        return self.deadline if self.deadline is not None else self.next_send

    def receive(self, data: bytes, t4_ns: int, now: int) -> None:
        """A datagram from the server, received at clock time ``t4_ns``."""
        if self.deadline is None or self.exchange is None:
            return  # a late reply to a request already counted as lost
        try:
            sample = self.exchange.receive(data, t4_ns)
        except KissOfDeath as kiss:
            self.poll.kiss = kiss.code
            self.finish()
            return
        except ReplyRejected as exc:
            if exc.reason in (Reason.INSANE, Reason.BAD_MODE):
                self.finish(f"unusable reply: {exc.detail}")
            return  # malformed, stale or bogus: keep waiting for the real reply
        self.poll.samples.append(sample)
        self.deadline = None
        self.next_send = now + self.timeout_ns  # ntpdate waits a timeout between requests
        if len(self.poll.samples) >= self.samples:
            self.finish()


def filter_samples(samples: Sequence[Sample | None]) -> tuple[Sample | None, int]:
    """The lowest-delay sample and the dispersion of the others around it (ntpdate's filter).

    The samples are ordered by delay, lost ones last; each later sample adds its offset
    distance from the best, halved once per rank (a lost one adds the maximum), so a server
    that dropped packets or wandered ranks below a steady one.
    """
    got = sorted((s for s in samples if s is not None), key=lambda s: s.delay_ns)
    if not got:
        return None, MAX_DISPERSION_NS
    best = got[0]
    ranked: list[Sample | None] = [*got, *[None] * (len(samples) - len(got))]
    dispersion = 0
    for rank, s in enumerate(ranked[1:], start=1):
        d = MAX_DISPERSION_NS if s is None else abs(s.offset_ns - best.offset_ns)
        dispersion += min(d, MAX_DISPERSION_NS) >> rank
    return best, dispersion


def drop_reason(poll: ServerPoll, best: Sample | None, timeout_s: float) -> str | None:
    """Why a server cannot be used, in ntpdate's order of checks, or None."""
    if poll.kiss is not None:
        meaning = KISS_MEANINGS.get(poll.kiss, "the server refuses to serve us")
        return f"kiss-o'-death {poll.kiss} ({meaning})"
    if best is None:
        if poll.error is not None:
            return f"no data ({poll.error})"
        n = len(poll.samples)
        return f"no data (no reply within {timeout_s:g} s to {n} request{'s' * (n != 1)})"
    if best.leap == LEAP_ALARM:
        return (
            f"Leap not in sync (the server is unsynchronized: stratum "
            f"{best.stratum or STRATUM_UNSPEC}, "
            f"refid {best.refid_text})"
        )
    if best.stratum == 0 or best.stratum > MAX_STRATUM:
        return f"strata too high (stratum {best.stratum or STRATUM_UNSPEC})"
    if best.delay_ns > MAX_DELAY_NS:
        return f"server too far away (delay {best.delay_ns / NS_PER_S:.3f} s)"
    reference = best.reference_ns
    if reference is not None and reference >= best.t3_ns:
        return "server is very broken (its reference time is not before its transmit time)"
    if reference is None:
        return "Server has gone too long without sync (its reference time is zero: never)"
    if best.t3_ns - reference >= MAX_AGE_NS:
        days = (best.t3_ns - reference) / (86_400 * NS_PER_S)
        return f"Server has gone too long without sync (last synchronized {days:.1f} days ago)"
    return None


def judge(poll: ServerPoll, timeout_s: float) -> Verdict:
    best, dispersion = filter_samples(poll.samples)
    return Verdict(poll.target, best, dispersion, drop_reason(poll, best, timeout_s))


def _badness(offsets: Sequence[int], k: int) -> int:
    """How far the others are from candidate k, nearer-ranked ones weighing more (3/4 a rank)."""
    total = 0
    for j, off in enumerate(offsets):
        if j == k:
            continue
        d = abs(off - offsets[k])
        for _ in range(j):
            d = (d >> 1) + (d >> 2)
        total += d
    return total


def select_server(verdicts: Sequence[Verdict]) -> Verdict | None:
    """ntpdate's choice among the usable servers, or None if there is none.

    Keep the five best by (stratum, dispersion) from the two lowest strata; order them by
    (stratum, delay); while more than one is left, drop the one whose offset disagrees most
    with the others unless even that one agrees within the precision threshold. The first
    remaining server wins.
    """
    usable = [v for v in verdicts if v.dropped is None and v.best is not None]
    ranked = sorted(usable, key=lambda v: (v.stratum, v.dispersion_ns))[:MAX_LIST]
    steps = 0
    for i in range(1, len(ranked)):
        if ranked[i].stratum > ranked[i - 1].stratum:
            steps += 1
            if steps == 2:
                ranked = ranked[:i]
                break
    if len(ranked) <= 1:
        return ranked[0] if ranked else None
    ranked.sort(key=lambda v: (v.stratum, v.best.delay_ns if v.best else 0))
    while len(ranked) > 1:
        offsets = [v.best.offset_ns if v.best else 0 for v in ranked]
        scores = [_badness(offsets, k) for k in range(len(ranked))]
        worst = max(range(len(ranked)), key=lambda k: (scores[k], k))
        finest = min(v.best.precision if v.best else 0 for v in ranked)
        if scores[worst] < OWN_PRECISION_NS + SKEW_ALLOWANCE_NS + precision_to_ns(finest):
            break
        del ranked[worst]
    return ranked[0]


def decide(offset_ns: int, *, force_step: bool = False, force_slew: bool = False) -> str:
    """'step' or 'slew': ntpdate's rule (|offset| >= 0.5 s steps) unless -b or -B forces it."""
    if force_step and force_slew:
        raise ValueError("-b (always step) and -B (always slew) exclude each other")
    if force_step:
        return "step"
    if force_slew:
        return "slew"
    return "step" if abs(offset_ns) >= STEP_THRESHOLD_NS else "slew"


def format_seconds(ns: int, decimals: int) -> str:
    """Seconds with a fixed number of decimals from integer ns, rounded half away from zero;
    negative values get a '-', positive ones no sign (ntpdate's lfptoa/fptoa)."""
    unit = 10 ** (9 - decimals)
    q = (abs(ns) + unit // 2) // unit
    scale = 10**decimals
    return f"{'-' if ns < 0 else ''}{q // scale}.{q % scale:0{decimals}d}"


def server_line(v: Verdict) -> str:
    """``server A, stratum S, offset O, delay D``; zeros for a server that never answered."""
    offset = v.best.offset_ns if v.best is not None else 0
    delay = v.best.delay_ns if v.best is not None else 0
    return (
        f"server {v.target.address}, stratum {v.stratum}, offset {format_seconds(offset, 6)}, "
        f"delay {format_seconds(delay, 5)}"
    )


def adjust_message(action: str, v: Verdict) -> str:
    """ntpdate's notice: ``step time server A offset O sec`` or ``adjust time server ...``."""
    assert v.best is not None
    verb = "step" if action == "step" else "adjust"
    return f"{verb} time server {v.target.address} offset {format_seconds(v.best.offset_ns, 6)} sec"
