"""Unit tests for one upstream source (``ntpy.core.source.Source``).

Replies are built by the production ``Responder`` (or, for kiss-o'-death packets, by the
packet codec), so the source sees the same bytes a real server would send.
"""

from __future__ import annotations

from typing import Any

import pytest

from ntpy.core.exchange import build_request
from ntpy.core.packet import (
    LEAP_ALARM,
    LEAP_NONE,
    MODE_SERVER,
    Packet,
    decode,
    encode,
    refid_from_text,
)
from ntpy.core.server import Responder
from ntpy.core.source import BURST_COUNT, BURST_SPACING_NS, Source, SourceConfig
from ntpy.core.system import SystemState, unsynchronized
from ntpy.core.timestamps import unix_ns_to_ntp

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
"""Clock time (Unix ns) at mono 0."""
DELAY_NS = 1_000_000
"""One-way delay of every test exchange."""

GOOD = SystemState(
    leap=LEAP_NONE,
    stratum=1,
    refid=refid_from_text("GPS"),
    reference_ns=T0,
    root_delay_ns=0,
    root_dispersion_ns=10_000,
    precision=-20,
)


def make_source(**kw: Any) -> Source:
    """A source for 192.0.2.1; ``kw`` are ``SourceConfig`` fields."""
    cfg = SourceConfig(name="192.0.2.1", address=("192.0.2.1", 123), **kw)
    return Source(1, cfg, precision_ns=1_000, now_mono=0, jitter=0.0)


def reply_to(
    request: bytes, t1: int, *, offset_ns: int = 0, state: SystemState = GOOD
) -> tuple[bytes, int]:
    """A genuine reply from a server ``offset_ns`` ahead of us, and its arrival time T4."""
    responder = Responder(state)
    t2 = t1 + DELAY_NS + offset_ns
    reply, reason = responder.handle(request, ("192.0.2.100", 123), unix_ns_to_ntp(t2), t2)
    assert reply is not None, reason
    return reply.finalize(unix_ns_to_ntp(t2 + 1_000)), t1 + 2 * DELAY_NS + 1_000


def kiss(request: bytes, code: str, *, leap: int = LEAP_ALARM, poll: int = 0) -> bytes:
    """A kiss-o'-death reply (stratum 0, the code in the refid) to ``request``: LI=3 as
    ntpd, chrony and ntpy send them, and the poll the server asks for."""
    origin = decode(request).transmit_ts
    pkt = Packet(
        leap=leap,
        version=4,
        mode=MODE_SERVER,
        stratum=0,
        poll=poll,
        precision=-20,
        root_delay=0,
        root_dispersion=0,
        refid=refid_from_text(code),
        reference_ts=0,
        origin_ts=origin,
        receive_ts=unix_ns_to_ntp(T0),
        transmit_ts=unix_ns_to_ntp(T0),
    )
    return encode(pkt)


class Driver:
    """Polls one source when due and (optionally) answers with a genuine reply."""

    def __init__(self, source: Source) -> None:
        self.src = source
        self.mono = 0
        self.cookie = 0
        self.sent: list[int] = []
        """Monotonic time of every request."""

    def poll(self, randomize: float = 0.0) -> tuple[bytes, int]:
        """Advance to the next due poll, send it; returns (request, t1)."""
        self.mono = max(self.mono, self.src.next_poll_mono)
        assert self.src.due(self.mono)
        self.cookie += 1
        data = self.src.poll_request(self.mono, 0x1234_5678_0000_0000 + self.cookie, randomize)
        t1 = T0 + self.mono
        self.src.mark_sent(t1)
        self.sent.append(self.mono)
        return data, t1

    def exchange(self, offset_ns: int = 0, randomize: float = 0.0) -> str:
        data, t1 = self.poll(randomize)
        reply, t4 = reply_to(data, t1, offset_ns=offset_ns)
        self.mono += t4 - t1
        m, reason = self.src.receive(reply, t4, self.mono)
        if reason == "ok":
            assert m is not None
            self.src.stats.add(m)
        return reason


# ----------------------------------------------------------------- reach and polling


def test_reach_register_shifts_per_request_and_sets_bit_on_reply() -> None:
    d = Driver(make_source())
    assert d.src.reach == 0 and not d.src.reachable
    assert d.exchange() == "ok"
    assert d.src.reach == 0b1
    d.poll()  # unanswered
    assert d.src.reach == 0b10
    assert d.exchange() == "ok"
    assert d.src.reach == 0b101
    for _ in range(6):
        d.poll()
    assert d.src.reach == 0b0100_0000  # the oldest reply has been shifted out
    d.poll()
    assert d.src.reach == 0b1000_0000
    d.poll()
    assert d.src.reach == 0 and not d.src.reachable  # 8 polls without a reply
    assert d.src.counters["requests"] == 11
    assert d.src.counters["replies"] == 2


