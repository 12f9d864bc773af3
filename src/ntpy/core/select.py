"""Source selection: which upstream sources to believe, which to follow, and what they say.

A pure function of the candidates' current statistics (RFC 5905 section 11.2), called by the
sync engine after every new sample. Four steps:

1. **Intersection** (Marzullo, as RFC 5905 11.2.1 and ntpd 4.2.8 run it): each candidate
   claims the true offset lies in ``[offset - distance, offset + distance]``. Find the
   smallest number ``f`` of falsetickers (``2f < n``) for which some point lies in ``n - f``
   intervals; ``[low, high]`` spans the points that do. Candidates whose interval meets
   ``[low, high]`` are truechimers. RFC 5905 also demands that a truechimer's *midpoint*
   lie in the intersection; ntpd dropped that test because it declares two sources that
   overlap but are offset-biased (asymmetric paths) "no majority", and so do we. The
   midpoint is protected differently: the combined offset is clamped into ``[low, high]``.
2. **Cluster** (RFC 5905 11.2.2): while more than ``minclock`` survive, drop the survivor
   whose selection jitter (RMS offset difference to the others) is largest, unless that
   jitter is no larger than the smallest peer jitter (further pruning cannot help).
3. **System peer**: a ``prefer`` survivor, else the previous system peer if still a
   survivor (hysteresis against clock-hopping, as ntpd), else the survivor of best merit
   (``stratum * MAXDIST + distance``).
   Opt-in ``peer_covers_majority``: only a survivor whose interval contains every point
   that a strict majority of all candidates agrees on (the majority hull) may be system
   peer. Why one might: the minimal-``f`` intersection assumes the fewest liars, so a
   colluding minority that agrees with a few wide honest intervals can win it; whichever
   strict majority is honest, the truth lies in the hull, so a source covering it is never
   a liar. One always exists (any two majorities share a source) and clustering never
   drops the last one. Why it is off by default: with equally wide intervals only the
   source with the median offset covers the hull, so the system peer (and the stratum,
   refid and root distance we serve) would follow measurement noise from source to source.
   The clock itself is safe either way: the combined offset is clamped into ``[low, high]``.
4. **Combine** (RFC 5905 11.2.3, in ``combine.py``): offset weighted by ``1/distance`` over
   the survivors, jitter ``sqrt(selection_jitter**2 + peer_jitter**2)`` about the system
   peer; the leap indicator is what a strict majority of the survivors announces, else 0.

Arithmetic is exact (integers and ``Fraction``) and candidates are processed in id order,
so the result does not depend on input order or float rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ntpy.core.combine import combine, leap_vote
from ntpy.core.timestamps import NS_PER_S

MAXDIST_NS = NS_PER_S
"""RFC 5905 MAXDIST (1 s): the merit stratum weight, so a lower stratum always ranks first
among sources the caller considers close enough to use."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One selectable upstream source, as the engine sees it right now."""

    id: int
    offset_ns: int
    """Source time minus ours."""
    root_distance_ns: int
    """Synchronization distance lambda; the correctness interval is offset +/- this."""
    jitter_ns: int
    """The source's own (peer) jitter."""
    stratum: int
    leap: int
    """0..2; unsynchronized sources (3) are never candidates."""
    prefer: bool = False

    def __post_init__(self) -> None:
        for name in ("id", "offset_ns", "root_distance_ns", "jitter_ns", "stratum", "leap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Candidate.{name} must be an int, got {value!r}")
        if not isinstance(self.prefer, bool):
            raise TypeError(f"Candidate.prefer must be a bool, got {self.prefer!r}")
        if self.root_distance_ns < 0:
            raise ValueError(f"Candidate.root_distance_ns must be >= 0: {self.root_distance_ns}")
        if self.jitter_ns < 0:
            raise ValueError(f"Candidate.jitter_ns must be >= 0: {self.jitter_ns}")
        if not 0 <= self.stratum <= 15:
            raise ValueError(f"Candidate.stratum must be 0..15: {self.stratum}")
        if not 0 <= self.leap <= 2:
            raise ValueError(f"Candidate.leap must be 0..2 (3 is never selectable): {self.leap}")

    @property
    def low_ns(self) -> int:
        return self.offset_ns - self.root_distance_ns

    @property
    def high_ns(self) -> int:
        return self.offset_ns + self.root_distance_ns


