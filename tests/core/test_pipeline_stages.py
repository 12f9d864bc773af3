"""Unit tests for the pipeline stages split out of the engine: filter, combine, selection,
discipline, system variables, pool replacement, and the ``SourceState`` words.

The engine tests (``test_engine.py``) drive all of them together through packets; these
check each stage's own rule with hand-made inputs.
"""

from __future__ import annotations

import json

import pytest

from ntpy.core import pool
from ntpy.core.actions import Action, LogEvent, Panic, ReplaceSource, SetFrequency, SlewClock
from ntpy.core.combine import combine, leap_vote
from ntpy.core.discipline import MAX_FREQ_PPB, PANIC, SLEW, Discipline
from ntpy.core.filter import JUMP_MIN_NS, JumpFilter, Measurement, Verdict, is_wild
from ntpy.core.options import SyncOptions
from ntpy.core.select import Candidate, Selection
from ntpy.core.selection import Selector, root_distance
from ntpy.core.source import Source, SourceConfig, label
from ntpy.core.status import SourceState, SyncReason
from ntpy.core.system import STRATUM_UNSYNC, LocalReference
from ntpy.core.sysvars import REFID_LOOPBACK, SystemVariables
from ntpy.core.timestamps import NS_PER_S

T0 = 1_700_000_000 * NS_PER_S


def meas(
    offset_ns: int, t_ns: int = T0, delay_ns: int = 1_000_000, stratum: int = 1
) -> Measurement:
    return Measurement(
        time_ns=t_ns,
        offset_ns=offset_ns,
        delay_ns=delay_ns,
        dispersion_ns=1_000,
        root_delay_ns=2_000,
        root_dispersion_ns=3_000,
        stratum=stratum,
        leap=0,
    )


def source(sid: int = 1, pool_name: str | None = None) -> Source:
    cfg = SourceConfig(name=f"192.0.2.{sid}", address=(f"192.0.2.{sid}", 123), pool=pool_name)
    return Source(sid, cfg, 1_000, 0, 0.0)


def fed(src: Source, offset_ns: int, n: int = 4) -> Source:
    """A source that answered: reachable, with ``n`` samples of ``offset_ns``, 1 s apart."""
    src.reach = 1
    for i in range(n):
        src.stats.add(meas(offset_ns, T0 + i * NS_PER_S))
    return src


# ----------------------------------------------------------------- SourceState


def test_source_state_words_are_the_old_strings() -> None:
    assert SourceState.TOO_FAR == "too far"
    assert json.dumps({"state": SourceState.NO_MAJORITY}) == '{"state": "no majority"}'
    assert f"{SourceState.KOD}" == "kod"
    # Selection marks every candidate with its failure reason: the words must match.
    for reason in (SyncReason.NO_MAJORITY, SyncReason.TOO_FEW):
        assert SourceState(str(reason)) == reason.value


# ----------------------------------------------------------------- filter


def test_filter_accepts_without_prediction_and_within_it() -> None:
    f = JumpFilter()
    assert f.screen(meas(5 * JUMP_MIN_NS), None, 1.0) == (Verdict.ACCEPT, None)
    assert f.screen(meas(0), 100.0, 1e6) == (Verdict.ACCEPT, None)
    assert not is_wild(JUMP_MIN_NS, 1.0)  # small in absolute terms: never wild
    assert is_wild(2 * JUMP_MIN_NS, 1.0)


def test_filter_holds_a_lone_outlier_and_confirms_a_jump() -> None:
    f = JumpFilter()
    wild = meas(10 * JUMP_MIN_NS)
    assert f.screen(wild, 10.0 * JUMP_MIN_NS, 1.0) == (Verdict.HOLD, None)
    assert f.held is wild and f.outliers == 1
    again = meas(10 * JUMP_MIN_NS + 1000, T0 + NS_PER_S)
    assert f.screen(again, 10.0 * JUMP_MIN_NS, 1.0) == (Verdict.JUMP, wild)
    assert f.held is None and f.jumps == 1


def test_filter_refutes_an_outlier_that_the_next_sample_contradicts() -> None:
    f = JumpFilter()
    f.screen(meas(10 * JUMP_MIN_NS), 10.0 * JUMP_MIN_NS, 1.0)
    assert f.screen(meas(0), 0.0, 1.0) == (Verdict.ACCEPT, None)
    assert f.held is None and f.jumps == 0
    # A second wild sample on the other side is a new outlier, not a jump.
    f.screen(meas(10 * JUMP_MIN_NS), 10.0 * JUMP_MIN_NS, 1.0)
    assert f.screen(meas(-10 * JUMP_MIN_NS), -10.0 * JUMP_MIN_NS, 1.0)[0] is Verdict.HOLD