def test_iburst_is_eight_requests_two_seconds_apart_and_fills_reach() -> None:
    d = Driver(make_source(iburst=True, minpoll=6))
    for _ in range(BURST_COUNT):
        assert d.exchange() == "ok"
    assert d.src.reach == 0o377
    gaps = [b - a for a, b in zip(d.sent, d.sent[1:], strict=False)]
    # each request leaves 2 s after the previous one was sent (replies take 2 ms here)
    assert all(BURST_SPACING_NS <= g <= BURST_SPACING_NS + 3 * DELAY_NS for g in gaps)
    # then the normal poll interval: no second burst while reachable
    last = d.sent[-1]
    assert d.src.next_poll_mono - last == 64 * NS
    d.exchange()
    assert d.src.next_poll_mono - d.sent[-1] == 64 * NS
    assert d.src.burst_left == 0
    assert len(d.src.stats) == BURST_COUNT + 1


@pytest.mark.parametrize("rnd", [-1.0, -0.5, 0.0, 0.5, 0.999])
def test_poll_interval_randomized_within_five_percent(rnd: float) -> None:
    d = Driver(make_source(minpoll=6))
    d.exchange(randomize=rnd)
    interval = d.src.next_poll_mono - d.sent[-1]
    assert interval == int(64 * NS * (1.0 + 0.05 * rnd))
    assert 0.95 * 64 * NS <= interval < 1.05 * 64 * NS


def test_iburst_repeats_while_unreachable_but_backs_off() -> None:
    d = Driver(make_source(iburst=True, minpoll=6, maxpoll=10))
    for _ in range(BURST_COUNT):
        d.poll()
    assert d.src.reach == 0
    # the burst was not answered: the next poll starts another burst
    d.poll()
    assert d.src.burst_left == BURST_COUNT - 1
    assert d.src.next_poll_mono - d.sent[-1] == BURST_SPACING_NS


def test_burst_sends_eight_requests_at_every_poll() -> None:
    d = Driver(make_source(burst=True, minpoll=6))
    for _ in range(3 * BURST_COUNT):
        assert d.exchange() == "ok"
    # three bursts: 7 short gaps, one poll gap, 7 short gaps, one poll gap, 7 short gaps
    gaps = [b - a for a, b in zip(d.sent, d.sent[1:], strict=False)]
    long_gaps = [i for i, g in enumerate(gaps) if g > 10 * NS]
    assert long_gaps == [BURST_COUNT - 1, 2 * BURST_COUNT - 1]
    assert all(g >= 60 * NS for g in (gaps[i] for i in long_gaps))
    assert d.src.reach == 0o377


def test_unreachable_source_backs_off_to_maxpoll() -> None:
    d = Driver(make_source(minpoll=6, maxpoll=9))
    polls = []
    for _ in range(12):
        d.poll()
        polls.append(d.src.poll)
    assert polls[0] == 6
    assert polls == sorted(polls)  # only up
    assert polls[-1] == 9
    assert max(polls) == 9  # never beyond maxpoll
    # intervals follow the poll exponent
    assert d.src.next_poll_mono - d.sent[-1] == 512 * NS
    # a reply resets the unanswered count (and the poll is adapted from there)
    assert d.exchange() == "ok"
    assert d.src.polls_unanswered == 0


def test_no_backoff_while_reachable() -> None:
    d = Driver(make_source(minpoll=6, maxpoll=10))
    d.exchange()
    for _ in range(6):
        d.poll()  # unanswered, but the register still holds the old reply
    assert d.src.reach != 0
    assert d.src.poll == 6


# ----------------------------------------------------------------- reply validation


def test_reply_with_no_request_outstanding_is_dropped() -> None:
    src = make_source()
    request = build_request(42)
    reply, t4 = reply_to(request, T0)
    assert src.receive(reply, t4, 0) == (None, "unexpected")
    assert src.counters["drop_unexpected"] == 1
    assert src.reach == 0


def test_reply_before_mark_sent_is_dropped() -> None:
    src = make_source()
    data = src.poll_request(0, 7, 0.0)
    reply, t4 = reply_to(data, T0)
    assert src.receive(reply, t4, 0) == (None, "unexpected")
    assert src.counters["drop_unexpected"] == 1


