"""Unit tests for the synchronization engine (``ntpy.core.engine.SyncEngine``).

The engine is driven in memory, with no sockets and no simulator: ``Net`` answers each
``SendRequest`` with the production ``Responder`` of a server whose time is true time plus
an offset, delivers the reply after a controllable delay through ``handle_packet``, and
applies clock actions to a ``VirtualClock`` over a fake realtime (true time, optionally
with an offset and a frequency error), exactly as the daemon's shell does.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from ntpy.clock.virtual import VirtualClock
from ntpy.core.actions import (
    Action,
    LogEvent,
    Panic,
    ReplaceSource,
    SendRequest,
    SetFrequency,
    SlewClock,
    StepClock,
    apply_to_clock,
    cooked_now,
)
from ntpy.core.engine import MAX_FREQ_PPB, SourceConfig, SyncEngine, SyncOptions
from ntpy.core.packet import (
    LEAP_ALARM,
    LEAP_NONE,
    MODE_SERVER,
    Packet,
    decode,
    encode,
    refid_from_ipv4,
    refid_from_text,
)
from ntpy.core.server import Responder
from ntpy.core.status import SyncReason, SyncStatus
from ntpy.core.system import LocalReference, SystemState
from ntpy.core.timestamps import unix_ns_to_ntp

NS = 1_000_000_000
MS = 1_000_000
START = 1_700_000_000 * NS
"""True time at the start (also the engine's monotonic clock)."""
PROCESSING_NS = 1_000


@dataclass
class Server:
    """A simulated upstream: true time + ``offset_ns``, behind ``delay_ns`` each way.

    Mutable on purpose: tests change ``offset_ns``/``answering`` between ``run`` calls.
    """

    address: str
    offset_ns: int = 0
    delay_ns: int = MS
    stratum: int = 1
    refid: int = refid_from_text("GPS")
    leap: int = LEAP_NONE
    answering: bool = True
    kod: str | None = None
    jitter_ns: int = 20_000
    """Mean of the exponential queueing delay added to each direction."""
    config: dict[str, Any] = field(default_factory=dict)
    """Extra ``SourceConfig`` fields (iburst, minpoll, pool...)."""
    requests: int = 0

    def state(self, now: int) -> SystemState:
        return SystemState(
            leap=self.leap,
            stratum=self.stratum,
            refid=self.refid,
            reference_ns=now,
            root_delay_ns=0,
            root_dispersion_ns=10_000,
            precision=-20,
        )

    def answer(self, request: bytes, true_rx: int) -> bytes:
        """The reply to ``request`` arriving at true time ``true_rx``."""
        now = true_rx + self.offset_ns
        if self.kod is not None:  # as ntpd, chrony and ntpy send it: LI=3, stratum 0
            return encode(
                Packet(
                    leap=LEAP_ALARM,
                    version=4,
                    mode=MODE_SERVER,
                    stratum=0,
                    poll=0,
                    precision=-20,
                    root_delay=0,
                    root_dispersion=0,
                    refid=refid_from_text(self.kod),
                    reference_ts=0,
                    origin_ts=decode(request).transmit_ts,
                    receive_ts=unix_ns_to_ntp(now),
                    transmit_ts=unix_ns_to_ntp(now),
                )
            )
        reply, reason = Responder(self.state(now)).handle(
            request, ("192.0.2.100", 123), unix_ns_to_ntp(now), now
        )
        assert reply is not None, reason
        return reply.finalize(unix_ns_to_ntp(now + PROCESSING_NS))


class Net:
    """One engine, its clock and its servers, run event by event in true time."""

    def __init__(
        self,
        servers: list[Server],
        options: SyncOptions | None = None,
        *,
        client_offset_ns: int = 0,
        client_freq_ppb: float = 0.0,
        iburst: bool = True,
        minpoll: int = 4,
        maxpoll: int = 6,
        seed: int = 1,
    ) -> None:
        self.true = START
        self.client_offset_ns = client_offset_ns
        self.client_freq_ppb = client_freq_ppb
        self.clock = VirtualClock(realtime=self._raw, precision_log=-20)
        rng = random.Random(seed)
        self.engine = SyncEngine(options or SyncOptions(), lambda: rng.getrandbits(64))
        self.net_rng = random.Random(seed + 1)
        self.servers: dict[int, Server] = {}
        for srv in servers:
            base = SourceConfig(
                name=srv.address,
                address=(srv.address, 123),
                iburst=iburst,
                minpoll=minpoll,
                maxpoll=maxpoll,
            )
            cfg = replace(base, **srv.config)
            self.servers[self.engine.add_source(cfg, self.true)] = srv
        self._queue: list[tuple[int, int, int, bytes]] = []
        self._seq = 0
        self.delivered: list[tuple[int, bytes]] = []
        """(source id, reply) of every packet handed to the engine."""
        self.actions: list[tuple[int, Action]] = []
        """(seconds since START, action) for every action but SendRequest."""
        self.panicked = False
        self.remove_replaced = False
        self.on_packet: Callable[[Net], None] | None = None
        self._apply(self.engine.start(self.true, self.now()))

    # --- clocks -----------------------------------------------------------------

    def _raw(self) -> int:
        elapsed = self.true - START
        return self.true + self.client_offset_ns + round(elapsed * self.client_freq_ppb / 1e9)

    def now(self) -> int:
        return cooked_now(self.clock)

    def error_ns(self) -> int:
        """Served time minus true time."""
        return self.clock.now_ns() - self.true

    @property
    def t(self) -> float:
        return (self.true - START) / NS

    # --- the event loop ---------------------------------------------------------

    def run(self, seconds: float) -> None:
        if not 0 <= seconds <= 100_000:
            raise ValueError(f"run() takes seconds (0..1e5), got {seconds!r}")
        end = self.true + round(seconds * NS)
        while not self.panicked:
            wake = self.engine.next_wakeup()
            wake = end + 1 if wake is None else max(wake, self.true)
            t_pkt = self._queue[0][0] if self._queue else end + 1
            t_next = min(wake, t_pkt)
            if t_next > end:
                break
            self.true = t_next
            if t_pkt == t_next:
                _t, _seq, sid, data = heapq.heappop(self._queue)
                if sid in self.engine.sources:
                    self.delivered.append((sid, data))
                    self._apply(self.engine.handle_packet(sid, data, self.now(), self.true))
                    if self.on_packet is not None:
                        self.on_packet(self)
            else:
                self._apply(self.engine.handle_timer(self.true, self.now()))
        self.true = max(self.true, end)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendRequest):
                self._send(action)
                continue
            self.actions.append((self.true - START, action))
            if apply_to_clock(action, self.clock):
                continue
            if isinstance(action, Panic):
                self.panicked = True
                return
            if isinstance(action, ReplaceSource) and self.remove_replaced:
                self.engine.remove_source(action.source_id)

    def _send(self, action: SendRequest) -> None:
        self.engine.mark_sent(action.source_id, self.now())
        srv = self.servers[action.source_id]
        srv.requests += 1
        if not srv.answering:
            return
        rx = self.true + srv.delay_ns + self._queueing(srv)
        reply = srv.answer(action.data, rx)
        arrival = rx + PROCESSING_NS + srv.delay_ns + self._queueing(srv)
        self._seq += 1
        heapq.heappush(self._queue, (arrival, self._seq, action.source_id, reply))

    def _queueing(self, srv: Server) -> int:
        if not srv.jitter_ns:
            return 0
        return round(self.net_rng.expovariate(1.0 / srv.jitter_ns))

    # --- views ------------------------------------------------------------------

    def of(self, kind: type[Action]) -> list[tuple[float, Action]]:
        return [(t / NS, a) for t, a in self.actions if isinstance(a, kind)]

    def logs(self, text: str) -> list[tuple[float, str]]:
        return [
            (t / NS, a.message)
            for t, a in self.actions
            if isinstance(a, LogEvent) and text in a.message
        ]

    def status(self) -> SyncStatus:
        return self.engine.status(self.true, self.now())

    def state(self) -> SystemState:
        return self.engine.system_state(self.now())