# ----------------------------------------------------------------- combine


def cand(cid: int, offset: int, dist: int, jitter: int = 1, leap: int = 0) -> Candidate:
    return Candidate(cid, offset, dist, jitter, 1, leap)


def test_combine_weights_by_inverse_distance() -> None:
    a, b = cand(1, 0, 1_000), cand(2, 3_000, 2_000)
    offset, jitter = combine([a, b], a)
    assert offset == 1_000  # weights 2:1
    # selection jitter about a: sqrt((2*0 + 1*3000^2) / 3), combined with a's jitter 1
    assert jitter == int((3_000**2 / 3 + 1) ** 0.5)
    assert combine([a], a) == (0, 1)
    assert combine([cand(1, 7, 0)], cand(1, 7, 0))[0] == 7  # zero distance: floored at 1 ns


def test_leap_vote_needs_a_strict_majority() -> None:
    assert leap_vote([cand(1, 0, 1, leap=1), cand(2, 0, 1, leap=1), cand(3, 0, 1)]) == 1
    assert leap_vote([cand(1, 0, 1, leap=1), cand(2, 0, 1)]) == 0
    assert leap_vote([cand(1, 0, 1, leap=2)]) == 2


# ----------------------------------------------------------------- selection


def test_selection_candidates_and_tallies() -> None:
    opts = SyncOptions(maxdist_ns=NS_PER_S, minclock=1)
    srcs = {i: fed(source(i), 1_000 * i) for i in (1, 2, 3)}
    srcs[4] = fed(source(4), 0)
    srcs[4].stats.samples[-1].root_dispersion_ns = 2 * NS_PER_S  # beyond maxdist
    srcs[5] = source(5)  # never answered
    sel_stage = Selector(opts)
    actions: list[Action] = []
    now = T0 + 4 * NS_PER_S
    assert root_distance(srcs[1], now) < NS_PER_S
    sel = sel_stage.run(srcs, None, False, 7, now, actions)
    assert sel is not None and sel.system_peer is not None
    assert sel_stage.has_selection() and sel_stage.last_selectable_mono == 7
    assert srcs[4].state is SourceState.TOO_FAR and srcs[4].tally == " "
    assert srcs[5].state is SourceState.INIT
    peer = srcs[sel.system_peer]
    assert (peer.tally, peer.state) == ("+", SourceState.SELECTED)  # not following yet
    sel = sel_stage.run(srcs, sel.system_peer, True, 8, now, actions)
    assert sel is not None and sel.system_peer is not None
    assert (srcs[sel.system_peer].tally, srcs[sel.system_peer].state) == ("*", SourceState.SYNC)