_Predicate = Callable[[Candidate], bool]


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of one selection run; every candidate id is in exactly one of
    ``falsetickers``, ``outliers``, ``excess`` and ``survivors``."""

    truechimers: tuple[int, ...]
    """Ids whose interval meets the majority intersection (sorted by id)."""
    falsetickers: tuple[int, ...]
    """Ids that are not truechimers (sorted by id): tally 'x'."""
    survivors: tuple[int, ...]
    """Truechimers kept by clustering and combined, system peer first, then by merit."""
    outliers: tuple[int, ...]
    """Truechimers dropped by clustering (sorted by id): tally '-'."""
    excess: tuple[int, ...]
    """Clustering survivors beyond ``maxclock``, not combined (by merit): tally '#'."""
    system_peer: int | None
    offset_ns: int
    """Combined offset of the survivors (source time minus ours)."""
    jitter_ns: int
    """System jitter: selection jitter about the system peer combined with its peer jitter."""
    leap: int
    """Leap indicator announced by a strict majority of the survivors, else 0."""
    root_distance_ns: int
    """The system peer's distance."""


def select_sources(
    candidates: Sequence[Candidate],
    *,
    minsane: int = 1,
    minclock: int = 3,
    maxclock: int = 10,
    previous_peer: int | None = None,
    peer_covers_majority: bool = False,
) -> Selection | None:
    """Run intersection, clustering and combining over ``candidates``.

    Returns None (do not discipline the clock) when no strict majority of the candidates
    agrees on any point, or when fewer than ``minsane`` truechimers remain.
    ``peer_covers_majority=True`` lets only a source that covers the majority hull be the
    system peer (see the module docstring); the combined offset is the same either way.
    Raises ``TypeError``/``ValueError`` on misuse (duplicate ids, bad parameters).
    """
    cands = _checked(candidates, minsane, minclock, maxclock)
    if not cands:
        return None
    found = _intersection(cands)
    if found is None:
        return None
    (low, high), (hull_low, hull_high) = found

    def eligible(c: Candidate) -> bool:
        return not peer_covers_majority or (c.low_ns <= hull_low and c.high_ns >= hull_high)

    truechimers = [c for c in cands if c.low_ns <= high and c.high_ns >= low]
    if len(truechimers) < minsane:
        return None
    kept, outliers = _cluster(truechimers, max(1, minclock, minsane), eligible)
    peer = _system_peer(kept, previous_peer, eligible)
    ranked = [peer, *(c for c in kept if c is not peer)]
    survivors, excess = ranked[:maxclock], ranked[maxclock:]
    offset, jitter = combine(survivors, peer)
    true_ids = {c.id for c in truechimers}
    return Selection(
        truechimers=tuple(sorted(true_ids)),
        falsetickers=tuple(c.id for c in cands if c.id not in true_ids),
        survivors=tuple(c.id for c in survivors),
        outliers=tuple(sorted(c.id for c in outliers)),
        excess=tuple(c.id for c in excess),
        system_peer=peer.id,
        offset_ns=min(max(offset, low), high),
        jitter_ns=jitter,
        leap=leap_vote(survivors),
        root_distance_ns=peer.root_distance_ns,
    )


