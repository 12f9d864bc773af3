"""The combining stage: merge the survivors of selection into one offset, one jitter and
one leap indicator (RFC 5905 11.2.3; chrony's ``combine_sources``).

Apart from ``select.py`` because it answers a different question: selection decides whom to
believe, combining how much each believed source counts. Exact arithmetic (``Fraction``),
so the result does not depend on the survivors' order or float rounding. It takes any
values with the four fields it reads (``select.Candidate`` has them), so it needs nothing
from selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Protocol


class Survivor(Protocol):
    """What combining reads from a selected source."""

    @property
    def offset_ns(self) -> int: ...

    @property
    def root_distance_ns(self) -> int: ...

    @property
    def jitter_ns(self) -> int: ...

    @property
    def leap(self) -> int: ...


def combine(survivors: Sequence[Survivor], peer: Survivor) -> tuple[int, int]:
    """(offset, jitter): offsets weighted by 1/distance; jitter about the system ``peer``,
    ``sqrt(selection_jitter**2 + peer_jitter**2)``, in integer ns.

    Distance is floored at 1 ns so a zero distance weighs heavily instead of dividing by 0.
    """
    weight_sum = Fraction(0)
    offset_sum = Fraction(0)
    spread_sum = Fraction(0)
    for c in survivors:
        w = Fraction(1, max(c.root_distance_ns, 1))
        weight_sum += w
        offset_sum += w * c.offset_ns
        spread_sum += w * (c.offset_ns - peer.offset_ns) ** 2
    offset = round(offset_sum / weight_sum)
    selection_sq = math.floor(spread_sum / weight_sum)
    jitter = math.isqrt(selection_sq + peer.jitter_ns * peer.jitter_ns)
    return offset, jitter


def leap_vote(survivors: Sequence[Survivor]) -> int:
    """The leap indicator a strict majority announces; otherwise (ties included) 0."""
    for leap in (1, 2):
        if 2 * sum(1 for c in survivors if c.leap == leap) > len(survivors):
            return leap
    return 0
