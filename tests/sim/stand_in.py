"""A deliberately simple engine with the ``SyncEngine`` interface, for testing the world.

The world's mechanics (packets, delays, clock actions, determinism) must be testable
without depending on how good the production discipline is. This stand-in polls each
server every 2**minpoll s, slews away each measured offset and nudges the frequency by the
drift seen since the previous correction. It also records every sample, so tests can
check what the world delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ntpy.core.actions import Action, SendRequest, SetFrequency, SlewClock, StepClock
from ntpy.core.exchange import Sample, build_request, parse_reply
from ntpy.core.packet import LEAP_ALARM, LEAP_NONE
from ntpy.core.status import SyncStatus
from ntpy.core.system import SystemState, unsynchronized
from ntpy.sim.scenarios import Scenario
from ntpy.sim.server import SimServer

NS = 1_000_000_000


@dataclass
class _Src:
    address: object
    interval_ns: int
    next_poll: int
    cookie: int = 0
    t1: int | None = None
    samples: list[Sample] = field(default_factory=list)


class StandInEngine:
    def __init__(self, random64: Callable[[], int], gain: float = 0.7) -> None:
        self.random64 = random64
        self.gain = gain
        self.sources: dict[int, _Src] = {}
        self.freq_ppb = 0.0
        self.last_update: int | None = None
        self.synced = False
        self.timer_calls = 0

    def add(self, address: object, minpoll: int, now_mono: int) -> int:
        sid = len(self.sources) + 1
        self.sources[sid] = _Src(address, (1 << minpoll) * NS, now_mono)
        return sid

    def start(self, now_mono: int, now_clock: int) -> list[Action]:
        return []

    def next_wakeup(self) -> int | None:
        return min((s.next_poll for s in self.sources.values()), default=None)

    def handle_timer(self, now_mono: int, now_clock: int) -> list[Action]:
        self.timer_calls += 1
        out: list[Action] = []
        for sid, src in self.sources.items():
            if src.next_poll <= now_mono:
                src.cookie = self.random64()
                src.t1 = None
                src.next_poll = now_mono + src.interval_ns
                out.append(SendRequest(sid, src.address, build_request(src.cookie)))
        return out

    def mark_sent(self, source_id: int, t1_clock: int) -> None:
        self.sources[source_id].t1 = t1_clock

    def handle_packet(
        self, source_id: int, data: bytes, t4_clock: int, now_mono: int
    ) -> list[Action]:
        src = self.sources[source_id]
        assert src.t1 is not None
        sample = parse_reply(data, src.cookie, src.t1, t4_clock)
        src.samples.append(sample)
        offset = sample.offset_ns
        if not self.synced and abs(offset) > 128_000_000:
            self.synced = True
            self.last_update = t4_clock + offset
            return [StepClock(offset)]
        out: list[Action] = []
        if self.last_update is not None:
            dt = t4_clock - self.last_update
            if dt > 0:
                self.freq_ppb += self.gain * offset / dt * 1e9
                out.append(SetFrequency(self.freq_ppb))
        self.last_update = t4_clock
        self.synced = True
        out.append(SlewClock(offset))
        return out

    def system_state(self, now_clock: int) -> SystemState:
        if not self.synced:
            return unsynchronized(-20)
        return SystemState(LEAP_NONE, 2, 0, now_clock, 0, 0, -20)

    def status(self, now_mono: int, now_clock: int) -> SyncStatus:
        st = self.system_state(now_clock)
        return SyncStatus(
            synchronized=self.synced,
            leap=LEAP_NONE if self.synced else LEAP_ALARM,
            stratum=st.stratum,
            refid="",
            system_peer=None,
            system_peer_id=1 if self.synced else None,
            reference_ns=None,
            root_delay_ns=0,
            root_dispersion_ns=0,
            root_distance_ns=0,
            offset_ns=0,
            frequency_ppb=self.freq_ppb,
            jitter_ns=0,
            poll_s=64,
            precision=-20,
            clock="sim",
            sources=(),
        )


def stand_in_factory(
    holder: list[StandInEngine] | None = None,
) -> Callable[
    [Scenario, Sequence[SimServer], Callable[[], int], int], tuple[StandInEngine, list[int]]
]:
    """An ``EngineFactory`` building a ``StandInEngine`` (appended to ``holder`` if given)."""

    def factory(
        scenario: Scenario,
        servers: Sequence[SimServer],
        random64: Callable[[], int],
        now_mono: int,
    ) -> tuple[StandInEngine, list[int]]:
        engine = StandInEngine(random64)
        ids = [engine.add(s.address, scenario.minpoll, now_mono) for s in servers]
        if holder is not None:
            holder.append(engine)
        return engine, ids

    return factory