def _checked(
    candidates: Sequence[Candidate], minsane: int, minclock: int, maxclock: int
) -> list[Candidate]:
    """Validate the call and return the candidates in id order (the canonical order)."""
    for name, value, least in (
        ("minsane", minsane, 0),
        ("minclock", minclock, 1),
        ("maxclock", maxclock, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}: {value!r}")
    cands = list(candidates)
    for c in cands:
        if not isinstance(c, Candidate):
            raise TypeError(f"expected Candidate, got {type(c).__name__}")
    cands.sort(key=lambda c: c.id)
    for a, b in itertools.pairwise(cands):
        if a.id == b.id:
            raise ValueError(f"duplicate candidate id {a.id}")
    return cands


def _intersection(cands: Sequence[Candidate]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The minimal-falseticker intersection ``[low, high]`` and the majority hull.

    The deepest overlap ``depth`` gives the fewest falsetickers ``f = n - depth``; RFC 5905
    requires ``f < n/2``. ``low``/``high`` are the lowest/highest points covered by ``depth``
    intervals (equivalent to the RFC's scan with a growing ``f``); the hull is the same with
    a bare majority. Intervals are closed, so touching intervals agree on the shared point.
    """
    n = len(cands)
    depth = _max_depth(cands)
    majority = n // 2 + 1
    if depth < majority:
        return None
    return _bounds(cands, depth), _bounds(cands, majority)


def _endpoints(cands: Iterable[Candidate]) -> list[tuple[int, int]]:
    """(value, kind) with kind 0 = lower end, 1 = upper end; sorting puts lows first on ties."""
    points = [(c.low_ns, 0) for c in cands] + [(c.high_ns, 1) for c in cands]
    points.sort()
    return points


def _max_depth(cands: Sequence[Candidate]) -> int:
    depth = best = 0
    for _, kind in _endpoints(cands):
        depth += 1 if kind == 0 else -1
        best = max(best, depth)
    return best


def _bounds(cands: Sequence[Candidate], need: int) -> tuple[int, int]:
    """Lowest and highest points lying in at least ``need`` intervals (some must exist)."""
    points = _endpoints(cands)
    count, low = 0, None
    for value, kind in points:
        count += 1 if kind == 0 else -1
        if count >= need:
            low = value
            break
    count, high = 0, None
    for value, kind in reversed(points):  # highs come first on ties when walking down
        count += 1 if kind == 1 else -1
        if count >= need:
            high = value
            break
    if low is None or high is None:  # pragma: no cover - callers pass need <= max depth
        raise AssertionError("no point reaches the requested depth")
    return low, high


def _merit(c: Candidate) -> tuple[int, int]:
    return c.stratum * MAXDIST_NS + c.root_distance_ns, c.id


def _cluster(
    truechimers: Sequence[Candidate], floor: int, eligible: _Predicate
) -> tuple[list[Candidate], list[Candidate]]:
    """RFC 5905 clustering: prune the survivor with the largest selection jitter.

    Stops at ``floor`` survivors or when the worst selection jitter does not exceed the
    smallest peer jitter. ``prefer`` sources are immune (the operator vouched for them, as
    in ntpd), and so is the last survivor eligible to be system peer. Comparisons use
    squared integer sums, so they are exact.
    """
    kept = sorted(truechimers, key=_merit)
    dropped: list[Candidate] = []
    while len(kept) > floor:
        k = len(kept)
        min_jitter = min(c.jitter_ns for c in kept)
        n_eligible = sum(1 for c in kept if eligible(c))
        worst, worst_sq = -1, -1
        for i, c in enumerate(kept):
            if c.prefer or (n_eligible == 1 and eligible(c)):
                continue
            sq = sum((c.offset_ns - o.offset_ns) ** 2 for o in kept)
            if sq >= worst_sq:  # ties: drop the one of worse merit (later in the list)
                worst, worst_sq = i, sq
        # selection jitter sqrt(sq / (k - 1)) > min_jitter, without the square root
        if worst < 0 or worst_sq <= min_jitter * min_jitter * (k - 1):
            break
        dropped.append(kept.pop(worst))
    return kept, dropped


def _system_peer(
    kept: Sequence[Candidate], previous: int | None, eligible: _Predicate
) -> Candidate:
    """``prefer`` first, then the incumbent if still eligible, then best merit."""
    for c in kept:
        if c.prefer:
            return c
    allowed = [c for c in kept if eligible(c)] or list(kept)  # never empty: see _cluster
    for c in allowed:
        if c.id == previous:
            return c
    return allowed[0]
