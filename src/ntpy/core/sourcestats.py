"""Per-source sample statistics: a weighted linear regression of offset against time.

Why regression rather than ntpd's "minimum delay of the last 8": a line through many
samples estimates both the offset *now* and our frequency error relative to the source,
and averages their noise over minutes to hours instead of taking one lucky sample. This is
chrony's approach, and it is what lets one server with heavy jitter still give
tens-of-microseconds accuracy.

Three ideas make it work:
- Weights from the delay excess. With random queueing delay the offset error of a sample is
  at most half its delay above the minimum, roughly uniform, so its variance is about
  (delay - min_delay)^2 / 12. The quick samples dominate; the slow ones still count.
- A runs test picks how many of the newest samples to fit: when the residuals' signs form
  too few runs, the clock is wandering and old samples no longer fit a line, so they are
  dropped from the fit (they are kept for later, when the line may straighten again).
- Every correction of our clock (step, slew, frequency change) re-expresses the stored
  samples as if the new correction had always been in force (``apply_correction``), so the
  regression keeps fitting across clock updates instead of starting over.
Samples reach the fit through the filter stage (``filter.py``), which holds back a lone wild
sample and restarts the fit when two agree on a jump. All times are integer ns on the
engine's "cooked" clock; regression arithmetic is float on
times relative to the newest sample, which is ample precision for differences.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ntpy.core import wander
from ntpy.core.filter import JumpFilter, Measurement, Verdict
from ntpy.core.timestamps import NS_PER_S

__all__ = [
    "MAX_SAMPLES",
    "Q_MAX",
    "Q_MIN",
    "WANDER_Q",
    "Estimate",
    "Measurement",
    "SourceStats",
    "offset_at",
]

MAX_SAMPLES = 64
MIN_REGRESSION = 3
ADAPT_WANDER = True
SCALE_FLOOR = 1.0
Q_MIN = (0.1e-9) ** 2
Q_MAX = (100e-9) ** 2
NOISE_MIN = 0.5
NOISE_MAX = 100.0
WANDER_Q = (2e-9) ** 2
"""Assumed frequency random walk of our oscillator, (fraction/s)^2 per s: about 2 ppb per
sqrt(s), between a temperature-stable room (~1 ppb) and a busy machine (~10 ppb)."""
Q_LOW = WANDER_Q
"""The least wander learned: the assumed one is a floor, the history may only show more
(below it, a few hours of samples cannot tell wander from noise anyway)."""
QUICK_GAP_FACTOR = 1.5
"""The quickest sample's own queueing, as a multiple of the mean gap between the three
quickest delays: 1 for a flat-bottomed delay distribution (exponential queueing one way),
about 2.7 for one rising linearly from the minimum (queueing both ways); between the two."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The regression's view of a source at ``time_ns``."""

    time_ns: int
    offset_ns: float
    """Source minus our clock at ``time_ns``."""
    offset_sd_ns: float
    frequency: float
    """d(offset)/dt: positive when the source runs ahead of us (we are slow)."""
    frequency_sd: float
    samples_used: int
    min_delay_ns: int
    jitter_ns: float
    """Weighted RMS of the residuals: the scatter of this source's offsets."""
    noise_scale: float = 1.0
    """How much more the residuals scatter than the delay model says (at least 1)."""
    effective_samples: float = 0.0
    """How many equally good samples the weighted fit is worth, (sum w)^2 / sum w^2: few
    when quick samples dominate or wander has aged the old ones out of the fit."""


def _critical_runs(n: int) -> int:
    """Fewest sign runs acceptable among ``n`` residuals (about a 5% one-sided test).

    For n random signs the number of runs has mean (n + 1) / 2 and standard deviation about
    sqrt(n - 1) / 2; fewer than mean - 1.64 sd means the residuals are not random: the data
    bend away from a straight line.
    """
    if n < 6:
        return 0
    mean = (n + 1) / 2.0
    sd = math.sqrt(n - 1) / 2.0
    return max(0, math.floor(mean - 1.64 * sd))


