"""The simulated world that drives the production synchronization core.

One run wires together:

- true time ``T``: an integer-ns event clock that only moves forward (also the engine's
  monotonic clock);
- the client's oscillator (``Oscillator``) under one of the two production clock adapters,
  which the engine disciplines through the actions it returns: the real ``VirtualClock``
  (``clock="virtual"``), or the real ``SystemClock`` over ``KernelClock``, a model of the
  Linux kernel clock's adjtimex (``clock="kernel"``: what runs as root);
- the real ``SyncEngine`` (``ntpy.core.engine``), fed by an event queue (``heapq``);
- one ``SimServer`` per upstream -- the real ``Responder`` -- behind a ``Link`` each way.

Everything random comes from one ``random.Random(seed)``: each component gets its own
stream derived from it in a fixed order, so the same seed gives a byte-identical report,
and a change to one component's draws does not reshuffle the others'.

Timestamps the engine sees (T1, T4, ``now_clock``) are the *cooked* clock, ``now_ns() +
remaining_slew_ns()``: the engine treats a slew as already applied (``ntpy.clock.base``
says what each adapter serves). What is graded is the *served* time error,
``now_ns() - T``, sampled every ``sample_step_s`` (1 s by default). With the kernel clock
the kernel clock's own error (what other programs on the host read) is measured too.
The adapter's timer (``TimedClock``: the end of a kernel slew) is an event like any other.

The engine is created by an ``EngineFactory`` so unit tests can drive the world with a
stand-in; the default is the production engine.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from ntpy.clock.base import Clock, TimedClock
from ntpy.clock.select import VIRTUAL_SLEW_RATE_PPM
from ntpy.clock.system import SystemClock
from ntpy.clock.virtual import VirtualClock
from ntpy.core.actions import (
    Action,
    LogEvent,
    Panic,
    Record,
    ReplaceSource,
    SendRequest,
    StepClock,
    cooked_now,
)
from ntpy.core.engine import SourceConfig, SyncEngine, SyncOptions
from ntpy.core.runner import ClockAction, carry_out
from ntpy.core.status import TALLY_SYSPEER, SyncStatus
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S
from ntpy.sim.kernel import KernelClock
from ntpy.sim.leapsim import SimLeap, utc_of
from ntpy.sim.network import Link
from ntpy.sim.oscillator import Oscillator
from ntpy.sim.report import Report, compute_metrics, evaluate
from ntpy.sim.scenarios import Scenario, get_scenario
from ntpy.sim.server import SimServer

START_NS = 1_700_000_000 * NS_PER_S
"""True time at the start of every run (2023-11-14): any fixed instant would do."""
CLIENT_ADDRESS = ("192.168.123.100", 123)
CLOCK_PRECISION = -20
"""Fixed so the VirtualClock never tries to measure its precision (sim time stands still)."""
MAX_LOGGED_EVENTS = 200
_MAX_WAKEUPS_WITHOUT_PROGRESS = 10_000

_TO_SERVER = 0
_TO_CLIENT = 1
CLOCKS = ("virtual", "kernel")
"""The clock adapters a run can use."""


def server_address(index: int) -> tuple[str, int]:
    """The simulated address of the ``index``-th server (IPv4-looking, so refids are too)."""
    return (f"192.168.123.{index + 1}", 123)


class SimulationError(Exception):
    """The engine misbehaved in a way the world cannot carry on from (e.g. a busy loop)."""


class EngineLike(Protocol):
    """The part of ``SyncEngine`` the world drives."""

    def start(self, now_mono: int, now_clock: int) -> Sequence[Action]: ...

    def handle_timer(self, now_mono: int, now_clock: int) -> Sequence[Action]: ...

    def mark_sent(self, source_id: int, t1_clock: int) -> None: ...

    def handle_packet(
        self, source_id: int, data: bytes, t4_clock: int, now_mono: int
    ) -> Sequence[Action]: ...

    def next_wakeup(self) -> int | None: ...

    def system_state(self, now_clock: int) -> SystemState: ...

    def status(self, now_mono: int, now_clock: int) -> SyncStatus: ...


EngineFactory = Callable[
    [Scenario, Sequence[SimServer], Callable[[], int], int], tuple[EngineLike, list[int]]
]
"""(scenario, servers, random64, now_mono) -> (engine, source id of each server, in order)."""


def production_engine(
    scenario: Scenario, servers: Sequence[SimServer], random64: Callable[[], int], now_mono: int
) -> tuple[EngineLike, list[int]]:
    """The real ``SyncEngine`` with default options and one source per simulated server."""
    engine = SyncEngine(SyncOptions(precision=CLOCK_PRECISION, clock_name="sim"), random64)
    ids = [
        engine.add_source(
            SourceConfig(
                name=server.spec.name,
                address=server.address,
                iburst=scenario.iburst,
                minpoll=scenario.minpoll,
                maxpoll=scenario.maxpoll,
            ),
            now_mono,
        )
        for server in servers
    ]
    return engine, ids


class Simulation:
    """One seeded run of one scenario. ``run()`` once; it returns the ``Report``."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        engine_factory: EngineFactory = production_engine,
        trace_step_s: int | None = None,
        clock: str = "virtual",
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCKS)}")
        sample = scenario.sample_step_s
        if trace_step_s is None:
            trace_step_s = sample if scenario.duration_s <= 20_000 else max(60, sample)
        if trace_step_s <= 0 or trace_step_s % sample:
            raise ValueError(f"trace_step_s must be a positive multiple of {sample} s")
        self.scenario = scenario
        self.seed = seed
        self.trace_step_s = trace_step_s
        master = random.Random(seed)
        start = scenario.start_ns if scenario.start_ns is not None else START_NS
        self.start = start
        self.now = start
        self.oscillator = Oscillator(
            start_ns=self.start,
            offset_ns=scenario.initial_offset_ns,
            freq_ppb=scenario.freq_ppb,
            wander_ppb=scenario.wander_ppb,
            rng=random.Random(master.getrandbits(64)),
        )
        self.clock_kind = clock
        self.kernel: KernelClock | None = None
        self.clock: Clock
        if clock == "kernel":
            self.kernel = KernelClock(self.oscillator.read, lambda: self.now, strict=True)
            system = SystemClock(
                self.kernel,
                adjustable=True,
                realtime=self.kernel.read_ns,
                precision_log=CLOCK_PRECISION,
            )
            system.reset_kernel_discipline()  # as the daemon does before adjusting
            self.clock = system
        else:
            # The same slew rate as the daemon's virtual clock, so the sim grades what runs.
            self.clock = VirtualClock(
                realtime=self._raw_now,
                precision_log=CLOCK_PRECISION,
                slew_rate_ppm=VIRTUAL_SLEW_RATE_PPM,
            )
        self._timed = self.clock if isinstance(self.clock, TimedClock) else None
        engine_rng = random.Random(master.getrandbits(64))
        self.servers: list[SimServer] = []
        self.links: list[Link] = []
        for i, spec in enumerate(scenario.servers):
            self.servers.append(
                SimServer(
                    spec, server_address(i), random.Random(master.getrandbits(64)), self.start
                )
            )
            self.links.append(Link(spec.link, random.Random(master.getrandbits(64)), self.start))
        self.engine, ids = engine_factory(
            scenario, self.servers, lambda: engine_rng.getrandbits(64), self.start
        )
        if len(ids) != len(self.servers) or len(set(ids)) != len(ids):
            raise SimulationError("the engine factory must return one distinct id per server")
        self._server_of: dict[int, int] = {sid: i for i, sid in enumerate(ids)}
        self._liars = {sid for sid, s in zip(ids, scenario.servers, strict=True) if s.falseticker}
        self._queue: list[tuple[int, int, int, int, bytes]] = []
        self._seq = 0
        self._ran = False
        # outcome
        self.steps = 0
        self.refused = False
        self.panic_message: str | None = None
        self.sent = 0
        self.lost = 0
        self.replies = 0
        self.peer: int | None = None
        self.peer_changes = 0
        self.liar_peer: int | None = None
        self.liar_peer_at: int | None = None
        self.log: list[str] = []
        self.log_count = 0
        self.times_s: list[int] = []
        self.errors_ns: list[int] = []
        self.freq_errors_ppb: list[float] = []
        self.kernel_errors_ns: list[int] = []
        self.clock_timers = 0
        self.leap_keeper = SimLeap(self)
        """The leap second's effects on the client (``sim/leapsim.py``)."""
        self.probe: Callable[[Simulation], None] | None = None
        """Called at every sample (tests watch served time and LI through it)."""

    # --- clocks ---------------------------------------------------------------------------

    def utc_ns(self, true_ns: int) -> int:
        """What a perfect UTC clock reads at true time ``true_ns`` (the scenario's leap
        done)."""
        return utc_of(true_ns, self.scenario.leap_at_s, self.scenario.leap_step)

    def _raw_now(self) -> int:
        return self.oscillator.read(self.now)

    def cooked_now(self) -> int:
        """The clock as the engine sees it: served time with any running slew applied."""
        return cooked_now(self.clock)

    def _sample(self) -> None:
        now = self.now
        self.times_s.append((now - self.start) // NS_PER_S)
        utc = self.utc_ns(now)
        self.errors_ns.append(self.clock.now_ns() - utc)
        if self.kernel is not None:
            self.kernel_errors_ns.append(self.kernel.read_ns() - utc)
        if self.probe is not None:
            self.probe(self)
        osc = self.oscillator.freq_ppb(now)
        corr = self.clock.frequency_ppb()
        # served rate = (1 + osc)(1 + corr): the product term matters at 100 ppm (10 ppt).
        self.freq_errors_ppb.append(osc + corr + osc * corr * 1e-9)

    # --- the event loop -------------------------------------------------------------------

    def _clock_timer_at(self) -> int | None:
        """True time the clock adapter wants its timer (its wait is in its own ns)."""
        if self._timed is None or self.kernel is None:
            return None
        due = self._timed.timer_due_in_ns()
        if due is None:
            return None
        return self.now + self.kernel.true_ns_for(due)

    def _push(self, t: int, kind: int, index: int, data: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, index, data))

    def run(self) -> Report:
        if self._ran:
            raise RuntimeError("a Simulation runs once; make a new one")
        self._ran = True
        end = self.start + self.scenario.duration_s * NS_PER_S
        next_sample = self.start
        sample_step = self.scenario.sample_step_s * NS_PER_S
        self._apply(self.engine.start(self.now, self.cooked_now()))
        self._check_peer()
        stalled = 0
        while not self.refused:
            t_event = self._queue[0][0] if self._queue else None
            wake = self.engine.next_wakeup()
            if wake is not None:
                wake = max(wake, self.now)
            t_clock = self._clock_timer_at()
            t_leap = self.leap_keeper.wake_at()
            candidates = [t for t in (t_event, wake, t_clock, t_leap) if t is not None]
            t_next = min(candidates) if candidates else end + 1
            while next_sample <= end and next_sample <= t_next:
                self.now = next_sample
                self._sample()
                next_sample += sample_step
            if t_next > end:
                break
            stalled = stalled + 1 if t_next == self.now else 0
            if stalled > _MAX_WAKEUPS_WITHOUT_PROGRESS:
                raise SimulationError(f"engine busy-loops at t={self.now - self.start} ns")
            self.now = t_next
            if t_leap is not None and t_leap == t_next:
                self.leap_keeper.update()
            elif t_clock is not None and t_clock == t_next and self._timed is not None:
                self.clock_timers += 1
                self._timed.on_timer()
            elif t_event is not None and t_event == t_next:
                _t, _seq, kind, index, data = heapq.heappop(self._queue)
                if kind == _TO_SERVER:
                    self._at_server(index, data)
                else:
                    self._at_client(index, data)
            else:
                actions = self.engine.handle_timer(self.now, self.cooked_now())
                self._apply(actions)
                # Selection runs on replies; a timer only changes the peer when it also has
                # something to say (sync lost...). Skipping the status snapshot after plain
                # polls and housekeeping keeps days-long runs fast.
                if any(not isinstance(a, SendRequest) for a in actions):
                    self._check_peer()
        return self._report()

    def _at_server(self, source_id: int, data: bytes) -> None:
        i = self._server_of[source_id]
        server = self.servers[i]
        reply = server.handle(data, CLIENT_ADDRESS, self.now)
        if reply is None:
            return
        depart = self.now + server.spec.processing_ns
        delay = self.links[i].downlink_delay(depart)
        if delay is None:
            self.lost += 1
            return
        self._push(depart + delay, _TO_CLIENT, source_id, reply)

    def _at_client(self, source_id: int, data: bytes) -> None:
        self.replies += 1
        actions = self.engine.handle_packet(source_id, data, self.cooked_now(), self.now)
        self._apply(actions)
        self._check_peer()

    def _apply(self, actions: Sequence[Action]) -> None:
        """Carry out the engine's actions in order, with the daemon's runner."""
        carry_out(actions, self, self.engine)
        self.leap_keeper.update()

    # --- effects (core.runner) ------------------------------------------------------------

    def send_request(self, action: SendRequest) -> int | None:
        i = self._server_of.get(action.source_id)
        if i is None:
            raise SimulationError(f"SendRequest for unknown source {action.source_id}")
        t1 = self.cooked_now()
        self.sent += 1
        delay = self.links[i].uplink_delay(self.now)
        if delay is None:
            self.lost += 1
        else:
            self._push(self.now + delay, _TO_SERVER, action.source_id, action.data)
        return t1

    def clock_adjusted(self, action: ClockAction) -> None:
        self.steps += isinstance(action, StepClock)

    def log_event(self, event: LogEvent) -> None:
        self.log_count += 1
        if len(self.log) < MAX_LOGGED_EVENTS:
            t = (self.now - self.start) // NS_PER_S
            self.log.append(f"t={t} {event.level}: {event.message}")

    def replace_source(self, action: ReplaceSource) -> None:
        """No pools in the simulation."""

    def panic(self, action: Panic) -> None:
        self.refused = True
        self.panic_message = action.message

    def record(self, record: Record) -> None:
        """No statistics files in the simulation."""

    def _check_peer(self) -> None:
        """Track the system peer, and catch a falseticker chosen as peer even for a moment.

        ``system_peer_id`` is only reported while synchronized, so a liar that was selected
        and then refused (Panic) would slip by; the '*' tally shows selection itself.
        """
        status = self.engine.status(self.now, self.cooked_now())
        peer = status.system_peer_id
        if peer != self.peer:
            self.peer_changes += 1
            self.peer = peer
        if self.liar_peer is None:
            chosen = {s.id for s in status.sources if s.tally == TALLY_SYSPEER}
            if peer is not None:
                chosen.add(peer)
            liars = sorted(chosen & self._liars)
            if liars:
                self.liar_peer = liars[0]
                self.liar_peer_at = (self.now - self.start) // NS_PER_S

    # --- the outcome ------------------------------------------------------------------------

    def _report(self) -> Report:
        sc = self.scenario
        m = compute_metrics(
            self.times_s,
            self.errors_ns,
            self.freq_errors_ppb,
            sc.sync_limit_ns,
            sc.metrics_from_s,
        )
        state = self.engine.system_state(self.cooked_now())
        km = None
        if self.kernel is not None:
            km = compute_metrics(
                self.times_s,
                self.kernel_errors_ns,
                self.freq_errors_ppb,
                sc.sync_limit_ns,
                sc.metrics_from_s,
            )
        step = self.trace_step_s
        trace = tuple(
            (t, e, round(f, 3))
            for t, e, f in zip(self.times_s, self.errors_ns, self.freq_errors_ppb, strict=True)
            if t % step == 0
        )
        report = Report(
            scenario=sc.name,
            seed=self.seed,
            duration_s=(self.now - self.start) // NS_PER_S,
            sync_limit_ns=sc.sync_limit_ns,
            time_to_sync_s=m.time_to_sync_s,
            window_from_s=m.window_from_s,
            rms_error_ns=None if m.rms_error_ns is None else round(m.rms_error_ns, 1),
            max_abs_error_ns=m.max_abs_error_ns,
            rms_freq_error_ppb=(
                None if m.rms_freq_error_ppb is None else round(m.rms_freq_error_ppb, 3)
            ),
            final_error_ns=self.errors_ns[-1] if self.errors_ns else 0,
            steps=self.steps,
            refused=self.refused,
            panic_message=self.panic_message,
            falseticker_peer_id=self.liar_peer,
            falseticker_peer_at_s=self.liar_peer_at,
            peer_changes=self.peer_changes,
            final_stratum=state.stratum,
            final_synchronized=state.synchronized,
            packets_sent=self.sent,
            packets_lost=self.lost,
            replies_received=self.replies,
            log_events=tuple(self.log),
            log_event_count=self.log_count,
            passed=True,
            failures=(),
            trace_step_s=step,
            trace=trace,
            clock=self.clock_kind,
            kernel_time_to_sync_s=None if km is None else km.time_to_sync_s,
            kernel_rms_error_ns=(
                None if km is None or km.rms_error_ns is None else round(km.rms_error_ns, 1)
            ),
            kernel_max_abs_error_ns=None if km is None else km.max_abs_error_ns,
            clock_timers=self.clock_timers,
        )
        failures = evaluate(sc, report)
        return replace(report, passed=not failures, failures=failures)


def run_scenario(
    scenario: Scenario | str,
    seed: int = 1,
    *,
    engine_factory: EngineFactory = production_engine,
    trace_step_s: int | None = None,
    clock: str = "virtual",
) -> Report:
    """Run ``scenario`` (or the scenario of that name) once with ``seed`` on ``clock``
    ("virtual" or "kernel")."""
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    sim = Simulation(
        sc, seed, engine_factory=engine_factory, trace_step_s=trace_step_s, clock=clock
    )
    return sim.run()