def three(offset_ns: int = 0, **kw: Any) -> list[Server]:
    """Three agreeing servers 10.0.0.1-3 (``kw``: more ``Server`` fields)."""
    return [Server(f"10.0.0.{i}", offset_ns=offset_ns, **kw) for i in (1, 2, 3)]


def first_update_time(net: Net) -> float | None:
    times = [t for t, _m in net.logs("synchronized to")]
    return times[0] if times else None


def sync(net: Net, seconds: float = 100.0) -> None:
    net.run(seconds)
    assert net.state().synchronized, net.actions


# ----------------------------------------------------------------- first update


def test_first_update_waits_for_every_source() -> None:
    servers = three()
    servers[2].delay_ns = 900 * MS  # answers 1.8 s after each request
    net = Net(servers)
    net.run(20)
    t = first_update_time(net)
    assert t is not None
    # the slow server's first reply is in by ~3 s; not before, and no need to wait 16 s
    slow = net.engine.sources[3]
    assert slow.counters["samples"] > 0
    assert 1.8 <= t < 4.0


def test_first_update_waits_16_s_for_a_silent_source() -> None:
    servers = three()
    servers[2].answering = False
    net = Net(servers, minpoll=4)
    net.run(15.9)
    assert net.engine.updates == 0
    assert not net.state().synchronized
    assert not net.of(SlewClock) and not net.of(StepClock)
    net.run(60)
    t = first_update_time(net)
    assert t is not None and t >= 16.0
    assert net.status().system_peer in ("10.0.0.1", "10.0.0.2")


def test_first_update_comes_soon_after_16_s_with_a_silent_source() -> None:
    servers = three()
    servers[2].answering = False
    net = Net(servers, minpoll=6, maxpoll=10)
    net.run(30)
    t = first_update_time(net)
    assert t is not None and 16.0 <= t < 20.0


@pytest.mark.parametrize("seed", [2, 4, 5])
def test_first_update_is_not_won_by_a_quick_liar(seed: int) -> None:
    """The liar answers 1000x sooner; waiting for everyone lets the majority outvote it.

    With these seeds the liar is polled first, so without the wait it would be stepped to.
    """
    liar = Server("10.9.9.9", offset_ns=10 * NS, delay_ns=100_000)
    net = Net([*three(delay_ns=100 * MS), liar], seed=seed)
    net.run(60)
    assert not net.of(StepClock)
    assert abs(net.error_ns()) < MS
    assert net.status().sources[3].tally == "x"


