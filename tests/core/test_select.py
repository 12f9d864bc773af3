"""Source selection (RFC 5905 section 11.2): intersection, clustering, system peer, combine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.select import Candidate, Selection, select_sources

US = 1_000
MS = 1_000_000
S = 1_000_000_000


def cand(
    id: int,
    offset_ms: float,
    dist_ms: float,
    *,
    jitter_ms: float = 0.1,
    stratum: int = 2,
    leap: int = 0,
    prefer: bool = False,
) -> Candidate:
    return Candidate(
        id=id,
        offset_ns=round(offset_ms * MS),
        root_distance_ns=round(dist_ms * MS),
        jitter_ns=round(jitter_ms * MS),
        stratum=stratum,
        leap=leap,
        prefer=prefer,
    )


def run(cands: list[Candidate], **kw: int | bool | None) -> Selection:
    sel = select_sources(cands, **kw)  # type: ignore[arg-type]
    assert sel is not None
    return sel


def check_partition(cands: list[Candidate], sel: Selection) -> None:
    ids = sorted(c.id for c in cands)
    assert sorted(sel.truechimers + sel.falsetickers) == ids
    assert sorted(sel.survivors + sel.outliers + sel.excess) == sorted(sel.truechimers)
    assert sel.system_peer is not None and sel.survivors[0] == sel.system_peer


# ------------------------------------------------------------------ intersection


def test_four_servers_one_off_by_an_hour() -> None:
    cands = [
        cand(1, 1.0, 20),
        cand(2, -2.0, 25),
        cand(3, 0.5, 15),
        cand(4, 3_600_000.0, 10, stratum=1),  # best merit, but an hour off
    ]
    sel = run(cands)
    check_partition(cands, sel)
    assert sel.falsetickers == (4,)
    assert sel.truechimers == (1, 2, 3)
    assert sel.system_peer == 3  # best merit among the truechimers
    assert 4 not in sel.survivors
    assert -2 * MS <= sel.offset_ns <= 1 * MS


def test_three_good_two_colluding_liars() -> None:
    cands = [
        cand(1, 0.2, 10),
        cand(2, -0.3, 12),
        cand(3, 0.1, 8),
        cand(4, 3_600_000.0, 5, stratum=1),
        cand(5, 3_600_001.0, 5, stratum=1),  # the liars agree with each other
    ]
    sel = run(cands)
    assert sel.falsetickers == (4, 5)
    assert sel.system_peer in (1, 2, 3)
    assert abs(sel.offset_ns) < MS


def test_two_disagreeing_sources_have_no_majority() -> None:
    assert select_sources([cand(1, 0, 10), cand(2, 100, 10)]) is None


def test_touching_intervals_agree_on_the_shared_point() -> None:
    sel = run([cand(1, 0, 10), cand(2, 20, 10)])
    assert sel.truechimers == (1, 2)
    assert sel.offset_ns == 10 * MS  # the only point both allow


def test_single_source_is_its_own_truechimer() -> None:
    c = cand(7, 12.5, 30, jitter_ms=0.4, leap=1)
    sel = run([c])
    assert sel.truechimers == sel.survivors == (7,)
    assert sel.system_peer == 7
    assert sel.offset_ns == c.offset_ns
    assert sel.jitter_ns == c.jitter_ns
    assert sel.root_distance_ns == c.root_distance_ns
    assert sel.leap == 1


def test_empty_input_means_no_sync() -> None:
    assert select_sources([]) is None


def test_overlapping_offset_biased_sources_are_both_truechimers() -> None:
    # Midpoints lie outside each other's interval (RFC 5905's midpoint test would say "no
    # majority"), yet both can be right anywhere in [-1, 1] ms.
    sel = run([cand(1, -9, 10), cand(2, 9, 10)])
    assert sel.truechimers == (1, 2)
    assert sel.offset_ns == 0
    # Unequal distances: the tighter one weighs more, and the result stays in [-1, 1].
    sel = run([cand(1, -9, 10), cand(2, 5, 6)])
    assert sel.truechimers == (1, 2)
    assert -MS <= sel.offset_ns <= MS
    assert sel.offset_ns == round((-9 * MS / 10 + 5 * MS / 6) / (1 / 10 + 1 / 6))


def test_combined_offset_is_clamped_into_the_intersection() -> None:
    # A wide source far to one side meets the intersection [-0.1, 0.1] ms at its edge; the
    # weighted mean (about 0.5 ms) would lie where the majority says the time is not.
    cands = [cand(1, 0.9, 1), cand(2, -0.9, 1), cand(3, 100, 100.1)]
    sel = run(cands)
    assert sel.truechimers == (1, 2, 3)
    assert sel.offset_ns == 100 * US


def test_colluding_minority_and_peer_covers_majority() -> None:
    # 4 honest sources contain 0; 3 colluding liars at [5, 15] ms with stratum 1 agree with
    # the two wide honest ones, so the deepest overlap is theirs ([5, 10] ms, 5 of 7).
    honest = [cand(1, 0, 10), cand(2, 0, 10), cand(3, 0, 1), cand(4, 0, 1)]
    liars = [cand(i, 10, 5, stratum=1) for i in (5, 6, 7)]
    sel = run(honest + liars)
    assert sel.falsetickers == (3, 4)  # Marzullo believes the larger clique...
    assert sel.system_peer in (5, 6, 7)  # ...and ntpd's merit then picks a liar
    assert 5 * MS <= sel.offset_ns <= 10 * MS  # still inside every honest-covered region
    sel = run(honest + liars, peer_covers_majority=True)
    assert sel.system_peer in (1, 2)  # the only ones every majority agrees with
    assert 5 * MS <= sel.offset_ns <= 10 * MS


# ------------------------------------------------------------------ clustering


def test_clustering_removes_the_noisy_source() -> None:
    cands = [
        cand(1, 0.00, 20, jitter_ms=0.05),
        cand(2, 0.02, 20, jitter_ms=0.05),
        cand(3, -0.01, 20, jitter_ms=0.05),
        cand(4, 8.0, 20, jitter_ms=0.05),  # a truechimer, but 8 ms from the rest
    ]
    sel = run(cands)
    assert sel.truechimers == (1, 2, 3, 4)
    assert sel.outliers == (4,)
    assert sorted(sel.survivors) == [1, 2, 3]
    assert abs(sel.offset_ns) < 50 * US


def test_clustering_keeps_minclock_survivors() -> None:
    cands = [cand(i, float(i * i), 100, jitter_ms=0.01) for i in range(1, 7)]
    sel = run(cands, minclock=4)
    assert len(sel.survivors) == 4
    assert len(sel.outliers) == 2
    assert run(cands, minclock=10).outliers == ()


def test_clustering_stops_when_peer_jitter_dominates() -> None:
    # Offsets spread by about 0.3 ms but each source jitters by 5 ms: pruning cannot help.
    cands = [cand(i, 0.1 * i, 20, jitter_ms=5) for i in range(1, 6)]
    assert run(cands).outliers == ()


def test_excess_survivors_beyond_maxclock() -> None:
    cands = [cand(i, 0, 10, stratum=i) for i in range(1, 6)]
    sel = run(cands, maxclock=2)
    assert sel.survivors == (1, 2)
    assert sel.excess == (3, 4, 5)
    check_partition(cands, sel)


# ------------------------------------------------------------------ system peer


def test_merit_prefers_lower_stratum_then_distance() -> None:
    cands = [cand(1, 0, 5, stratum=3), cand(2, 0, 50, stratum=1), cand(3, 0, 20, stratum=1)]
    assert run(cands).survivors == (3, 2, 1)


def test_peer_covers_majority_on_nested_intervals() -> None:
    # Nested intervals around 0: a bare majority (3 of 5) vouches for [-13, 13] ms, so only
    # sources 3, 4 and 5 can never be a colluding minority's pick.
    cands = [cand(i, 0, 10 + i) for i in range(1, 6)]
    assert run(cands).system_peer == 1  # default: best merit
    sel = run(cands, maxclock=2, peer_covers_majority=True)
    assert sel.system_peer == 3
    assert sel.survivors == (3, 1)
    assert sel.excess == (2, 4, 5)
    # Hysteresis only keeps an incumbent that is still eligible.
    assert run(cands, previous_peer=1, peer_covers_majority=True).system_peer == 3
    assert run(cands, previous_peer=4, peer_covers_majority=True).system_peer == 4


def test_prefer_wins_over_better_merit() -> None:
    cands = [cand(1, 0, 5, stratum=1), cand(2, 0.1, 30, stratum=3, prefer=True), cand(3, 0, 8)]
    sel = run(cands, previous_peer=1)
    assert sel.system_peer == 2
    assert sel.survivors[0] == 2


def test_prefer_falseticker_is_not_followed() -> None:
    cands = [cand(1, 0, 5), cand(2, 0, 8), cand(3, 500, 5, prefer=True)]
    sel = run(cands)
    assert sel.falsetickers == (3,)
    assert sel.system_peer == 1


def test_hysteresis_keeps_the_previous_peer() -> None:
    cands = [cand(1, 0, 5), cand(2, 0.1, 6), cand(3, -0.1, 7)]
    assert run(cands).system_peer == 1
    assert run(cands, previous_peer=3).system_peer == 3
    assert run(cands, previous_peer=3).survivors == (3, 1, 2)
    assert run(cands, previous_peer=99).system_peer == 1  # gone: best merit


def test_hysteresis_lets_go_of_a_falseticker() -> None:
    cands = [cand(1, 0, 5), cand(2, 0.1, 6), cand(3, 200, 5)]
    sel = run(cands, previous_peer=3)
    assert sel.falsetickers == (3,)
    assert sel.system_peer == 1


def test_combine_jitter_follows_rfc5905() -> None:
    a, b = cand(1, 0, 10, jitter_ms=0.3), cand(2, 2, 10, jitter_ms=0.5)
    sel = run([a, b])
    assert sel.system_peer == 1
    assert sel.offset_ns == 1 * MS
    # selection jitter about the peer: sqrt(((0)^2 + (2 ms)^2) / 2); peer jitter 0.3 ms
    expected = ((2 * MS) ** 2 / 2 + (0.3 * MS) ** 2) ** 0.5
    assert abs(sel.jitter_ns - expected) <= 1
    assert sel.root_distance_ns == 10 * MS


# ------------------------------------------------------------------ leap vote


@pytest.mark.parametrize(
    ("leaps", "expected"),
    [((1, 1, 0), 1), ((2, 2, 2), 2), ((1, 2, 0), 0), ((1, 1, 0, 0), 0), ((0, 0, 1), 0)],
)
def test_leap_is_a_majority_vote(leaps: tuple[int, ...], expected: int) -> None:
    cands = [cand(i, 0, 10, leap=leap) for i, leap in enumerate(leaps)]
    assert run(cands, minclock=len(leaps)).leap == expected


# ------------------------------------------------------------------ parameters and misuse


def test_minsane() -> None:
    assert select_sources([cand(1, 0, 10)], minsane=2) is None
    sel = run([cand(1, 0, 10), cand(2, 0, 10)], minsane=2)
    assert len(sel.survivors) == 2


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="duplicate candidate id 1"):
        select_sources([cand(1, 0, 10), cand(1, 0, 10)])
    with pytest.raises(ValueError, match="minclock"):
        select_sources([cand(1, 0, 10)], minclock=0)
    with pytest.raises(ValueError, match="maxclock"):
        select_sources([cand(1, 0, 10)], maxclock=0)
    with pytest.raises(TypeError, match="Candidate"):
        select_sources([(1, 0, 10)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="root_distance_ns"):
        Candidate(id=1, offset_ns=0, root_distance_ns=-1, jitter_ns=0, stratum=1, leap=0)
    with pytest.raises(ValueError, match="leap"):
        Candidate(id=1, offset_ns=0, root_distance_ns=1, jitter_ns=0, stratum=1, leap=3)
    with pytest.raises(ValueError, match="stratum"):
        Candidate(id=1, offset_ns=0, root_distance_ns=1, jitter_ns=0, stratum=16, leap=0)
    with pytest.raises(TypeError, match="offset_ns"):
        Candidate(id=1, offset_ns=0.5, root_distance_ns=1, jitter_ns=0, stratum=1, leap=0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ properties

BIG = 10**13  # about 2.8 hours in ns


@st.composite
def candidate_lists(draw: st.DrawFn, max_size: int = 12) -> list[Candidate]:
    scale = draw(st.sampled_from([10, BIG]))  # small: many overlaps and exact ties
    n = draw(st.integers(0, max_size))
    ids = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    return [
        Candidate(
            id=i,
            offset_ns=draw(st.integers(-scale, scale)),
            root_distance_ns=draw(st.integers(0, scale)),
            jitter_ns=draw(st.integers(0, scale)),
            stratum=draw(st.integers(0, 15)),
            leap=draw(st.integers(0, 2)),
            prefer=draw(st.booleans()),
        )
        for i in ids
    ]


def _knobs() -> st.SearchStrategy[dict[str, int | bool | None]]:
    return st.fixed_dictionaries(
        {
            "minsane": st.integers(0, 4),
            "minclock": st.integers(1, 6),
            "maxclock": st.integers(1, 12),
            "previous_peer": st.none() | st.integers(0, 1000),
            "peer_covers_majority": st.booleans(),
        }
    )


@settings(max_examples=250, deadline=None)
@given(candidate_lists(), _knobs())
def test_property_never_raises_and_partitions(
    cands: list[Candidate], knobs: dict[str, int | bool | None]
) -> None:
    sel = select_sources(cands, **knobs)  # type: ignore[arg-type]
    if sel is None:
        return
    check_partition(cands, sel)
    assert len(sel.survivors) <= knobs["maxclock"]  # type: ignore[operator]
    assert sel.leap in (0, 1, 2)
    assert sel.jitter_ns >= 0
    offsets = [c.offset_ns for c in cands if c.id in sel.survivors]
    lows = [c.low_ns for c in cands if c.id in sel.truechimers]
    highs = [c.high_ns for c in cands if c.id in sel.truechimers]
    assert min(lows) <= sel.offset_ns <= max(highs)
    assert offsets


@st.composite
def honest_majority(draw: st.DrawFn) -> tuple[list[Candidate], set[int]]:
    """A strict majority whose intervals contain the true offset 0, plus < n/2 liars.

    A small scale makes intervals overlap often; colluding liars share one interval.
    """
    scale = draw(st.sampled_from([20, 10**6, BIG]))
    n_honest = draw(st.integers(1, 7))
    n_liars = draw(st.integers(0, n_honest - 1))
    n = n_honest + n_liars
    ids = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n, unique=True))
    collude = draw(st.booleans())
    shared = (draw(st.integers(-3 * scale, 3 * scale)), draw(st.integers(0, scale)))
    out: list[Candidate] = []
    for k, i in enumerate(ids):
        if k < n_honest:
            dist = draw(st.integers(0, scale))
            offset = draw(st.integers(-dist, dist))
        elif collude:
            offset, dist = shared
        else:
            offset, dist = draw(st.integers(-3 * scale, 3 * scale)), draw(st.integers(0, scale))
        out.append(
            Candidate(
                id=i,
                offset_ns=offset,
                root_distance_ns=dist,
                jitter_ns=draw(st.integers(0, scale)),
                stratum=draw(st.integers(0, 15)),
                leap=draw(st.integers(0, 2)),
            )
        )
    return out, set(ids[:n_honest])


@settings(max_examples=300, deadline=None)
@given(honest_majority(), _knobs(), st.booleans())
def test_property_honest_majority_wins(
    case: tuple[list[Candidate], set[int]], knobs: dict[str, int | bool | None], covers: bool
) -> None:
    cands, honest = case
    knobs = {**knobs, "minsane": min(knobs["minsane"] or 0, 1)}  # one truechimer suffices
    knobs["peer_covers_majority"] = covers
    sel = select_sources(cands, **knobs)  # type: ignore[arg-type]
    assert sel is not None
    lo = min(c.low_ns for c in cands if c.id in honest)
    hi = max(c.high_ns for c in cands if c.id in honest)
    assert lo <= sel.offset_ns <= hi
    # A liar that no honest interval overlaps is always a falseticker.
    for c in cands:
        if c.id not in honest and (c.high_ns < lo or c.low_ns > hi):
            assert c.id in sel.falsetickers
    peer = next(c for c in cands if c.id == sel.system_peer)
    if covers:  # never a liar whose interval excludes 0, however the liars collude
        assert peer.low_ns <= 0 <= peer.high_ns


@settings(max_examples=200, deadline=None)
@given(candidate_lists(), _knobs(), st.randoms(use_true_random=False))
def test_property_input_order_does_not_matter(
    cands: list[Candidate], knobs: dict[str, int | bool | None], rnd: object
) -> None:
    shuffled = list(cands)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert select_sources(shuffled, **knobs) == select_sources(cands, **knobs)  # type: ignore[arg-type]
