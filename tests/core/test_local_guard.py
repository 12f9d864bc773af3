"""The local clock / orphan fallback serves only a clock known good (issue 16 item 4).

Against the production engine in memory (``test_engine.Net``): a server whose upstreams
never answer keeps saying "unsynchronized" instead of handing out its own clock, unless the
admin allowed a cold start or the last-good time file vouched for the clock; once it was
synchronized, losing the upstreams lets the fallback take over. ``judge_clock`` is the
start-up check against the last-good time.
"""

from __future__ import annotations

from test_engine import Net, three

from ntpy.core.clockguard import MAX_AHEAD_NS, RECENT_NS, judge_clock
from ntpy.core.options import SyncOptions
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S as NS

LOCAL = LocalReference.ntpd_style(10)


def _dead(options: SyncOptions) -> Net:
    servers = three()
    for srv in servers:
        srv.answering = False
    return Net(servers, options)


def test_never_synchronized_fallback_stays_off_and_says_why() -> None:
    net = _dead(SyncOptions(local=LOCAL))
    net.run(2000)
    assert not net.state().synchronized
    assert net.state().wire_stratum == 0
    assert not net.logs("serving from the local clock")
    (line,) = net.logs("stays off")
    assert "tos coldstart 1" in line[1]


def test_orphan_mode_is_held_back_too() -> None:
    net = _dead(SyncOptions(orphan_stratum=8))
    net.run(2000)
    assert not net.state().synchronized
    assert net.logs("the orphan mode stays off")


def test_servers_configured_but_none_resolved_is_not_standalone() -> None:
    # the daemon passes local_standalone=False whenever 'server'/'pool' lines exist
    net = Net([], SyncOptions(local=LOCAL, local_standalone=False))
    net.run(600)
    assert not net.state().synchronized


def test_standalone_local_clock_serves_at_once() -> None:
    net = Net([], SyncOptions(local=LOCAL))
    assert net.state().synchronized and net.state().stratum == 11


def test_cold_start_allowed_serves_after_orphanwait() -> None:
    net = _dead(SyncOptions(local=LOCAL, fallback_cold_start=True))
    net.run(310)
    assert net.state().synchronized and net.state().stratum == 11


def test_vouched_clock_serves_after_orphanwait() -> None:
    net = _dead(SyncOptions(local=LOCAL, clock_vouched=True))
    net.run(310)
    assert net.state().synchronized and net.state().stratum == 11


def test_synchronized_once_then_lost_the_fallback_takes_over() -> None:
    servers = three()
    # a small maxdist so holdover ends within the run (root dispersion grows 15 us/s)
    net = Net(servers, SyncOptions(local=LOCAL, maxdist_ns=20_000_000))
    net.run(300)
    assert net.state().stratum == 2
    assert net.engine.sysvars.armed
    for srv in servers:
        srv.answering = False
    net.run(3000)
    state = net.state()
    assert state.synchronized and state.stratum == 11
    assert net.logs("serving from the local clock")


def test_activate_distance_not_reached_keeps_it_off() -> None:
    # chrony's 'local activate D': a sync with root distance >= D does not arm it
    servers = three()
    opts = SyncOptions(local=LOCAL, fallback_activate_ns=1000, maxdist_ns=20_000_000)  # 1 us
    net = Net(servers, opts)
    net.run(300)
    assert net.state().stratum == 2
    assert not net.engine.sysvars.armed
    for srv in servers:
        srv.answering = False
    net.run(3000)
    assert not net.state().synchronized
    assert net.logs("root distance below")


def test_activate_distance_reached_arms_it() -> None:
    servers = three()
    net = Net(servers, SyncOptions(local=LOCAL, fallback_activate_ns=500_000_000))
    net.run(300)
    assert net.engine.sysvars.armed


T = 1_750_000_000 * NS


def test_judge_clock_without_a_file_judges_nothing() -> None:
    v = judge_clock(T, None, panic_ns=1000 * NS)
    assert v.problem is None and not v.vouched


def test_judge_clock_recent_and_consistent_vouches() -> None:
    assert judge_clock(T + 3600 * NS, T, panic_ns=1000 * NS).vouched
    assert judge_clock(T - 999 * NS, T, panic_ns=1000 * NS).problem is None
    old = judge_clock(T + RECENT_NS + 1, T, panic_ns=1000 * NS)
    assert old.problem is None and not old.vouched


def test_judge_clock_refuses_a_clock_from_the_past() -> None:
    # the RTC lost power: 1986 against a clock known good in 2025
    v = judge_clock(505_000_000 * NS, T, panic_ns=1000 * NS)
    assert v.problem == "behind" and not v.vouched and v.delta_ns < 0
    assert judge_clock(T - 1001 * NS, T, panic_ns=1000 * NS).problem == "behind"
    # tinker panic 0 (off): the default 1000 s still bounds it
    assert judge_clock(T - 1001 * NS, T, panic_ns=0).problem == "behind"


def test_judge_clock_refuses_a_clock_years_ahead() -> None:
    assert judge_clock(T + MAX_AHEAD_NS + 1, T, panic_ns=1000 * NS).problem == "ahead"
    assert judge_clock(T + MAX_AHEAD_NS, T, panic_ns=1000 * NS).problem is None