# ----------------------------------------------------------------- step / slew


@pytest.mark.parametrize(
    ("offset_ms", "stepped"), [(200, True), (-200, True), (100, False), (-100, False)]
)
def test_first_update_steps_beyond_128_ms_and_slews_below(offset_ms: int, stepped: bool) -> None:
    offset = offset_ms * MS
    net = Net(three(offset))
    sync(net, 30)
    steps = [a for _t, a in net.of(StepClock)]
    first_correction = next(a for _t, a in net.actions if isinstance(a, StepClock | SlewClock))
    if stepped:
        assert len(steps) == 1
        assert isinstance(first_correction, StepClock)
        assert first_correction.offset_ns == pytest.approx(offset, abs=MS)
        assert net.logs("stepped the clock")
    else:
        assert steps == []
        assert isinstance(first_correction, SlewClock)
        assert first_correction.offset_ns == pytest.approx(offset, abs=MS)
    # served time agrees with the servers within a millisecond once the slew has run
    net.run(300)
    assert abs(net.error_ns() - offset) < MS


def test_later_large_offset_is_stepped_only_after_stepout() -> None:
    net = Net(three())
    sync(net)
    for srv in net.servers.values():
        srv.offset_ns = NS
    net.run(600)
    warnings = net.logs("exceeds the step threshold")
    steps = net.of(StepClock)
    assert len(warnings) == 1 and len(steps) == 1
    t_warn, t_step = warnings[0][0], steps[0][0]
    # One poll later than the jump itself: the first wild sample is held until a second
    # one confirms it (an outlier would not be).
    assert 100 < t_warn < 130 + 64
    assert 300 <= t_step - t_warn < 300 + 2 * 64
    step = steps[0][1]
    assert isinstance(step, StepClock)
    assert step.offset_ns == pytest.approx(NS, abs=5 * MS)
    # nothing big was slewed while waiting
    assert all(
        abs(a.offset_ns) < 10 * MS for _t, a in net.of(SlewClock) if isinstance(a, SlewClock)
    )
    net.run(200)
    assert abs(net.error_ns() - NS) < MS


def test_short_spike_is_never_stepped() -> None:
    net = Net(three())
    sync(net)
    for srv in net.servers.values():
        srv.offset_ns = NS
    net.run(60)
    assert net.logs("exceeds the step threshold")
    for srv in net.servers.values():
        srv.offset_ns = 0
    net.run(600)
    assert not net.of(StepClock)
    assert abs(net.error_ns()) < 10 * MS


def test_makestep_always_steps_at_once() -> None:
    net = Net(three(), SyncOptions(makestep=(100 * MS, -1)))
    sync(net)
    for srv in net.servers.values():
        srv.offset_ns = NS
    net.run(60)
    steps = net.of(StepClock)
    assert steps
    assert steps[0][0] < 100 + 40 + 64  # a confirming poll, but no 300 s stepout
    assert not net.logs("exceeds the step threshold")


def test_makestep_limit_counts_updates_and_step_threshold_zero_disables_stepping() -> None:
    opts = SyncOptions(makestep=(100 * MS, 1), step_threshold_ns=0)
    net = Net(three(200 * MS), opts)
    sync(net, 30)
    assert len(net.of(StepClock)) == 1  # first update: within the limit
    for srv in net.servers.values():
        srv.offset_ns = 400 * MS
    net.run(600)
    assert len(net.of(StepClock)) == 1  # beyond the limit and no step threshold: slewed
    big = [a for _t, a in net.of(SlewClock) if isinstance(a, SlewClock) and a.offset_ns > 50 * MS]
    assert big


@pytest.mark.parametrize(("jump_ms", "makestep"), [(50, None), (200, None), (1000, (100 * MS, -1))])
def test_offset_jump_does_not_disturb_the_frequency(
    jump_ms: int, makestep: tuple[int, int] | None
) -> None:
    net = Net(three(), SyncOptions(makestep=makestep))
    sync(net)
    for srv in net.servers.values():
        srv.offset_ns = jump_ms * MS
    freqs: list[float] = []
    net.on_packet = lambda n: freqs.append(n.engine.frequency_ppb)
    net.run(900)
    assert max(abs(f) for f in freqs) < 100_000.0  # 100 ppm; the truth is 0
    assert len(net.of(StepClock)) <= 1  # one step, not a staircase
    assert abs(net.error_ns() - jump_ms * MS) < MS


def test_step_threshold_zero_slews_even_the_first_update() -> None:
    net = Net(three(300 * MS), SyncOptions(step_threshold_ns=0))
    sync(net, 30)
    assert not net.of(StepClock)
    first = net.of(SlewClock)[0][1]
    assert isinstance(first, SlewClock)
    assert first.offset_ns == pytest.approx(300 * MS, abs=MS)


# ----------------------------------------------------------------- mindist


def close_but_disjoint() -> list[Server]:
    """Three honest stratum-1 servers 1 ms apart whose bare root distances (~0.2 ms) do
    not overlap: the issue's +1/+2/+3 ms upstreams."""
    return [
        Server(f"10.0.0.{i}", offset_ns=i * MS, delay_ns=100_000, jitter_ns=2_000)
        for i in (1, 2, 3)
    ]