class SourceStats:
    """The sample history of one source and its regression."""

    def __init__(self, precision_ns: int) -> None:
        self.samples: list[Measurement] = []
        self.floor_sd_ns = max(float(precision_ns), 100.0)
        self.estimate: Estimate | None = None
        self.q = WANDER_Q
        """Frequency random-walk rate assumed for our oscillator, (fraction/s)^2 per s."""
        self.noise = 1.0
        """How much more a sample scatters than the delay model says (learned with q)."""
        self.filter = JumpFilter()
        """The filter stage in front of the fit: holds a wild sample, spots jumps."""

    def __len__(self) -> int:
        return len(self.samples)

    def clear(self) -> None:
        self.samples.clear()
        self.estimate = None
        self.filter.held = None

    def add(self, m: Measurement) -> Estimate:
        """Pass a sample through the filter, learn from how well it was predicted, and refit."""
        est = self.estimate
        innovation: float | None = None
        predicted = 0.0
        if est is not None and len(self.samples) >= MIN_REGRESSION:
            innovation, predicted = self._prediction(m, est)
        verdict, held = self.filter.screen(m, innovation, predicted)
        if verdict is Verdict.HOLD:
            assert est is not None
            return est
        if verdict is Verdict.JUMP:
            assert held is not None
            self.samples = [held]  # the fit starts again on the new timescale
        self.samples.append(m)
        if len(self.samples) > MAX_SAMPLES:
            del self.samples[0]
        if ADAPT_WANDER:
            self._learn()
        self.estimate = self._fit()
        return self.estimate

    def _prediction(self, m: Measurement, est: Estimate) -> tuple[float, float]:
        """(innovation, its predicted variance) for a new sample:
        offset and frequency uncertainty, wander over the gap, the sample's own noise."""
        dt = max(0.0, (m.time_ns - est.time_ns) / NS_PER_S)
        excess = m.delay_ns - min(est.min_delay_ns, m.delay_ns)
        # The same noise model as the fit's weights: a prediction that expects less noise
        # than the fit assumes would read network noise as wander.
        floor = self._floor([*self.samples, m])
        noise = est.noise_scale * self.noise * _sample_var(excess, floor)
        predicted = est.offset_sd_ns**2 + noise
        if math.isfinite(est.frequency_sd):
            predicted += (est.frequency_sd * dt * NS_PER_S) ** 2
        wander = self.q * 1e18 * dt**3 / 3.0
        return m.offset_ns - offset_at(est, m.time_ns), predicted + wander

    def _learn(self) -> None:
        """Move the wander ``q`` and the noise scale one step toward what explains the
        history best (``wander.step``: the likelihood of a Kalman filter's predictions, which
        tells noise from wander by how they grow with the gap). ``q`` stays within
        Q_LOW..Q_MAX, the scale within NOISE_MIN..NOISE_MAX times the delay model."""
        samples = self.samples
        dmin = min(s.delay_ns for s in samples)
        floor = self._floor(samples)
        newest = samples[-1].time_ns
        self.q, self.noise = wander.step(
            [(s.time_ns - newest) / NS_PER_S for s in samples],
            [float(s.offset_ns) for s in samples],
            [_sample_var(s.delay_ns - dmin, floor) for s in samples],
            self.q,
            self.noise,
            (Q_LOW, Q_MAX),
            (NOISE_MIN, NOISE_MAX),
        )

    def wander_sd_ns(self, interval_s: float) -> float:
        """Offset uncertainty that frequency wander alone adds over ``interval_s``."""
        return math.sqrt(self.q * interval_s**3 / 3.0) * NS_PER_S

    def last(self) -> Measurement | None:
        return self.samples[-1] if self.samples else None

    def min_delay(self) -> int:
        return min(s.delay_ns for s in self.samples)

    def apply_correction(self, at_ns: int, offset_ns: int, dfreq: float) -> None:
        """Re-express samples after our clock moved by ``offset_ns`` at ``at_ns`` and its rate
        changed by ``dfreq`` (dimensionless): as if that correction had always applied."""
        for s in self.samples:
            shift = offset_ns + dfreq * (s.time_ns - at_ns)
            ishift = round(shift)
            s.time_ns += ishift
            s.offset_ns -= ishift
        if self.samples:
            self.estimate = self._fit()

    def _floor(self, samples: list[Measurement]) -> float:
        """How much the quickest sample's offset is in error, in ns: the unknown queueing
        it still had, from how far apart the quickest delays lie.

        Delays are measured from the quickest sample's, but that one queued too: the path's
        true minimum is lower by about the gap between the quickest delays. Every sample's
        offset error is spread over its delay above the true minimum, so this is added to
        each excess (``_sample_var``); without it one lucky sample would pin the whole
        line. Taken from the quickest delays, not a share of the typical one, because the
        quickest samples are the ones the fit leans on."""
        excess = sorted(s.delay_ns for s in samples)
        if len(excess) < 3:
            return max(self.floor_sd_ns, (excess[-1] - excess[0]) / math.sqrt(12.0))
        gap = QUICK_GAP_FACTOR * (excess[2] - excess[0]) / 2.0
        return max(self.floor_sd_ns, gap / math.sqrt(12.0))

    def _weights(self, samples: list[Measurement]) -> list[float]:
        dmin = min(s.delay_ns for s in samples)
        floor = self._floor(samples)
        noise = self.noise
        newest = samples[-1].time_ns
        # Our oscillator's frequency wanders (a random walk), so an old sample departs from
        # any straight line through the recent ones by a variance growing as q * age^3 / 3.
        q = self.q * 1e18  # ns^2 per s^3
        return [
            1.0
            / (
                noise * _sample_var(s.delay_ns - dmin, floor)
                + q * ((newest - s.time_ns) / NS_PER_S) ** 3 / 3.0
            )
            for s in samples
        ]

    def _fit(self) -> Estimate:
        samples = self.samples
        n_all = len(samples)
        newest = samples[-1].time_ns
        if n_all == 2 and samples[1].time_ns > samples[0].time_ns:
            return self._two_point(samples[0], samples[1])
        if n_all < MIN_REGRESSION:
            # Not enough for a slope: the best (lowest delay) sample's offset, no frequency.
            best = min(samples, key=lambda s: s.delay_ns)
            jit = _spread([float(s.offset_ns) for s in samples])
            return Estimate(
                time_ns=newest,
                offset_ns=float(best.offset_ns),
                offset_sd_ns=max(self.floor_sd_ns, jit, best.delay_ns / 4.0),
                frequency=0.0,
                frequency_sd=math.inf,
                samples_used=n_all,
                min_delay_ns=best.delay_ns,
                jitter_ns=jit,
                effective_samples=float(n_all),
            )
        # Try the newest n samples for n = all, then fewer, until the residuals look random.
        n = n_all
        while True:
            est, runs = self._regress(samples[n_all - n :], newest)
            if n <= MIN_REGRESSION or runs >= _critical_runs(n):
                return est
            n = max(MIN_REGRESSION, (n * 3) // 4)

    def _two_point(self, s0: Measurement, s1: Measurement) -> Estimate:
        """The line through two samples: a first frequency one poll after start, a whole
        poll before a regression could give one. Each sample's spread is taken as a
        quarter of its delay (no residuals to learn it from yet), so through heavy jitter
        the slope is uncertain and the discipline shrinks it toward the prior."""
        dt = (s1.time_ns - s0.time_ns) / NS_PER_S
        sd0 = max(self.floor_sd_ns, s0.delay_ns / 4.0)
        sd1 = max(self.floor_sd_ns, s1.delay_ns / 4.0)
        return Estimate(
            time_ns=s1.time_ns,
            offset_ns=float(s1.offset_ns),
            offset_sd_ns=sd1,
            frequency=(s1.offset_ns - s0.offset_ns) / (dt * NS_PER_S),
            frequency_sd=math.hypot(sd0, sd1) / (dt * NS_PER_S),
            samples_used=2,
            min_delay_ns=min(s0.delay_ns, s1.delay_ns),
            jitter_ns=abs(s1.offset_ns - s0.offset_ns) / math.sqrt(2.0),
            effective_samples=2.0,
        )

    def _regress(self, samples: list[Measurement], t_ref: int) -> tuple[Estimate, int]:
        w = self._weights(samples)
        xs = [(s.time_ns - t_ref) / NS_PER_S for s in samples]
        ys = [float(s.offset_ns) for s in samples]
        sw = sum(w)
        xm = sum(wi * xi for wi, xi in zip(w, xs, strict=True)) / sw
        ym = sum(wi * yi for wi, yi in zip(w, ys, strict=True)) / sw
        sxx = sum(wi * (xi - xm) ** 2 for wi, xi in zip(w, xs, strict=True))
        sxy = sum(wi * (xi - xm) * (yi - ym) for wi, xi, yi in zip(w, xs, ys, strict=True))
        b = sxy / sxx if sxx > 0 else 0.0
        a = ym - b * xm  # offset at t_ref (x = 0)
        resid = [yi - (a + b * xi) for xi, yi in zip(xs, ys, strict=True)]
        n = len(samples)
        chi2 = sum(wi * r * r for wi, r in zip(w, resid, strict=True))
        # Residual variance scale: how far the data scatter relative to their assumed weights.
        scale = chi2 / (n - 2) if n > 2 else 1.0
        scale = max(scale, SCALE_FLOOR)
        var_b = scale / sxx if sxx > 0 else math.inf
        var_a = scale * (1.0 / sw + xm * xm / sxx) if sxx > 0 else scale / sw
        runs = 1 + sum(1 for r0, r1 in itertools.pairwise(resid) if (r0 >= 0) != (r1 >= 0))
        jitter = math.sqrt(chi2 / sw) if sw > 0 else 0.0
        est = Estimate(
            time_ns=t_ref,
            offset_ns=a,
            offset_sd_ns=max(math.sqrt(max(var_a, 0.0)), self.floor_sd_ns),
            frequency=b / NS_PER_S,
            frequency_sd=math.sqrt(max(var_b, 0.0)) / NS_PER_S,
            samples_used=n,
            min_delay_ns=min(s.delay_ns for s in samples),
            jitter_ns=jitter,
            noise_scale=scale,
            effective_samples=sw * sw / sum(wi * wi for wi in w),
        )
        return est, runs


def _sample_var(excess: float, floor: float) -> float:
    """Variance of a sample's offset by the delay model (before the learned noise scale):
    with queueing ``x`` above the path's true minimum the offset error is spread evenly
    over +-x/2, variance x^2 / 12; ``x`` is the excess over the quickest delay plus that
    sample's own queueing (``floor`` is its standard deviation, x / sqrt(12))."""
    return (excess / math.sqrt(12.0) + floor) ** 2


def _spread(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def offset_at(est: Estimate, time_ns: int) -> float:
    """Extrapolate the estimate's offset to ``time_ns``."""
    return est.offset_ns + est.frequency * (time_ns - est.time_ns)