def test_selection_without_majority_marks_every_candidate() -> None:
    opts = SyncOptions(mindist_ns=1)
    srcs = {1: fed(source(1), 0), 2: fed(source(2), NS_PER_S // 2)}
    stage = Selector(opts)
    assert stage.run(srcs, None, False, 0, T0 + 4 * NS_PER_S, []) is None
    assert stage.outcome.failure is SyncReason.NO_MAJORITY
    assert {(s.tally, s.state) for s in srcs.values()} == {("x", SourceState.NO_MAJORITY)}


# ----------------------------------------------------------------- discipline


def selection(offset: int, survivors: tuple[int, ...] = (1,)) -> Selection:
    return Selection(survivors, (), survivors, (), (), survivors[0], offset, 10, 0, 1_000)


def test_discipline_slews_and_counts_updates() -> None:
    d = Discipline(SyncOptions(initial_frequency_ppb=900_000.0))
    actions: list[Action] = []
    d.start(actions)
    assert actions == [SetFrequency(MAX_FREQ_PPB)]  # clamped
    srcs = {1: fed(source(1), 5_000)}
    assert d.update(selection(5_000), srcs, 6, 0, T0, actions) == SLEW
    assert SlewClock(5_000) in actions
    assert d.updates == 1 and d.offset_ns == 5_000


def test_discipline_panics_on_the_first_update_and_holds_over_later() -> None:
    opts = SyncOptions(panic_threshold_ns=NS_PER_S)
    d = Discipline(opts)
    srcs = {1: fed(source(1), 2 * NS_PER_S)}
    actions: list[Action] = []
    assert d.update(selection(2 * NS_PER_S), srcs, 6, 0, T0, actions) == PANIC
    assert d.panicked and any(isinstance(a, Panic) for a in actions)

    d = Discipline(opts)
    d.updates = 1  # the clock was set before
    actions = []
    assert d.update(selection(2 * NS_PER_S), srcs, 6, 0, T0 + 3 * NS_PER_S, actions) == PANIC
    assert not d.panicked
    assert srcs[1].state is SourceState.PANIC and srcs[1].panic_offset_ns is not None
    assert any(isinstance(a, LogEvent) and "holding over" in a.message for a in actions)


# ----------------------------------------------------------------- system variables


def test_sysvars_follow_the_peer_then_age_out() -> None:
    opts = SyncOptions(maxdist_ns=NS_PER_S)
    sv = SystemVariables(opts)
    assert not sv.served(T0).synchronized
    peer = fed(source(1), 0)
    actions: list[Action] = []
    sv.update(selection(0), peer, 0, T0, actions)
    state = sv.served(T0)
    assert state.synchronized and state.stratum == 2 and state.refid == 0xC0000201
    assert [a.message for a in actions if isinstance(a, LogEvent)] == [
        f"synchronized to {label(peer)} at stratum 2"
    ]
    # PHI (15 ppm) needs ~1e5 s to add 1 s of root dispersion.
    later = T0 + 100_000 * NS_PER_S
    sv.housekeeping(True, 0, False, 0, later, actions)
    assert not sv.synced and not sv.served(later).synchronized
    assert sv.ever_synced


def test_sysvars_fall_back_to_orphan_mode_after_orphanwait() -> None:
    opts = SyncOptions(orphan_stratum=10, orphanwait_ns=300 * NS_PER_S, fallback_cold_start=True)
    sv = SystemVariables(opts)
    fallback = sv.fallback()
    assert fallback == LocalReference(10, REFID_LOOPBACK)
    actions: list[Action] = []
    sv.housekeeping(True, 0, False, 299 * NS_PER_S, T0, actions)
    assert not sv.fallback_active
    sv.housekeeping(True, 0, False, 300 * NS_PER_S, T0, actions)
    assert sv.fallback_active and sv.served(T0).stratum == 10
    assert SystemVariables(SyncOptions()).fallback() is None
    assert SystemVariables(SyncOptions()).served(T0).stratum == STRATUM_UNSYNC


# ----------------------------------------------------------------- pool


def test_pool_replaces_unreachable_silent_and_refusing_members() -> None:
    actions: list[Action] = []
    src = source(1, "pool.example")
    pool.after_poll(src, True, actions)  # was reachable, reach now 0
    assert actions == [ReplaceSource(1, "pool.example", "unreachable")]

    actions = []
    silent = source(2, "pool.example")
    silent.polls_unanswered = pool.POOL_SILENT_POLLS
    pool.after_poll(silent, False, actions)
    pool.after_poll(silent, False, actions)  # asked once only
    assert actions == [ReplaceSource(2, "pool.example", "never answered")]
    assert silent.state is SourceState.UNREACHABLE

    actions = []
    server = source(3)
    pool.after_poll(server, True, actions)
    server.kod = "DENY"
    pool.after_refusal(server, "kod_DENY", actions)
    assert actions == []  # configured servers are never replaced
    member = source(4, "pool.example")
    member.kod = "DENY"
    pool.after_refusal(member, "kod_DENY", actions)
    assert actions == [ReplaceSource(4, "pool.example", "kod_DENY")]


@pytest.mark.parametrize("is_pool", [True, False])
def test_pool_replaces_a_persistent_falseticker(is_pool: bool) -> None:
    src = source(1, "pool.example" if is_pool else None)
    false_sel = Selection((), (1,), (), (), (), None, 0, 0, 0, 0)
    actions: list[Action] = []
    for _ in range(pool.FALSETICKER_REPLACE):
        pool.replace_falsetickers([src], false_sel, actions)
    replaced = [a for a in actions if isinstance(a, ReplaceSource)]
    assert replaced == ([ReplaceSource(1, "pool.example", "falseticker")] if is_pool else [])
    pool.replace_falsetickers([src], None, actions)
    assert src.falseticker_count == 0