def test_mindist_lets_close_disjoint_sources_form_a_majority() -> None:
    """Regression: without ntpd's mindist floor (1 ms) they never agreed, and the
    server stayed unsynchronized."""
    net = Net(close_but_disjoint())
    sync(net, 120)
    st = net.status()
    assert sorted(s.tally for s in st.sources) == ["*", "+", "+"]
    assert abs(net.error_ns() - 2 * MS) < 200_000  # the middle of the three


def test_tiny_mindist_leaves_them_without_majority() -> None:
    """What ``tos mindist`` buys: with a 1 us floor the intervals stay disjoint."""
    net = Net(close_but_disjoint(), SyncOptions(mindist_ns=1_000))
    net.run(300)
    assert not net.state().synchronized
    assert {s.state for s in net.status().sources} == {"no majority"}


# ----------------------------------------------------------------- panic


def test_panic_beyond_1000_s_refuses_to_touch_the_clock() -> None:
    net = Net(three(2000 * NS))
    net.run(60)
    panics = [a for _t, a in net.of(Panic) if isinstance(a, Panic)]
    assert len(panics) == 1
    assert panics[0].offset_ns == pytest.approx(2000 * NS, abs=MS)
    assert "panic threshold" in panics[0].message
    assert net.logs("panic threshold")
    assert not net.of(StepClock) and not net.of(SlewClock) and not net.of(SetFrequency)
    assert net.engine.panicked
    assert not net.state().synchronized
    assert net.error_ns() == 0


def test_allow_panic_step_steps_the_first_update_only() -> None:
    net = Net(three(2000 * NS), SyncOptions(allow_panic_step=True))
    sync(net, 60)
    steps = [a for _t, a in net.of(StepClock) if isinstance(a, StepClock)]
    assert len(steps) == 1 and steps[0].offset_ns == pytest.approx(2000 * NS, abs=MS)
    assert not net.of(Panic)
    for srv in net.servers.values():
        srv.offset_ns += 2000 * NS
    net.run(600)
    assert len(net.of(StepClock)) == 1  # -g covers the first adjustment only
    assert len(net.logs("exceeds the panic threshold")) == 3  # refused, one per source


def test_later_jump_beyond_panic_threshold_holds_over() -> None:
    """Regression: one wild upstream used to stop the daemon (a remote off-switch). Now
    the source is marked and ignored, logged once at error level, and the clock holds
    over: still served as synchronized (root dispersion growing) until maxdist."""
    net = Net([Server("10.0.0.1")], SyncOptions(maxdist_ns=100 * MS), minpoll=4, maxpoll=4)
    sync(net)
    net.servers[1].offset_ns = 3600 * NS
    net.run(600)
    assert not net.of(Panic) and not net.engine.panicked
    assert len(net.of(StepClock)) == 0
    errors = [a for _t, a in net.of(LogEvent) if isinstance(a, LogEvent) and a.level == "error"]
    assert len(errors) == 1 and "10.0.0.1" in errors[0].message
    assert "exceeds the panic threshold" in errors[0].message
    line = net.status().sources[0]
    assert line.state == "panic" and line.tally == " "
    assert abs(net.error_ns()) < MS  # the clock kept its time
    held = net.state()
    assert held.synchronized and held.leap == LEAP_NONE and held.stratum == 2
    net.run(60)
    later = net.state()
    assert later.reference_ns == held.reference_ns  # no update since: holdover
    assert later.root_dispersion_at(net.now()) > held.root_dispersion_at(net.now() - 60 * NS)
    # root distance grows at 15 us/s: past maxdist (0.1 s) after less than 2 hours
    net.run(7200)
    assert not net.state().synchronized and net.state().leap == LEAP_ALARM
    assert net.logs("sync lost")
    assert len(net.logs("exceeds the panic threshold")) == 1  # once, not every poll


def test_wild_source_is_dropped_and_the_sane_ones_followed() -> None:
    servers = [*three(), Server("10.0.0.4"), Server("10.0.0.5")]
    net = Net(servers)
    sync(net)
    for srv in servers[:3]:  # a wild majority wins the vote, is refused, and is dropped
        srv.offset_ns = 3600 * NS
    net.run(900)
    assert not net.of(Panic) and not net.of(StepClock)
    assert len(net.logs("exceeds the panic threshold")) == 3
    assert net.status().system_peer in ("10.0.0.4", "10.0.0.5")
    assert net.state().synchronized and abs(net.error_ns()) < MS


def test_wild_source_comes_back_when_sane() -> None:
    net = Net([Server("10.0.0.1")], minpoll=4, maxpoll=4)
    sync(net)
    net.servers[1].offset_ns = 3600 * NS
    net.run(200)
    assert net.engine.sources[1].panic_offset_ns is not None
    net.servers[1].offset_ns = 0
    net.run(300)
    assert net.engine.sources[1].panic_offset_ns is None
    assert net.logs("10.0.0.1 is sane again")
    assert net.status().sources[0].tally == "*"
    assert abs(net.error_ns()) < MS


