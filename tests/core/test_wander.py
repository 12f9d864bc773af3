"""Unit tests for ``ntpy.core.wander``: the Kalman likelihood tells wander from noise by how
they grow with the gap, and ``step`` climbs toward the better model one grid step at a time."""

from __future__ import annotations

import random

import pytest

from ntpy.core.wander import MIN_SAMPLES, Q_STEP, S_STEP, log_likelihood, step

BOUNDS_Q = (1e-20, 1e-12)
BOUNDS_S = (0.1, 100.0)


def history(
    q: float, noise_ns: float, n: int = 64, gap_s: float = 64.0, seed: int = 1
) -> tuple[list[float], list[float], list[float]]:
    """Offsets of an integrated frequency random walk of rate ``q`` (fraction^2/s) plus
    white noise of ``noise_ns``, every ``gap_s``; with their noise variances."""
    rng = random.Random(seed)
    times: list[float] = []
    offsets: list[float] = []
    freq = phase = 0.0
    for i in range(n):
        freq += rng.gauss(0.0, (q * gap_s) ** 0.5)
        phase += freq * gap_s * 1e9
        times.append(i * gap_s)
        offsets.append(phase + rng.gauss(0.0, noise_ns))
    return times, offsets, [noise_ns**2] * n


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_likelihood_prefers_the_true_wander(seed: int) -> None:
    times, offsets, noise = history(1e-16, 10_000.0, seed=seed)
    ll = {f: log_likelihood(times, offsets, noise, 1e-16 * f * 1e18, 1.0) for f in (0.01, 1, 100)}
    assert ll[1] > ll[0.01]
    assert ll[1] > ll[100]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_likelihood_prefers_the_true_noise_scale(seed: int) -> None:
    times, offsets, noise = history(1e-16, 10_000.0, seed=seed)
    ll = {s: log_likelihood(times, offsets, noise, 1e2, s) for s in (0.1, 1.0, 10.0)}
    assert ll[1.0] > ll[0.1]
    assert ll[1.0] > ll[10.0]


def test_step_climbs_toward_the_truth_and_stops_there() -> None:
    times, offsets, noise = history(1e-16, 10_000.0, n=64, seed=4)
    q, s = 1e-18, 1.0
    for _ in range(30):
        q, s = step(times, offsets, noise, q, s, BOUNDS_Q, BOUNDS_S)
    assert 1e-16 / 10 < q < 1e-16 * 10
    assert 0.5 < s < 2.0
    # one step at most per call
    q2, s2 = step(times, offsets, noise, 1e-18, 1.0, BOUNDS_Q, BOUNDS_S)
    assert q2 <= 1e-18 * Q_STEP * (1 + 1e-12)
    assert s2 <= S_STEP * (1 + 1e-12)


def test_step_respects_bounds_and_short_histories() -> None:
    times, offsets, noise = history(1e-14, 10.0, seed=5)
    q, s = step(times, offsets, noise, 1e-18, 1.0, (1e-18, 1e-18), (1.0, 1.0))
    assert (q, s) == (1e-18, 1.0)
    short = MIN_SAMPLES - 1
    assert step(times[:short], offsets[:short], noise[:short], 1e-18, 1.0, BOUNDS_Q, BOUNDS_S) == (
        1e-18,
        1.0,
    )


def test_a_clock_correction_folded_into_the_history_changes_nothing() -> None:
    """A correction re-expresses samples by a line in time: the filter's frequency state
    absorbs it, so the likelihood (past the diffuse start) is the same."""
    times, offsets, noise = history(1e-16, 10_000.0, seed=6)
    shifted = [o - 5e6 - 3e3 * t for o, t in zip(offsets, times, strict=True)]
    a = log_likelihood(times, offsets, noise, 1e2, 1.0)
    b = log_likelihood(times, shifted, noise, 1e2, 1.0)
    assert a == pytest.approx(b, rel=1e-3)
