"""A simulated crystal: phase offset + frequency error with a random-walk wander.

The simulated client (and any server that is not a perfect reference) reads a "raw"
clock that drifts from true time ``T``::

    raw(T) = T + offset0 + integral of freq_error(t) dt

``freq_error`` is a random walk: at every ``step_ns`` (1 s) of true time it changes by
``normal(0, wander)``, where ``wander`` is in ppb per step -- the "wander 1e-9" of
chrony's clknetsim tests, whose frequency expression ``(sum (* 1e-9 (normal)))`` is
evaluated once a second. Between steps the frequency is constant, so the phase is
piecewise linear.

Why integers: the phase is kept in 1e-12 ns units and the frequency in milli-ppb, and one
milli-ppb over one ns is exactly one such unit (the same trick as ``VirtualClock``). The
phase is therefore an exact integer sum no matter how often, or how rarely, the clock is
read -- reading it every second or once at the end gives the same answer to the ns, so the
trace cannot be polluted by float accumulation over days of simulated time.

The simulation only moves forward, so the oscillator advances lazily and refuses to be
read in its past.
"""

from __future__ import annotations

import math
import random

from ntpy.core.timestamps import NS_PER_S

FINE_PER_NS = 10**12
"""Phase unit: 1e-12 ns. A frequency in milli-ppb is exactly this many units per ns."""
MPPB_PER_PPB = 1000


class Oscillator:
    """Lazily integrated random-walk oscillator over integer true time (ns)."""

    __slots__ = ("_freq_mppb", "_phase_fine", "_rng", "_seg_start", "_step_ns", "_wander_mppb")

    def __init__(
        self,
        *,
        start_ns: int,
        offset_ns: int = 0,
        freq_ppb: float = 0.0,
        wander_ppb: float = 0.0,
        rng: random.Random | None = None,
        step_ns: int = NS_PER_S,
    ) -> None:
        """``offset_ns``: raw minus true time at ``start_ns`` (positive: the clock is ahead).
        ``freq_ppb``: initial frequency error (positive: the clock runs fast).
        ``wander_ppb``: standard deviation of the frequency change per ``step_ns``."""
        if not isinstance(start_ns, int) or not isinstance(offset_ns, int):
            raise TypeError("start_ns and offset_ns must be int ns")
        if not math.isfinite(freq_ppb) or abs(freq_ppb) >= 1e9:
            raise ValueError(f"freq_ppb must be finite and below 1e9 in size, got {freq_ppb!r}")
        if not (math.isfinite(wander_ppb) and wander_ppb >= 0):
            raise ValueError(f"wander_ppb must be finite and >= 0, got {wander_ppb!r}")
        if not isinstance(step_ns, int) or step_ns <= 0:
            raise ValueError(f"step_ns must be a positive int, got {step_ns!r}")
        if wander_ppb > 0 and rng is None:
            raise ValueError("a wandering oscillator needs an rng")
        self._seg_start = start_ns
        self._phase_fine = offset_ns * FINE_PER_NS
        self._freq_mppb = round(freq_ppb * MPPB_PER_PPB)
        self._wander_mppb = wander_ppb * MPPB_PER_PPB
        self._rng = rng
        self._step_ns = step_ns

    def _advance(self, t_ns: int) -> None:
        """Integrate whole steps up to ``t_ns`` (the segment then contains ``t_ns``)."""
        start = self._seg_start
        if t_ns < start:
            raise ValueError(f"oscillator read at {t_ns}, before its current step at {start}")
        step = self._step_ns
        n = (t_ns - start) // step
        if n == 0:
            return
        if self._wander_mppb == 0.0 or self._rng is None:
            self._phase_fine += self._freq_mppb * step * n
            self._seg_start = start + step * n
            return
        freq = self._freq_mppb
        freq_sum = 0
        gauss = self._rng.gauss
        sigma = self._wander_mppb
        for _ in range(n):
            freq_sum += freq
            freq += round(gauss(0.0, sigma))
        self._phase_fine += freq_sum * step
        self._freq_mppb = freq
        self._seg_start = start + step * n

    def offset_ns(self, t_ns: int) -> int:
        """raw minus true time at true time ``t_ns`` (floored to the ns)."""
        self._advance(t_ns)
        return (self._phase_fine + self._freq_mppb * (t_ns - self._seg_start)) // FINE_PER_NS

    def read(self, t_ns: int) -> int:
        """The raw clock reading at true time ``t_ns``."""
        return t_ns + self.offset_ns(t_ns)

    def freq_ppb(self, t_ns: int) -> float:
        """The frequency error in force at ``t_ns``."""
        self._advance(t_ns)
        return self._freq_mppb / MPPB_PER_PPB