def test_panic_exit_keeps_ntpds_exit_after_sync() -> None:
    net = Net(three(), SyncOptions(panic_exit=True))
    sync(net)
    for srv in net.servers.values():
        srv.offset_ns = -1500 * NS
    net.run(600)
    assert len(net.of(Panic)) == 1
    assert net.engine.panicked
    assert not net.of(StepClock)


def test_panic_threshold_zero_never_panics() -> None:
    net = Net(three(2000 * NS), SyncOptions(panic_threshold_ns=0))
    sync(net, 60)
    assert not net.of(Panic)
    assert len(net.of(StepClock)) == 1
    for srv in net.servers.values():
        srv.offset_ns += 5000 * NS
    net.run(600)
    assert not net.of(Panic)
    assert len(net.of(StepClock)) == 2  # after the stepout
    assert abs(net.error_ns() - 7000 * NS) < 5 * MS


# ----------------------------------------------------------------- frequency


@pytest.mark.parametrize("freq_ppm", [800, -800])
def test_frequency_is_clamped_to_500_ppm(freq_ppm: int) -> None:
    net = Net(three(), client_freq_ppb=freq_ppm * 1000.0)
    net.run(900)
    freqs = [a.ppb for _t, a in net.of(SetFrequency) if isinstance(a, SetFrequency)]
    assert freqs
    assert all(abs(f) <= MAX_FREQ_PPB for f in freqs)
    assert net.engine.frequency_ppb == pytest.approx(-500_000.0 * freq_ppm / abs(freq_ppm))
    assert net.clock.frequency_ppb() == net.engine.frequency_ppb


def test_moderate_frequency_error_is_learned() -> None:
    net = Net(three(), client_freq_ppb=50_000.0)  # 50 ppm fast
    net.run(1200)
    assert net.engine.frequency_ppb == pytest.approx(-50_000.0, abs=500.0)
    assert abs(net.error_ns()) < 200_000


def test_initial_frequency_is_applied_and_clamped() -> None:
    net = Net(three(), SyncOptions(initial_frequency_ppb=900_000.0))
    first = net.actions[0][1]
    assert isinstance(first, SetFrequency) and first.ppb == MAX_FREQ_PPB
    assert net.engine.frequency_ppb == MAX_FREQ_PPB


# ----------------------------------------------------------------- selection


def test_liar_is_a_falseticker_and_never_system_peer() -> None:
    liar = Server("10.9.9.9", offset_ns=3 * NS, delay_ns=100_000)  # the quickest, too
    net = Net([*three(delay_ns=20 * MS), liar])
    liar_id = 4
    seen: list[tuple[str, int | None]] = []

    def watch(n: Net) -> None:
        st = n.status()
        seen.append((st.sources[liar_id - 1].tally, st.system_peer_id))

    net.on_packet = watch
    net.run(600)
    assert seen
    assert all(tally != "*" and peer != liar_id for tally, peer in seen)
    assert seen[-1][0] == "x"
    src = net.engine.sources[liar_id]
    assert src.state == "falseticker"
    assert not net.of(StepClock)
    assert abs(net.error_ns()) < MS


def test_stratum_is_peer_stratum_plus_one_and_refid_is_peer_ipv4() -> None:
    servers = three(stratum=3, refid=refid_from_ipv4("172.16.0.1"))
    net = Net(servers)
    sync(net, 60)
    state = net.state()
    st = net.status()
    assert state.stratum == 4 and st.stratum == 4
    assert state.leap == LEAP_NONE
    assert st.system_peer is not None
    assert state.refid == refid_from_ipv4(st.system_peer)
    assert st.refid == st.system_peer
    # what each source told us
    assert {s.refid for s in st.sources} == {"172.16.0.1"}
    assert {s.stratum for s in st.sources} == {3}


def test_unsynchronized_server_is_counted_but_never_selected() -> None:
    bad = Server("10.0.0.9", leap=LEAP_ALARM, stratum=16, offset_ns=50 * MS)
    net = Net([*three(), bad])
    sync(net, 120)
    src = net.engine.sources[4]
    assert src.counters["unsynchronized"] > 0
    assert src.counters["samples"] == 0
    assert src.reach != 0
    st = net.status()
    assert st.sources[3].tally == " "
    assert st.system_peer_id != 4
    assert abs(net.error_ns()) < MS


def test_duplicate_stale_and_unknown_replies_are_dropped() -> None:
    net = Net(three())
    sync(net, 30)
    sid, reply = net.delivered[-1]
    src = net.engine.sources[sid]
    before = dict(src.counters)
    # the same reply again: its request has been answered already
    assert net.engine.handle_packet(sid, reply, net.now(), net.true) == []
    assert src.counters["drop_unexpected"] == before.get("drop_unexpected", 0) + 1
    # a new request is outstanding: the old reply no longer matches its cookie
    net.run((src.next_poll_mono - net.true) / NS + 0.001)
    assert src.pending is not None
    assert net.engine.handle_packet(sid, reply, net.now(), net.true) == []
    assert src.counters["drop_bogus"] == before.get("drop_bogus", 0) + 1
    assert src.counters["samples"] == before["samples"]
    # a reply for a source the engine does not know (removed meanwhile)
    assert net.engine.handle_packet(99, reply, net.now(), net.true) == []