def test_reply_with_wrong_origin_is_dropped_and_real_reply_still_accepted() -> None:
    d = Driver(make_source())
    data, t1 = d.poll()
    spoofed, t4 = reply_to(build_request(0xDEAD_BEEF), t1, offset_ns=5 * NS)
    assert d.src.receive(spoofed, t4, d.mono) == (None, "bogus")
    assert d.src.counters["drop_bogus"] == 1
    assert d.src.reach == 0
    genuine, t4 = reply_to(data, t1, offset_ns=1_000_000)
    m, reason = d.src.receive(genuine, t4, d.mono)
    assert reason == "ok" and m is not None
    assert m.offset_ns == pytest.approx(1_000_000, abs=1_000)
    assert d.src.reach == 1


def test_duplicate_reply_is_dropped() -> None:
    d = Driver(make_source())
    data, t1 = d.poll()
    reply, t4 = reply_to(data, t1)
    assert d.src.receive(reply, t4, d.mono)[1] == "ok"
    assert d.src.receive(reply, t4 + 1000, d.mono) == (None, "unexpected")
    assert d.src.counters["drop_unexpected"] == 1
    assert d.src.counters["replies"] == 1
    assert d.src.counters["samples"] == 1


def test_stale_reply_to_an_earlier_request_is_dropped() -> None:
    d = Driver(make_source())
    old, t1_old = d.poll()
    d.poll()  # a new request replaces the outstanding cookie
    reply, t4 = reply_to(old, t1_old)
    assert d.src.receive(reply, t4, d.mono) == (None, "bogus")
    assert d.src.counters["drop_bogus"] == 1


def test_malformed_reply_is_dropped() -> None:
    d = Driver(make_source())
    d.poll()
    assert d.src.receive(b"\x24" * 20, T0, d.mono) == (None, "malformed")
    assert d.src.counters["drop_malformed"] == 1


def test_unsynchronized_reply_is_counted_but_not_used() -> None:
    d = Driver(make_source())
    data, t1 = d.poll()
    reply, t4 = reply_to(data, t1, state=unsynchronized(-20))
    assert decode(reply).leap == LEAP_ALARM
    m, reason = d.src.receive(reply, t4, d.mono)
    assert (m, reason) == (None, "unsynchronized")
    assert d.src.counters["replies"] == 1
    assert d.src.counters["unsynchronized"] == 1
    assert d.src.counters["samples"] == 0
    assert d.src.state == "unsynchronized"
    assert d.src.reach == 1  # the server answered: it is reachable, just not usable
    assert d.src.last_sample is not None and d.src.last_sample.leap == LEAP_ALARM


def test_measurement_from_a_genuine_reply() -> None:
    d = Driver(make_source())
    data, t1 = d.poll()
    reply, t4 = reply_to(data, t1, offset_ns=-3_000_000)
    m, reason = d.src.receive(reply, t4, d.mono)
    assert reason == "ok" and m is not None
    # symmetric paths: the server's 1 us of processing cancels out of offset and delay
    assert abs(m.offset_ns - (-3_000_000)) <= 1
    assert abs(m.delay_ns - 2 * DELAY_NS) <= 1
    assert m.time_ns == (t1 + t4) // 2
    assert m.stratum == 1 and m.leap == LEAP_NONE
    assert 10_000 <= m.root_dispersion_ns <= 10_000 + 15_259  # 16.16 format: 15.26 us steps
    assert m.dispersion_ns > 0
    assert d.src.last_reply_mono == d.mono


# ----------------------------------------------------------------- kiss-o'-death


def test_kod_rate_raises_poll_and_minpoll() -> None:
    d = Driver(make_source(iburst=True, minpoll=6, maxpoll=10))
    data, _t1 = d.poll()
    assert d.src.burst_left == BURST_COUNT - 1
    due_before = d.src.next_poll_mono
    m, reason = d.src.receive(kiss(data, "RATE"), T0 + d.mono, d.mono)
    assert (m, reason) == (None, "kod_RATE")
    assert d.src.counters["kod_RATE"] == 1
    assert d.src.minpoll == 7
    assert d.src.poll >= 7
    assert d.src.burst_left == 0  # the burst is abandoned
    assert d.src.next_poll_mono >= d.mono + (1 << d.src.poll) * NS > due_before
    assert d.src.active  # still used, just less often
    assert d.src.pending is None


