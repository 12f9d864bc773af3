"""A simulated leap second on both clock adapters: upstreams (the real Responder) announce
and perform it; the client must announce it (LI) in the month of the event only, leap with
its clock at 23:59:60 (kernel STA_INS/STA_DEL or the virtual clock's step) and keep its
served time on UTC; with a smear, the served time runs smoothly instead."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from ntpy.clock.leap import SmearedClock
from ntpy.core.leap import SmearPolicy
from ntpy.core.leapfile import parse_leap_file, render_leap_file
from ntpy.core.timestamps import NS_PER_S
from ntpy.sim.scenarios import LEAP_2016_S, Scenario, get_scenario, leap_scenario
from ntpy.sim.server import SimServer
from ntpy.sim.world import EngineLike, Simulation, production_engine

MS = 1_000_000
NTP = 2_208_988_800


def _around(sim: Simulation, at_s: int, width_s: int) -> list[tuple[int, int]]:
    """(seconds from the leap in true time, served error vs UTC) near the leap."""
    base = (at_s * NS_PER_S - sim.start) // NS_PER_S
    return [
        (t - base, e)
        for t, e in zip(sim.times_s, sim.errors_ns, strict=True)
        if abs(t - base) <= width_s
    ]


@pytest.mark.parametrize("clock", ["virtual", "kernel"])
@pytest.mark.parametrize("name", ["leap", "leap-delete"])
def test_the_client_leaps_with_its_servers(clock: str, name: str) -> None:
    sc = get_scenario(name)
    sim = Simulation(sc, 1, clock=clock)
    report = sim.run()
    assert sim.steps == 0 and (report.max_abs_error_ns or 0) < 1 * MS
    near = _around(sim, LEAP_2016_S, 30)
    assert len(near) == 61
    assert all(abs(e) < 1 * MS for _t, e in near), near  # on UTC before, at and after
    if sim.kernel is not None:
        assert all(abs(e) < 1 * MS for e in sim.kernel_errors_ns[-3600:])
    at = LEAP_2016_S * NS_PER_S
    leaped = at + (NS_PER_S if sc.leap_step > 0 else -NS_PER_S)  # true time of the last LI
    li = sim.leap_keeper.li_timeline
    want = 1 if sc.leap_step > 0 else 2
    assert [v for _t, v in li] == [3, want, 0], li
    assert li[2][0] - leaped < 10 * MS  # LI cleared at the leap (the boundary wake)


def test_li_is_announced_in_the_month_of_the_event_only() -> None:
    # from 30 November 22:00 to 2 December 02:00: the upstreams announce from 1 December
    # 00:00, the client from 2 December 00:00 -- on the first day of a month a vote may be
    # the last leap's (core/leap.py); the end of the month is test_the_client_leaps_...
    dec1 = (LEAP_2016_S - 31 * 86_400) * NS_PER_S
    sc = leap_scenario(
        "leap-month", LEAP_2016_S, 1, start_before_s=31 * 86_400 + 7200, duration_s=28 * 3600
    )
    sim = Simulation(sc, 2)
    report = sim.run()
    assert sim.steps == 0 and (report.max_abs_error_ns or 0) < 1 * MS
    day = 86_400 * NS_PER_S
    li = [(t, v) for t, v in sim.leap_keeper.li_timeline if v != 3]
    assert [v for _t, v in li] == [0, 1]
    assert li[1][0] - (dec1 + day) < 10 * MS  # the boundary wake at 2 December 00:00


def _with_table(table_text: bytes) -> Callable[..., tuple[EngineLike, list[int]]]:
    table = parse_leap_file(table_text)

    def factory(
        scenario: Scenario, servers: Sequence[SimServer], random64: Callable[[], int], now: int
    ) -> tuple[EngineLike, list[int]]:
        engine, ids = production_engine(scenario, servers, random64, now)
        engine.set_leap_table(table)  # type: ignore[attr-defined]
        return engine, ids

    return factory


def test_a_valid_leap_file_wins_over_the_upstream_vote() -> None:
    # the file lists a leap at the end of December: announced from 1 December 00:00 on
    # (no first-day rule for the file)
    entries = [(LEAP_2016_S - 549 * 86_400 + NTP, 36), (LEAP_2016_S + NTP, 37)]
    text = render_leap_file(entries, 3_690_000_000, 3_730_000_000)
    dec1 = (LEAP_2016_S - 31 * 86_400) * NS_PER_S
    sc = leap_scenario(
        "leap-file", LEAP_2016_S, 1, start_before_s=31 * 86_400 + 3600, duration_s=3 * 3600
    )
    sim = Simulation(sc, 3, engine_factory=_with_table(text))
    sim.run()
    li = [(t, v) for t, v in sim.leap_keeper.li_timeline if v != 3]
    assert [v for _t, v in li] == [0, 1]
    assert li[1][0] - dec1 < 10 * MS
    # and a file that lists no leap silences the upstreams' announcement
    text = render_leap_file(entries[:1], 3_690_000_000, 3_730_000_000)
    sim = Simulation(get_scenario("leap"), 1, engine_factory=_with_table(text))
    sim.run()
    assert {v for _t, v in sim.leap_keeper.li_timeline} == {3, 0}


@pytest.mark.parametrize("clock", ["virtual", "kernel"])
def test_smeared_served_time_runs_smoothly(clock: str) -> None:
    sc = leap_scenario("leap-smear", LEAP_2016_S, 1, start_before_s=13 * 3600, duration_s=26 * 3600)
    sim = Simulation(sc, 1, clock=clock)
    smeared = SmearedClock(sim.clock, SmearPolicy("noon", 86_400))
    at = LEAP_2016_S * NS_PER_S
    seen: list[tuple[int, int]] = []

    def probe(s: Simulation) -> None:
        if s.kernel is not None and s.engine.synced:  # type: ignore[attr-defined]
            s.clock.set_sync_status(True, 1000, 1000)  # type: ignore[attr-defined]
        smeared.follow(s.leap_keeper.event, s.cooked_now())
        if abs(s.now - at) <= 12 * 3600 * NS_PER_S + 30 * NS_PER_S:
            seen.append((s.now, smeared.now_ns()))

    sim.probe = probe
    sim.run()
    assert len(seen) > 40_000
    steps = [b[1] - a[1] for a, b in itertools.pairwise(seen)]
    bad = [
        (seen[i][0] - at, d)
        for i, d in enumerate(steps)
        if not 0.9998 * NS_PER_S < d < 1.0002 * NS_PER_S
    ]
    assert not bad, bad[:5]
    # the smear is half done at the leap: served time is half a second from either reading
    mid = min(seen, key=lambda p: abs(p[0] - at))
    assert mid[0] == at and abs(mid[1] - (at - NS_PER_S // 2)) < 2 * MS
    # at noon on either side it is exact UTC
    for t, served in seen:
        if abs(abs(t - at) - 12 * 3600 * NS_PER_S) < NS_PER_S // 2:
            assert abs(served - sim.utc_ns(t)) < 1 * MS