# ----------------------------------------------------------------- holdover and fallback


def test_holdover_until_root_distance_exceeds_maxdist() -> None:
    maxdist = 30 * MS
    net = Net(three(), SyncOptions(maxdist_ns=maxdist))
    sync(net, 60)
    for srv in net.servers.values():
        srv.answering = False
    lost_at: float | None = None
    last_distance = 0
    while net.t < 4000:
        net.run(50)
        st = net.status()
        state = net.state()
        if st.synchronized:
            assert lost_at is None
            assert state.leap == LEAP_NONE and state.stratum == 2
            assert st.root_distance_ns <= maxdist
            last_distance = st.root_distance_ns
        elif lost_at is None:
            lost_at = net.t
            assert state.leap == LEAP_ALARM
            assert st.stratum == 16 and state.wire_stratum == 0
            assert st.system_peer is None
    assert lost_at is not None
    # dispersion grows at 15 ppm: the holdover lasts about maxdist / PHI
    assert last_distance > maxdist - 50 * 15_000 - MS
    assert 1500 < lost_at < 2100
    logs = net.logs("sync lost")
    assert len(logs) == 1 and lost_at - 54 <= logs[0][0] <= lost_at
    assert not net.of(StepClock)


def test_sync_regained_after_outage() -> None:
    net = Net(three(), SyncOptions(maxdist_ns=20 * MS))
    sync(net, 60)
    for srv in net.servers.values():
        srv.answering = False
    net.run(2000)
    assert not net.state().synchronized
    for srv in net.servers.values():
        srv.answering = True
    net.run(2000)  # polls have backed off to maxpoll (64 s here)
    assert net.state().synchronized
    assert net.logs("(regained)")


def test_local_clock_serves_at_once_without_sources() -> None:
    local = LocalReference.ntpd_style(10)
    net = Net([], SyncOptions(local=local))
    state = net.state()
    assert state.synchronized and state.stratum == 11 and state.leap == LEAP_NONE
    assert net.logs("serving from the local clock at stratum 11")
    st = net.status()
    assert st.synchronized and st.system_peer is None
    (line,) = st.sources
    assert (line.name, line.kind, line.type_char, line.tally) == ("LOCAL(0)", "local", "l", "*")
    assert line.reach == 0o377 and line.state == "sync" and line.stratum == 10
    net.run(100)
    assert net.state().synchronized


def test_local_clock_waits_orphanwait_then_yields_to_upstream() -> None:
    servers = three()
    for srv in servers:
        srv.answering = False
    # tos coldstart 1: never synchronized, yet allowed (tests/core/test_local_guard.py
    # has the default, which holds the local clock back)
    local = LocalReference.ntpd_style(10)
    net = Net(servers, SyncOptions(local=local, fallback_cold_start=True))
    net.run(290)
    assert not net.state().synchronized
    assert not net.logs("serving from the local clock")
    net.run(20)
    state = net.state()
    assert state.synchronized and state.stratum == 11
    ((t, _msg),) = net.logs("serving from the local clock")
    assert 300 <= t < 305
    # the upstream comes back: it wins
    for srv in servers:
        srv.answering = True
    net.run(600)
    state = net.state()
    assert state.synchronized and state.stratum == 2
    st = net.status()
    assert st.system_peer is not None
    local_line = st.sources[-1]
    assert local_line.name == "LOCAL(0)"
    assert local_line.tally == " " and local_line.state == "standby"
    assert not net.engine.fallback_active


def test_orphan_mode_fallback_line() -> None:
    net = Net([], SyncOptions(orphan_stratum=8))
    state = net.state()
    assert state.synchronized and state.stratum == 8
    assert net.logs("serving from the orphan mode at stratum 8")
    assert net.status().sources[0].name == "ORPHAN"


def test_no_fallback_configured_stays_unsynchronized() -> None:
    net = Net([])
    net.run(1000)
    st = net.status()
    assert not st.synchronized and st.sources == ()
    assert net.state().leap == LEAP_ALARM


def test_local_clock_takes_over_after_upstream_is_lost() -> None:
    net = Net(three(), SyncOptions(maxdist_ns=20 * MS, local=LocalReference.ntpd_style(10)))
    sync(net, 60)
    for srv in net.servers.values():
        srv.answering = False
    net.run(2500)  # holdover (~1300 s) and orphanwait (300 s) both long over
    state = net.state()
    assert state.synchronized and state.stratum == 11


def test_unreachable_sources_lose_their_tally() -> None:
    net = Net(three())
    sync(net, 60)
    for srv in net.servers.values():
        srv.answering = False
    net.run(1000)
    st = net.status()
    assert all(s.reach == 0 for s in st.sources)
    assert all(s.tally == " " for s in st.sources)


# ----------------------------------------------------------------- pools and kiss-o'-death

POOL = {"pool": "pool.example", "kind": "pool"}


def test_pool_source_unreachable_is_replaced() -> None:
    servers = three()
    servers[0].config = dict(POOL)
    net = Net(servers)
    sync(net, 60)
    servers[0].answering = False
    servers[1].answering = False  # a plain server: logged, not replaced
    net.run(600)
    replaced = [a for _t, a in net.of(ReplaceSource) if isinstance(a, ReplaceSource)]
    assert replaced == [ReplaceSource(1, "pool.example", "unreachable")]
    assert net.logs("source 10.0.0.1 is unreachable")
    assert net.logs("source 10.0.0.2 is unreachable")
    assert net.engine.sources[1].state == "unreachable"