def test_kod_rate_repeated_raises_minpoll_up_to_maxpoll() -> None:
    src = make_source(minpoll=6, maxpoll=8)
    for i in range(15):
        data = src.poll_request(src.next_poll_mono, 100 + i, 0.0)
        src.mark_sent(T0)
        src.receive(kiss(data, "RATE"), T0, src.next_poll_mono)
    assert src.minpoll == src.maxpoll == 8  # the admin's maxpoll is a hard limit
    assert src.poll == 8


def test_kod_rate_never_raises_poll_beyond_maxpoll() -> None:
    src = make_source(minpoll=6, maxpoll=8)
    for i in range(15):
        data = src.poll_request(src.next_poll_mono, 100 + i, 0.0)
        src.mark_sent(T0)
        src.receive(kiss(data, "RATE"), T0, src.next_poll_mono)
    assert src.poll <= src.maxpoll <= 17


@pytest.mark.parametrize("code", ["DENY", "RSTR"])
def test_kod_deny_and_rstr_deactivate_the_source(code: str) -> None:
    d = Driver(make_source())
    data, _t1 = d.poll()
    m, reason = d.src.receive(kiss(data, code), T0 + d.mono, d.mono)
    assert (m, reason) == (None, f"kod_{code}")
    assert d.src.kod == code
    assert not d.src.active
    assert d.src.counters[f"kod_{code}"] == 1
    assert not d.src.due(d.mono + 10**6 * NS)  # never polled again


def test_spoofed_kod_is_ignored() -> None:
    """A kiss whose origin does not echo our request is dropped before it is read."""
    d = Driver(make_source())
    d.poll()
    fake = kiss(build_request(0xBAD), "DENY")
    assert d.src.receive(fake, T0 + d.mono, d.mono) == (None, "bogus")
    assert d.src.active
    assert d.src.kod is None


@pytest.mark.parametrize("code", ["XYZZ", "INIT", "GPS", ""])
def test_other_stratum0_refids_are_unsynchronized_replies(code: str) -> None:
    """Only RATE/DENY/RSTR are orders: an unsynchronized ntpd or ntpy answers stratum 0,
    refid INIT, and a server that lost sync may keep its old refid."""
    d = Driver(make_source())
    data, _t1 = d.poll()
    assert d.src.receive(kiss(data, code), T0, d.mono) == (None, "unsynchronized")
    assert d.src.counters["unsynchronized"] == 1
    assert d.src.active
    assert d.src.poll == 6


@pytest.mark.parametrize("leap", [LEAP_ALARM, LEAP_NONE])
def test_kiss_is_read_whatever_the_leap_indicator(leap: int) -> None:
    """Regression: real kisses carry LI=3 and were taken for unsynchronized replies."""
    d = Driver(make_source())
    data, _t1 = d.poll()
    assert d.src.receive(kiss(data, "DENY", leap=leap), T0, d.mono) == (None, "kod_DENY")
    assert not d.src.active


def test_kod_rate_goes_to_the_servers_poll_even_beyond_maxpoll() -> None:
    """ntpd's rate kiss advertises the poll it accepts (its discard average): honour it."""
    d = Driver(make_source(minpoll=6, maxpoll=8))
    data, _t1 = d.poll()
    assert d.src.receive(kiss(data, "RATE", poll=10), T0, d.mono) == (None, "kod_RATE")
    assert d.src.poll == d.src.minpoll == d.src.maxpoll == 10
    assert d.src.next_poll_mono >= d.mono + 1024 * NS
    data, _t1 = d.poll()
    d.src.receive(kiss(data, "RATE", poll=30), T0, d.mono)
    assert d.src.poll == 17  # RFC 5905 MAXPOLL bounds a hostile server's wish


def test_kod_rate_halves_the_request_rate_each_time() -> None:
    """Each RATE kiss doubles the interval between requests, up to maxpoll."""
    d = Driver(make_source(minpoll=4, maxpoll=10))
    intervals = []
    for _ in range(5):
        data, _t1 = d.poll()
        d.src.receive(kiss(data, "RATE"), T0, d.mono)
        intervals.append(d.src.next_poll_mono - d.mono)
    assert intervals == [(1 << p) * NS for p in (5, 6, 7, 8, 9)]


# ----------------------------------------------------------------- dispersion


def test_dispersion_grows_at_phi_after_the_last_sample() -> None:
    d = Driver(make_source())
    assert d.src.dispersion_now(T0) == 16 * NS  # no sample yet: maximal
    d.exchange()
    last = d.src.stats.last()
    assert last is not None
    assert d.src.dispersion_now(last.time_ns) == last.dispersion_ns
    later = d.src.dispersion_now(last.time_ns + 1000 * NS)
    assert later - last.dispersion_ns == 15_000_000  # 15 ppm of 1000 s
