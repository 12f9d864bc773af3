"""How much our oscillator wanders, and how noisy a source really is: learned by likelihood.

Why a module of its own: the regression in ``sourcestats`` weights old samples down by the
frequency random walk ``q`` it assumes, and each sample's noise by the delay model times a
scale ``s``. Both are properties of this machine and this path, not constants: a busy
machine's crystal wanders ten times more than a quiet one's, and a path's queueing may be
noisier than its delays say. Learning ``q`` from how surprising each new sample is cannot
tell the two apart, and never starts when wander is a small share of one poll's spread --
though over an hour it dwarfs the noise.

So both are learned the textbook way, by maximum likelihood over the stored history: a
Kalman filter of the model the regression assumes (offset and frequency, the frequency a
random walk of rate ``q``; each sample's offset noise ``s`` times the delay model's
variance) runs over the samples, and the log-likelihood of its one-step predictions says how
well a given ``(q, s)`` explains them. Noise and wander differ in how they grow with the
gap between samples, so the likelihood tells them apart wherever the history is long enough
to show either. The history was re-expressed after every clock correction
(``SourceStats.apply_correction``), which only adds a straight line to it: the filter's
frequency state absorbs that, so corrections do not disturb the estimate.

``step`` climbs: it compares the current ``(q, s)`` with its neighbours on a log grid and
moves one step toward the best, so one noisy history moves the model a little, and a
persistent change moves it all the way within a few polls. All arithmetic is float on
seconds and ns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Q_STEP = 1.5
"""Grid factor for q between neighbours (one step per sample at most)."""
S_STEP = 1.25
"""Grid factor for the noise scale."""
MIN_SAMPLES = 8
"""Histories shorter than this say too little: the model is left alone."""
DIFFUSE = 2
"""The first samples only start the filter (offset, then frequency): not scored."""
MIN_GAIN = 0.5
"""Log-likelihood a neighbour must gain over the current model to be moved to."""


def log_likelihood(
    times_s: Sequence[float],
    offsets_ns: Sequence[float],
    noise_ns2: Sequence[float],
    q_ns2_s3: float,
    scale: float,
) -> float:
    """Log-likelihood (up to a constant) of the history's one-step predictions under
    wander ``q_ns2_s3`` (ns^2/s^3) and noise ``scale`` times ``noise_ns2``."""
    x = offsets_ns[0]
    f = 0.0
    p00 = scale * noise_ns2[0]
    p01 = 0.0
    p11 = 1e10  # (100 us/s)^2: no idea of the frequency yet
    total = 0.0
    for i in range(1, len(times_s)):
        h = times_s[i] - times_s[i - 1]
        # predict: x += f h; the random walk adds q h^3/3, q h^2/2, q h
        x += f * h
        qh = q_ns2_s3 * h
        p00 += h * (2.0 * p01 + h * p11) + qh * h * h / 3.0
        p01 += h * p11 + qh * h / 2.0
        p11 += qh
        r = scale * noise_ns2[i]
        s = p00 + r
        nu = offsets_ns[i] - x
        if i >= DIFFUSE:
            total -= 0.5 * (nu * nu / s + math.log(s))
        k0, k1 = p00 / s, p01 / s
        x += k0 * nu
        f += k1 * nu
        p11 -= k1 * p01
        p01 -= k0 * p01
        p00 -= k0 * p00
    return total


def step(
    times_s: Sequence[float],
    offsets_ns: Sequence[float],
    noise_ns2: Sequence[float],
    q: float,
    scale: float,
    q_bounds: tuple[float, float],
    s_bounds: tuple[float, float],
) -> tuple[float, float]:
    """``(q, scale)`` moved one grid step toward what explains the history best (or left
    where they are). ``q`` in (fraction/s)^2 per s; each within its bounds."""
    if len(times_s) < MIN_SAMPLES:
        return q, scale
    best = (q, scale)
    base = log_likelihood(times_s, offsets_ns, noise_ns2, q * 1e18, scale)
    best_ll = base + MIN_GAIN
    for qf in (1.0 / Q_STEP, 1.0, Q_STEP):
        qc = min(max(q * qf, q_bounds[0]), q_bounds[1])
        for sf in (1.0 / S_STEP, 1.0, S_STEP):
            sc = min(max(scale * sf, s_bounds[0]), s_bounds[1])
            if (qc, sc) == (q, scale):
                continue
            ll = log_likelihood(times_s, offsets_ns, noise_ns2, qc * 1e18, sc)
            if ll > best_ll:
                best, best_ll = (qc, sc), ll
    return best