def test_replaced_pool_source_can_be_removed() -> None:
    servers = three()
    servers[0].config = dict(POOL)
    net = Net(servers)
    net.remove_replaced = True
    sync(net, 60)
    servers[0].answering = False
    net.run(600)
    assert 1 not in net.engine.sources
    assert net.status().system_peer in ("10.0.0.2", "10.0.0.3")
    assert net.state().synchronized


def test_pool_source_that_never_answers_is_replaced() -> None:
    servers = three()
    servers[0].config = dict(POOL)
    servers[0].answering = False
    net = Net(servers)
    net.run(1200)
    assert net.of(ReplaceSource)


@pytest.mark.parametrize("code", ["DENY", "RSTR"])
def test_kod_deny_stops_the_source_and_replaces_a_pool_member(code: str) -> None:
    servers = three()
    servers[0].config = dict(POOL)
    servers[0].kod = code
    net = Net(servers)
    net.run(600)
    assert servers[0].requests == 1
    assert net.logs(f"kiss-o'-death {code}")
    assert [a for _t, a in net.of(ReplaceSource)] == [
        ReplaceSource(1, "pool.example", f"kod_{code}")
    ]
    st = net.status()
    assert st.sources[0].state == "kod"
    assert st.system_peer in ("10.0.0.2", "10.0.0.3")
    assert not net.engine.sources[1].due(net.true + 10**6 * NS)


def test_kod_rate_slows_polling() -> None:
    servers = three()
    servers[0].kod = "RATE"
    net = Net(servers, minpoll=4, maxpoll=6)
    net.run(600)
    src = net.engine.sources[1]
    assert src.counters["kod_RATE"] == servers[0].requests
    assert src.minpoll > 4 and src.poll > 4
    assert servers[0].requests < servers[1].requests
    assert src.active


# ----------------------------------------------------------------- status


def test_status_before_any_reply() -> None:
    net = Net(three(), SyncOptions(local=LocalReference.ntpd_style(10)))
    st = net.status()
    assert not st.synchronized and st.system_peer is None and st.stratum == 16
    assert st.leap == LEAP_ALARM
    for line in st.sources[:3]:
        assert line.tally == " " and line.reach == 0 and line.when_s is None
        assert line.refid == ".INIT." and line.stratum == 16 and line.samples == 0
        assert line.type_char == "u" and line.kind == "server"
    local = st.sources[3]
    assert local.name == "LOCAL(0)" and local.tally == " " and local.reach == 0


def test_status_after_sync() -> None:
    servers = three()
    servers[2].config = dict(POOL)
    net = Net(servers, SyncOptions(local=LocalReference.ntpd_style(10)), minpoll=4)
    sync(net, 30)
    st = net.status()
    assert st.synchronized and st.leap == LEAP_NONE and st.stratum == 2
    assert st.system_peer is not None and st.system_peer_id is not None
    assert st.clock == "virtual" and st.precision == -20
    assert len(st.sources) == 4
    ups = st.sources[:3]
    tallies = sorted(s.tally for s in ups)
    assert tallies == ["*", "+", "+"]
    peer_line = next(s for s in ups if s.tally == "*")
    assert peer_line.address == st.system_peer and peer_line.id == st.system_peer_id
    assert peer_line.state == "sync"
    for line in ups:
        assert line.reach == 0o377  # iburst: 8 answered requests
        assert line.poll_s == 16
        assert line.when_s is not None and 0 <= line.when_s <= 16
        assert line.samples >= 8
        assert line.refid == "GPS" and line.stratum == 1
        assert line.delay_ns == pytest.approx(2 * MS, abs=100_000)
        assert abs(line.offset_ns) < 100_000
    assert st.sources[2].type_char == "p" and st.sources[2].kind == "pool"
    local = st.sources[3]
    assert (local.name, local.tally, local.reach, local.state) == ("LOCAL(0)", " ", 0, "standby")
    assert st.poll_s == 16
    assert st.root_distance_ns > 0 and st.root_distance_ns < 10 * MS
    net.run(100)
    assert net.status().sources[0].when_s is not None


def test_poll_grows_on_a_quiet_path() -> None:
    net = Net(three(jitter_ns=2_000), minpoll=4, maxpoll=7)
    net.run(2000)
    st = net.status()
    assert st.synchronized
    assert all(32 <= s.poll_s <= 128 for s in st.sources)
    assert st.poll_s >= 32


def test_poll_grows_on_an_ordinary_path() -> None:
    net = Net(three(jitter_ns=20_000), minpoll=4, maxpoll=7)
    net.run(2000)
    st = net.status()
    assert all(s.poll_s >= 32 for s in st.sources)


def test_remove_source_forgets_the_system_peer() -> None:
    net = Net(three())
    sync(net, 30)
    peer = net.engine.system_peer
    assert peer is not None
    net.engine.remove_source(peer)
    assert net.engine.system_peer is None
    assert peer not in net.engine.sources
    net.run(100)
    assert net.engine.system_peer not in (None, peer)


