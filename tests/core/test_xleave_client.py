"""Interleaved mode as a client (``server ... xleave``): the requests, the samples and the
fallback to basic mode (``ntpy.core.exchange``, ``ntpy.core.source``).

The sign conventions are checked against a fake server with known times: its clock is
``OFFSET`` ahead of ours, the path is ``ONE_WAY`` each way, it stamps its basic-mode T3
``SEND_LAG`` before the reply really leaves. A basic sample is then off by -SEND_LAG/2; an
interleaved one must be exact. The production server core (``Responder`` with its
``InterleaveTable``) is checked against the client core the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from nts_helpers import rand, ring
from test_ntsef import key_exchange

from ntpy.core.auth import MacKey
from ntpy.core.decision import Answer
from ntpy.core.exchange import ClientExchange, Reason, build_request, interleave_field
from ntpy.core.interleave import InterleaveTable, is_candidate
from ntpy.core.ntsauth import NtsAuth
from ntpy.core.ntsserve import NtsServing
from ntpy.core.packet import LEAP_NONE, refid_from_text
from ntpy.core.server import Responder, decide
from ntpy.core.source import XLEAVE_MAX_UNANSWERED, Source, SourceConfig
from ntpy.core.symkey import SymmetricKeyAuth
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, ntp_to_unix_ns, unix_ns_to_ntp

NS = NS_PER_S
T0 = 1_790_000_000 * NS
OFFSET = 5_000_000
"""The server's clock minus ours."""
ONE_WAY = 1_000_000
PROCESS = 20_000
"""From the request's arrival to the server's basic-mode T3 read."""
SEND_LAG = 30_000
"""From that read to the reply really leaving: the error interleaved mode removes."""
POLL = 16 * NS
U64 = struct.Struct("!Q")

GOOD = SystemState(
    leap=LEAP_NONE,
    stratum=1,
    refid=refid_from_text("GPS"),
    reference_ns=T0,
    root_delay_ns=0,
    root_dispersion_ns=10_000,
    precision=-20,
)


def u64(b: bytes, at: int) -> int:
    return int(U64.unpack_from(b, at)[0])


@dataclass
class FakeServer:
    """An interleaving server with known timestamps (chrony's rules: every reply's true
    transmit time is kept under the receive timestamp it carried)."""

    interleave: bool = True
    offset: int = OFFSET
    sent: dict[int, int] = field(default_factory=dict)
    """Receive timestamp as sent -> true transmit time (NTP) of that reply."""

    def answer(self, request: bytes, arrival_ours: int) -> tuple[bytes, int]:
        """(reply, when it reaches us on our clock)."""
        b0 = request[0]
        origin, receive, transmit = (u64(request, at) for at in (24, 32, 40))
        t2 = unix_ns_to_ntp(arrival_ours + self.offset) | 1
        t3_basic = unix_ns_to_ntp(arrival_ours + self.offset + PROCESS) & ~1
        leaves = arrival_ours + PROCESS + SEND_LAG
        true_t3 = unix_ns_to_ntp(leaves + self.offset) & ~1
        xleaved = (
            self.interleave and (b0 >> 3) & 7 == 4 and receive != transmit and origin in self.sent
        )
        reply = bytearray(48)
        reply[0] = (b0 & 0x38) | 4
        reply[1], reply[2], reply[3] = 1, 6, 0xEC  # stratum 1, poll 6, precision -20
        reply[12:16] = b"GPS\0"
        U64.pack_into(reply, 16, unix_ns_to_ntp(T0))
        U64.pack_into(reply, 24, receive if xleaved else transmit)
        U64.pack_into(reply, 32, t2)
        U64.pack_into(reply, 40, self.sent.pop(origin) if xleaved else t3_basic)
        self.sent[t2] = true_t3
        return bytes(reply), leaves + ONE_WAY


def xsource(**kw: object) -> Source:
    cfg = SourceConfig(name="192.0.2.1", address=("192.0.2.1", 123), xleave=True, **kw)  # type: ignore[arg-type]
    return Source(1, cfg, precision_ns=1, now_mono=0, jitter=0.0)


def poll_once(src: Source, server: FakeServer, k: int, cookie: int | None = None):  # type: ignore[no-untyped-def]
    """Poll k: request at T0 + k * POLL (our clock), the server's answer delivered."""
    t1 = T0 + k * POLL
    req = src.poll_request(k * POLL, cookie if cookie is not None else 0x1000 + k, 0.0)
    src.mark_sent(t1)
    reply, t4 = server.answer(req, t1 + ONE_WAY)
    return req, src.receive(reply, t4, k * POLL + 1)


