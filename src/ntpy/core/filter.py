"""The filter stage: what a new sample is before it enters the regression -- ordinary,
a lone outlier held back, or the second sample of a jump in the source's time.

Why a stage of its own: the regression in ``sourcestats`` fits a line through many samples,
so one wild sample (a delay spike, a server hiccup) would tilt it, and a real jump (the
server was stepped, a route changed) seen as a steep line would become a huge frequency.
The rule, like chrony's sample filter in spirit: a sample more than ``JUMP_Z2`` predicted
variances *and* ``JUMP_MIN_NS`` away from the prediction is held back; if the next one
agrees with it, the source's time jumped and the fit restarts from the held sample;
otherwise it was an outlier and stays out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

JUMP_Z2 = 36.0
"""A sample more than 6 predicted standard deviations off is a jump, not noise ..."""
JUMP_MIN_NS = 1_000_000
"""... provided it is also more than 1 ms off (tiny predicted spreads are not trusted)."""


@dataclass(slots=True)
class Measurement:
    """One accepted sample: when (cooked clock, midpoint of T1..T4) and what it measured."""

    time_ns: int
    offset_ns: int
    """Source time minus ours."""
    delay_ns: int
    dispersion_ns: int
    root_delay_ns: int
    root_dispersion_ns: int
    stratum: int
    leap: int


class Verdict(enum.Enum):
    ACCEPT = "accept"
    """Within the prediction (or no prediction yet): fit it."""
    HOLD = "hold"
    """Wild and unconfirmed: keep it out of the fit until the next sample."""
    JUMP = "jump"
    """Wild, and the held sample agrees: restart the fit from the held one."""


def is_wild(innovation_ns: float, predicted_var: float) -> bool:
    """Too far from the prediction to be noise."""
    return abs(innovation_ns) > JUMP_MIN_NS and innovation_ns * innovation_ns > (
        JUMP_Z2 * predicted_var
    )


class JumpFilter:
    """Holds at most one wild sample and counts outliers and jumps."""

    def __init__(self) -> None:
        self.held: Measurement | None = None
        """A wild sample kept out of the fit until the next one confirms or refutes it."""
        self.outliers = 0
        self.jumps = 0
        """Times the fit was restarted because the source's time jumped."""

    def screen(
        self, m: Measurement, innovation_ns: float | None, predicted_var: float
    ) -> tuple[Verdict, Measurement | None]:
        """The verdict on ``m`` given its innovation against the current fit (None when
        there is no fit to predict from), and for JUMP the held sample to restart from.
        Any earlier held sample is released by every call."""
        held, self.held = self.held, None
        if innovation_ns is None or not is_wild(innovation_ns, predicted_var):
            return Verdict.ACCEPT, None
        if held is None or abs(m.offset_ns - held.offset_ns) > abs(innovation_ns) / 2:
            # One wild sample is an outlier until a second one agrees with it.
            self.held = m
            self.outliers += 1
            return Verdict.HOLD, None
        # Two in a row agree: the source's time jumped. A line through samples on both
        # sides would turn the jump into a huge frequency, so the fit starts again.
        self.jumps += 1
        return Verdict.JUMP, held