def test_next_wakeup_is_never_in_the_past_after_a_timer() -> None:
    net = Net(three())
    for _ in range(20):
        net.run(7)
        wake = net.engine.next_wakeup()
        assert wake is not None and wake > net.true - 4 * NS


# ----------------------------------------------------------------- why not synchronized (issue 11)


def reason_logs(net: Net) -> list[str]:
    return [m for _t, m in net.logs("not synchronized:")]


def test_two_disjoint_sources_say_no_majority_once() -> None:
    net = Net([Server("10.0.0.1"), Server("10.0.0.2", offset_ns=50 * MS)])
    net.run(2000)
    st = net.status()
    assert not st.synchronized and st.updates == 0
    assert st.reason is SyncReason.NO_MAJORITY
    assert "all 2 candidates are falsetickers" in st.reason_detail
    assert "10.0.0.1" in st.reason_detail and "10.0.0.2" in st.reason_detail
    # as in ntpd, no majority leaves every candidate a falseticker, not a blank tally
    assert [s.tally for s in st.sources] == ["x", "x"]
    logged = reason_logs(net)
    assert [m.split(":")[1].strip() for m in logged] == ["waiting for samples", "no majority"]
    assert not net.logs("system peer is now")


def test_reason_waits_for_samples_then_no_reachable_source_logged_once_per_source() -> None:
    servers = three()
    for srv in servers:
        srv.answering = False
    net = Net(servers)
    net.run(10)
    st = net.status()
    assert st.reason is SyncReason.WAITING and "no reply yet from 3" in st.reason_detail
    assert not net.logs("is unreachable")
    net.run(3000)
    st = net.status()
    assert st.reason is SyncReason.NO_REACHABLE
    assert all(s.reach == 0 and s.state == "unreachable" for s in st.sources)
    for srv in servers:
        assert len(net.logs(f"source {srv.address} is unreachable (it never answered)")) == 1
    assert len(reason_logs(net)) == 2  # waiting, then no reachable source


def test_never_answered_source_is_logged_after_its_first_8_polls() -> None:
    servers = three()
    servers[2].answering = False
    net = Net(servers, iburst=False)
    sync(net, 100)
    assert servers[2].requests < 8 and not net.logs("10.0.0.3 is unreachable")
    net.run(2000)
    assert servers[2].requests > 8
    (line,) = net.logs("source 10.0.0.3 is unreachable")
    assert "never answered" in line[1]
    assert net.status().reason is SyncReason.SYNCHRONIZED
    servers[2].answering = True
    net.run(2000)
    assert len(net.logs("source 10.0.0.3 is reachable again")) == 1


def test_system_peer_and_holdover_are_logged_once_per_change() -> None:
    servers = [Server("10.0.0.1")]
    net = Net(servers)
    sync(net, 60)
    for _ in range(3):  # outages shorter than the holdover: selection comes and goes
        servers[0].answering = False
        net.run(600)
        assert net.status().reason is SyncReason.HOLDOVER
        assert net.state().synchronized
        servers[0].answering = True
        net.run(600)
        assert net.status().reason is SyncReason.SYNCHRONIZED
    assert len(net.logs("system peer is now 10.0.0.1")) == 1
    assert len(net.logs("holding over: no selectable source (no reachable source")) == 3
    assert len(net.logs("holdover over: following 10.0.0.1")) == 3
    assert len(net.logs("source 10.0.0.1 is unreachable")) == 3


def test_falseticker_is_logged_when_it_becomes_one_and_when_it_recovers() -> None:
    liar = Server("10.9.9.9", offset_ns=3 * NS)
    net = Net([*three(), liar])
    net.run(1000)
    assert len(net.logs("source 10.9.9.9 is a falseticker")) == 1
    assert not net.logs("10.0.0.1 is a falseticker")
    liar.offset_ns = 0
    net.run(1000)
    assert len(net.logs("source 10.9.9.9 is no longer a falseticker")) == 1
    assert len(net.logs("source 10.9.9.9 is a falseticker")) == 1


def test_no_star_tally_before_the_clock_follows_it() -> None:
    """peers and stat agree: a selected source gets '*' only once the clock follows it."""
    servers = three()
    servers[2].answering = False  # holds the first update for 16 s
    net = Net(servers)
    net.run(12)
    st = net.status()
    assert not st.synchronized and st.reason is SyncReason.WAITING
    assert "*" not in [s.tally for s in st.sources], st.sources
    net.run(30)
    st = net.status()
    assert st.synchronized and [s.tally for s in st.sources].count("*") == 1


def test_panic_is_the_reason_and_no_source_is_starred() -> None:
    net = Net(three(2000 * NS))
    net.run(60)
    st = net.status()
    assert not st.synchronized and st.reason is SyncReason.PANIC
    assert "*" not in [s.tally for s in st.sources]


def test_no_selectable_source_names_the_cause() -> None:
    net = Net(three(leap=LEAP_ALARM))
    net.run(200)
    st = net.status()
    assert st.reason is SyncReason.NO_CANDIDATE
    assert "3 unsynchronized" in st.reason_detail
    assert len(reason_logs(net)) == 2