def test_requests_ask_for_interleaved_mode_after_a_reply() -> None:
    src, server = xsource(), FakeServer()
    req1, _ = poll_once(src, server, 0)
    assert u64(req1, 24) == 0 and u64(req1, 32) == 0  # nothing to ask for yet: basic
    req2, _ = poll_once(src, server, 1)
    assert src.xleave_prev is not None
    assert u64(req2, 24) != 0 and u64(req2, 24) & 1  # origin: the server's T2 of reply 1
    assert u64(req2, 32) not in (0, u64(req2, 40), u64(req2, 24))
    assert is_candidate(req2)  # what the ntpy server looks for


def test_interleaved_sample_is_exact_and_basic_one_is_off_by_half_the_send_lag() -> None:
    src, server = xsource(), FakeServer()
    results = [poll_once(src, server, k)[1] for k in range(5)]
    reasons = [reason for _m, reason in results]
    # 1: basic (sampled); 2: interleaved, but exchange 1 was already used: no sample;
    # 3 on: each the previous exchange with its true T3.
    assert reasons == [Reason.OK, Reason.INTERLEAVED_START, Reason.OK, Reason.OK, Reason.OK]
    basic = results[0][0]
    assert basic is not None
    assert basic.offset_ns == OFFSET - SEND_LAG // 2
    assert basic.delay_ns == 2 * ONE_WAY + SEND_LAG
    for k in (2, 3, 4):
        m = results[k][0]
        assert m is not None
        assert m.offset_ns == OFFSET  # server ahead: positive, exactly
        assert m.delay_ns == 2 * ONE_WAY
        # the sample is the previous exchange's, timed at its middle
        prev_t1 = T0 + (k - 1) * POLL
        assert m.time_ns == prev_t1 + (2 * ONE_WAY + PROCESS + SEND_LAG) // 2
    assert src.interleaved and src.last_sample is not None and src.last_sample.interleaved
    assert src.counters["samples_interleaved"] == 3 and src.counters["samples"] == 4
    assert src.counters["interleaved_start"] == 1


def test_negative_offset_sign() -> None:
    """A server behind us: a negative offset (add it to our clock to agree)."""
    src, server = xsource(), FakeServer(offset=-7_000_000)
    results = [poll_once(src, server, k)[1] for k in range(4)]
    m = results[3][0]
    assert m is not None and m.offset_ns == -7_000_000 and m.delay_ns == 2 * ONE_WAY


def test_server_that_does_not_interleave_gives_basic_samples() -> None:
    src, server = xsource(), FakeServer(interleave=False)
    results = [poll_once(src, server, k)[1] for k in range(4)]
    assert [r for _m, r in results] == [Reason.OK] * 4
    assert all(m is not None and m.offset_ns == OFFSET - SEND_LAG // 2 for m, _r in results)
    assert src.counters["xleave_basic_replies"] == 3 and not src.interleaved
    assert src.counters["samples_interleaved"] == 0


def test_a_source_without_xleave_never_asks() -> None:
    cfg = SourceConfig(name="192.0.2.1", address=("192.0.2.1", 123))
    src, server = Source(1, cfg, 1, 0, 0.0), FakeServer()
    for k in range(3):
        req, (_m, reason) = poll_once(src, server, k)
        assert u64(req, 24) == 0 and u64(req, 32) == 0 and reason is Reason.OK


def test_falls_back_to_basic_after_unanswered_interleaved_requests() -> None:
    src, server = xsource(), FakeServer()
    poll_once(src, server, 0)
    for k in range(1, 1 + XLEAVE_MAX_UNANSWERED):
        req = src.poll_request(k * POLL, 0x2000 + k, 0.0)
        src.mark_sent(T0 + k * POLL)
        assert u64(req, 24) != 0  # still asking
    req = src.poll_request(9 * POLL, 0x3000, 0.0)
    assert u64(req, 24) == 0 and u64(req, 32) == 0  # basic again
    assert src.counters["xleave_fallbacks"] == 1 and src.xleave_prev is None


def test_reply_after_a_lost_one_completes_the_right_exchange() -> None:
    """Reply 3 lost: request 4 still names exchange 2, and the server (which keeps every
    reply's time) answers with reply 2's true T3 -- exchange 2's sample, exact."""
    src, server = xsource(), FakeServer()
    for k in range(3):
        poll_once(src, server, k)
    t1 = T0 + 3 * POLL
    src.poll_request(3 * POLL, 0x5003, 0.0)
    src.mark_sent(t1)  # ... and the request is lost on the way
    _req, (m, reason) = poll_once(src, server, 4)
    assert reason is Reason.OK and m is not None
    assert m.offset_ns == OFFSET and m.time_ns < T0 + 3 * POLL


def test_kernel_tx_stamp_replaces_t1_of_pending_and_kept_exchanges() -> None:
    src, server = xsource(), FakeServer()
    poll_once(src, server, 0)
    req = src.poll_request(POLL, 0xABC, 0.0)
    src.mark_sent(T0 + POLL - 40_000)  # the clock read, 40 us before the request left
    assert not src.tx_stamped(0xDEF, T0 + POLL)  # another request's stamp
    assert src.tx_stamped(0xABC, T0 + POLL)
    assert src.pending is not None and src.pending.t1_ns == T0 + POLL
    reply, t4 = server.answer(req, T0 + POLL + ONE_WAY)
    src.receive(reply, t4, POLL + 1)
    assert src.xleave_prev is not None and src.xleave_prev.t1_ns == T0 + POLL
    assert src.tx_stamped(0xABC, T0 + POLL + 5)  # a late stamp still reaches the kept one
    assert src.xleave_prev.t1_ns == T0 + POLL + 5


def test_clock_corrections_reexpress_the_kept_exchange() -> None:
    """After a correction of our clock, the previous exchange's T1/T4 are shifted as the
    source statistics are: the interleaved sample then measures the corrected clock."""
    src, server = xsource(), FakeServer()
    for k in range(3):
        poll_once(src, server, k)
    # We step our clock by +OFFSET: from now on our clock reads OFFSET later.
    src.correct_times(T0 + 3 * POLL, OFFSET, 0.0)
    t1 = T0 + 3 * POLL
    req = src.poll_request(3 * POLL, 0x7777, 0.0)
    src.mark_sent(t1 + OFFSET)
    reply, t4 = server.answer(req, t1 + ONE_WAY)
    m, reason = src.receive(reply, t4 + OFFSET, 3 * POLL + 1)
    assert reason is Reason.OK and m is not None
    assert m.offset_ns == 0 and m.delay_ns == 2 * ONE_WAY


def test_interleave_field_differs() -> None:
    assert interleave_field(0x1111_2222_3333_4444, 5) == 0x3333_4444_1111_2222
    same = 0x1234_5678_1234_5678  # halves equal: swapped == cookie
    assert interleave_field(same, 0) not in (same, 0)
    assert interleave_field(0, 0) not in (0,)
    assert interleave_field(1 << 32, 1) not in (1 << 32, 1, 0)


# ----------------------------------------------------------------- the production server


def serve(r: Responder, req: bytes, arrival_ours: int) -> tuple[bytes, int]:
    """The ntpy server core as the shell drives it: decide, finalize with a T3 read
    SEND_LAG early, record the true transmit time for interleaved mode."""
    rx = arrival_ours + OFFSET
    d = decide(req, ("192.0.2.50", 40000), rx, r)
    assert isinstance(d, Answer)
    leaves = arrival_ours + PROCESS + SEND_LAG
    out = d.reply.finalize(unix_ns_to_ntp(rx + PROCESS))
    if d.reply.save_rx:
        assert r.xleave is not None
        r.xleave.record(d.reply.save_rx, unix_ns_to_ntp(leaves + OFFSET))
    return out, leaves + ONE_WAY


def test_against_the_ntpy_server_core() -> None:
    r = Responder(GOOD)
    r.serve_interleaved(InterleaveTable())
    src = xsource()
    reasons, samples = [], []
    for k in range(6):
        t1 = T0 + k * POLL
        req = src.poll_request(k * POLL, 0x9000 + k, 0.0)
        src.mark_sent(t1)
        reply, t4 = serve(r, req, t1 + ONE_WAY)
        m, reason = src.receive(reply, t4, k * POLL + 1)
        reasons.append(reason)
        samples.append(m)
    # ntpy records a reply's time only for interleaved-looking requests: replies 1 and 2
    # are basic, 3 completes exchange 2 (already sampled), 4.. are interleaved samples.
    assert reasons == [Reason.OK, Reason.OK, Reason.INTERLEAVED_START] + [Reason.OK] * 3
    for m in samples[3:]:
        assert m is not None
        assert abs(m.offset_ns - OFFSET) <= 1  # NTP fixed point rounding
        assert abs(m.delay_ns - 2 * ONE_WAY) <= 2
    assert src.counters["samples_interleaved"] == 3


def test_interleaved_with_a_symmetric_key() -> None:
    key = MacKey(1, "sha1", b"k" * 20)
    r = Responder(GOOD, keys={1: key})
    r.serve_interleaved(InterleaveTable())
    cfg = SourceConfig(name="192.0.2.1", address=("192.0.2.1", 123), xleave=True, key=1)
    src = Source(1, cfg, 1, 0, 0.0, auth=SymmetricKeyAuth(key))
    reasons = []
    for k in range(5):
        t1 = T0 + k * POLL
        req = src.poll_request(k * POLL, 0x9100 + k, 0.0)
        src.mark_sent(t1)
        reply, t4 = serve(r, req, t1 + ONE_WAY)
        reasons.append(src.receive(reply, t4, k * POLL + 1)[1])
    assert reasons[-1] is Reason.OK and src.interleaved and src.authentic


def test_basic_callers_unchanged() -> None:
    ex = ClientExchange.start(0x55)
    assert ex.request == build_request(0x55) and ex.xleave_origin == 0


# ----------------------------------------------------------------- any bytes: never an exception

EXPECTED_REASONS = {r.value for r in Reason} - {Reason.UNEXPECTED.value}


def primed() -> tuple[Source, FakeServer, bytes]:
    """A source in interleaved mode with an interleaved request in flight, and the genuine
    reply to it."""
    src, server = xsource(), FakeServer()
    for k in range(3):
        poll_once(src, server, k)
    t1 = T0 + 3 * POLL
    req = src.poll_request(3 * POLL, 0x4242, 0.0)
    src.mark_sent(t1)
    reply, _t4 = server.answer(req, t1 + ONE_WAY)
    return src, server, reply


def check_outcome(src: Source, data: bytes) -> None:
    before = sum(src.counters.values())
    m, reason = src.receive(data, T0 + 3 * POLL + 3 * ONE_WAY, 3 * POLL + 2)
    assert reason.value in EXPECTED_REASONS
    if m is not None:
        assert reason is Reason.OK and src.counters["samples"] >= 1
    else:  # a counted drop (or a kiss, unsynchronized, or interleaved start: counted too)
        assert sum(src.counters.values()) > before


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_any_bytes_are_a_sample_or_a_counted_drop(data: bytes) -> None:
    src, _server, _reply = primed()
    check_outcome(src, data)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 47), st.integers(0, 255)), min_size=1, max_size=6),
    st.booleans(),
)
def test_mutated_replies_are_a_sample_or_a_counted_drop(
    edits: list[tuple[int, int]], echo_receive: bool
) -> None:
    src, _server, reply = primed()
    buf = bytearray(reply)
    if echo_receive:  # aim at the interleaved path: the origin we expect
        assert src.pending is not None
        U64.pack_into(buf, 24, src.pending.xleave_origin)
    for at, value in edits:
        buf[at] = value
    check_outcome(src, bytes(buf))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_interleaved_reply_with_any_transmit_time(t3: int, rx: int) -> None:
    """Whatever T2/T3 a server claims in an interleaved answer: a sample whose times are
    the previous exchange's, or a counted BOGUS drop (T3 not within 4 s of T2)."""
    src, _server, reply = primed()
    prev = src.xleave_prev
    assert prev is not None and src.pending is not None
    buf = bytearray(reply)
    U64.pack_into(buf, 24, src.pending.xleave_origin)
    U64.pack_into(buf, 32, rx)
    U64.pack_into(buf, 40, t3)
    m, reason = src.receive(bytes(buf), T0 + 3 * POLL + 3 * ONE_WAY, 3 * POLL + 2)
    t2 = ntp_to_unix_ns(prev.t2_ntp, prev.t1_ns)
    if t3 == 0:
        assert reason is Reason.BOGUS
    elif abs(ntp_to_unix_ns(t3, prev.t4_ns) - t2) > 4 * NS:
        assert reason is Reason.BOGUS and src.counters["drop_bogus"] == 1
    else:
        assert reason is Reason.OK and m is not None
        assert src.last_sample is not None and src.last_sample.interleaved
        assert src.last_sample.t1_ns == prev.t1_ns and src.last_sample.t4_ns == prev.t4_ns


def test_interleaved_with_nts() -> None:
    """NTS protects the request and seals the reply whatever its timestamps: an ``nts
    xleave`` source gets authenticated interleaved samples from the ntpy server core."""
    keys = ring(T0)
    r = Responder(GOOD)
    r.nts = NtsServing(keys, rand)
    r.serve_interleaved(InterleaveTable())
    auth = NtsAuth()
    auth.install(key_exchange(keys), T0)
    cfg = SourceConfig(name="nts.example", address=("192.0.2.1", 123), nts=True, xleave=True)
    src = Source(1, cfg, 1, 0, 0.0, auth)
    results = []
    for k in range(5):
        t1 = T0 + k * POLL
        req = src.poll_request(k * POLL, 0x9200 + k, 0.0)
        src.mark_sent(t1)
        reply, t4 = serve(r, req, t1 + ONE_WAY)
        results.append(src.receive(reply, t4, k * POLL + 1))
    assert [reason for _m, reason in results][2:] == [Reason.INTERLEAVED_START] + [Reason.OK] * 2
    assert src.authentic and src.interleaved and src.counters["samples_interleaved"] == 2
    m = results[-1][0]
    assert m is not None and abs(m.offset_ns - OFFSET) <= 1
