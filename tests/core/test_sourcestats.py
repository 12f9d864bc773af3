"""Unit tests for the per-source regression (``ntpy.core.sourcestats``).

Synthetic samples with a known offset and frequency check that the regression recovers
them, that low-delay samples dominate, that ``apply_correction`` re-expresses the history
consistently, that the runs test drops samples when the data bend, and that the wander
model ``q`` adapts within its bounds and finds a true wander through noise.
"""

from __future__ import annotations

import math
import random

import pytest

from ntpy.core.sourcestats import (
    MAX_SAMPLES,
    Q_LOW,
    Q_MAX,
    Q_MIN,
    QUICK_GAP_FACTOR,
    WANDER_Q,
    Measurement,
    SourceStats,
    offset_at,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
PRECISION_NS = 1_000


def sample(t_ns: int, offset_ns: int, delay_ns: int = 2_000_000) -> Measurement:
    return Measurement(
        time_ns=t_ns,
        offset_ns=offset_ns,
        delay_ns=delay_ns,
        dispersion_ns=1_000,
        root_delay_ns=0,
        root_dispersion_ns=10_000,
        stratum=1,
        leap=0,
    )


def linear(
    stats: SourceStats,
    n: int,
    *,
    offset0_ns: float,
    freq: float,
    step_s: int = 16,
    queueing_ns: float = 0.0,
    seed: int = 1,
) -> None:
    """Add ``n`` samples of offset0 + freq * (t - T0), every ``step_s``, with network noise.

    Noise as a real path makes it: each sample's delay exceeds the 2 ms minimum by an
    exponential queueing delay (mean ``queueing_ns``), and its offset error is uniform
    within +-half that excess, plus 300 ns of timestamping noise (below the 1 us floor).
    """
    rng = random.Random(seed)
    for i in range(n):
        t = T0 + i * step_s * NS
        excess = rng.expovariate(1.0 / queueing_ns) if queueing_ns else 0.0
        err = rng.uniform(-excess / 2, excess / 2) + (rng.gauss(0.0, 300.0) if queueing_ns else 0)
        y = offset0_ns + freq * (t - T0) + err
        stats.add(sample(t, round(y), delay_ns=2_000_000 + round(excess)))


def test_one_sample_gives_its_offset_and_no_frequency() -> None:
    stats = SourceStats(PRECISION_NS)
    est = stats.add(sample(T0, 5_000, delay_ns=9_000_000))
    assert est.offset_ns == 5_000
    assert est.frequency == 0.0
    assert est.frequency_sd == float("inf")
    assert est.samples_used == 1


def test_two_samples_give_a_first_slope_as_uncertain_as_their_delays() -> None:
    """A frequency one poll after start (sync in one poll, not two); its uncertainty comes
    from the delays, so through heavy jitter the discipline shrinks it toward the prior."""
    stats = SourceStats(PRECISION_NS)
    stats.add(sample(T0, 5_000, delay_ns=9_000_000))
    est = stats.add(sample(T0 + 64 * NS, 69_000, delay_ns=1_000_000))
    assert est.offset_ns == 69_000  # the newest sample: the line ends there
    assert est.frequency == pytest.approx(1e-6)  # 64 us in 64 s
    assert est.frequency_sd == pytest.approx(math.hypot(2_250_000, 250_000) / (64 * NS))
    assert est.samples_used == 2
    assert est.min_delay_ns == 1_000_000


def test_effective_samples_count_the_samples_that_carry_weight() -> None:
    """Equal delays close together: nearly every sample counts; a few quick samples among
    slow ones dominate; wander ages old samples out of the fit. (A lone quick sample far
    below all others is trusted only as far as the gap to the next ones allows: see
    test_delay_floor_comes_from_the_quickest_delays.)"""
    even = SourceStats(PRECISION_NS)
    for i in range(16):
        est = even.add(sample(T0 + i * NS, 50 * (-1) ** i, delay_ns=2_000_000))
    assert est.effective_samples > 10.0
    spread = SourceStats(PRECISION_NS)
    for i in range(16):
        aged = spread.add(sample(T0 + i * 256 * NS, 50 * (-1) ** i, delay_ns=2_000_000))
    assert aged.effective_samples < est.effective_samples
    skewed = SourceStats(PRECISION_NS)
    for i in range(16):
        delay = 2_000_000 + 10_000 * i if i in (4, 8, 12) else 12_000_000 + 1000 * i
        lucky = skewed.add(sample(T0 + i * NS, 50 * (-1) ** i, delay_ns=delay))
    assert lucky.effective_samples < 4.0


def test_regression_recovers_offset_and_frequency_exactly_without_noise() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, 20, offset0_ns=3_000_000.0, freq=25e-6)
    est = stats.estimate
    assert est is not None
    assert est.samples_used >= 3
    assert est.time_ns == T0 + 19 * 16 * NS
    expected_now = 3_000_000.0 + 25e-6 * 19 * 16 * NS
    assert est.offset_ns == pytest.approx(expected_now, abs=2.0)
    assert est.frequency == pytest.approx(25e-6, rel=1e-6)
    # extrapolation follows the line
    later = est.time_ns + 100 * NS
    assert offset_at(est, later) == pytest.approx(expected_now + 25e-6 * 100 * NS, abs=5.0)


def test_regression_recovers_offset_and_frequency_through_noise() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, 64, offset0_ns=-1_500_000.0, freq=-40e-6, queueing_ns=200_000.0, seed=7)
    est = stats.estimate
    assert est is not None
    expected_now = -1_500_000.0 - 40e-6 * 63 * 16 * NS
    # single samples are off by up to ~100 us; the weighted fit is good to ~10 us
    assert est.offset_ns == pytest.approx(expected_now, abs=30_000)
    assert est.frequency == pytest.approx(-40e-6, abs=0.1e-6)
    assert 0 < est.frequency_sd < 0.1e-6
    # the reported uncertainty is honest (within 4 sigma)
    assert abs(est.offset_ns - expected_now) < 4 * est.offset_sd_ns
    assert abs(est.frequency + 40e-6) < 4 * est.frequency_sd


def test_weights_favour_low_delay_samples() -> None:
    """Quick samples have offset 0, slow ones are 5 ms off: the estimate follows the quick."""
    stats = SourceStats(PRECISION_NS)
    for i in range(32):
        slow = i % 4 == 1
        stats.add(
            sample(
                T0 + i * 16 * NS,
                5_000_000 if slow else 0,
                delay_ns=20_000_000 if slow else 1_000_000,
            )
        )
    est = stats.estimate
    assert est is not None
    assert abs(est.offset_ns) < 250_000  # < 5% of the way to the slow samples
    assert est.min_delay_ns == 1_000_000
    w = stats._weights(stats.samples)
    assert w[0] > 100 * w[1]


def test_delay_floor_comes_from_the_quickest_delays() -> None:
    """The quickest sample queued too: its error is taken from how far apart the quickest
    delays lie (QUICK_GAP_FACTOR times the mean gap of the three quickest), added to every
    sample's excess, so one lucky quick sample cannot pin the line -- and the slow
    majority does not blur the quick ones (the floor ignores the typical delay)."""
    stats = SourceStats(PRECISION_NS)
    stats.q = 0.0
    stats.noise = 1.0
    delays = [21_000_000, 1_000_000, 1_200_000, 1_600_000, 21_000_000, 21_000_000]
    for i, d in enumerate(delays):
        stats.samples.append(sample(T0 + i * NS, 0, delay_ns=d))
    floor = QUICK_GAP_FACTOR * 600_000 / 2 / math.sqrt(12)
    assert stats._floor(stats.samples) == pytest.approx(floor)
    w = stats._weights(stats.samples)
    assert w[1] == pytest.approx(1 / floor**2)
    assert w[0] == pytest.approx(1 / (20_000_000 / math.sqrt(12) + floor) ** 2)
    assert w[1] / w[0] > 100
    # the same quick samples among slower ones keep the same floor
    stats.samples[0].delay_ns = 50_000_000
    assert stats._floor(stats.samples) == pytest.approx(floor)


def test_weights_are_equal_for_equal_delays_at_the_same_age() -> None:
    stats = SourceStats(PRECISION_NS)
    stats.q = 0.0  # no wander: age alone does not matter
    linear(stats, 5, offset0_ns=0.0, freq=0.0)
    w = stats._weights(stats.samples)
    assert max(w) == pytest.approx(min(w))


def test_apply_correction_with_the_fit_leaves_zero_offset_and_frequency() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, 30, offset0_ns=8_000_000.0, freq=60e-6, queueing_ns=50_000.0, seed=3)
    est = stats.estimate
    assert est is not None
    before_n = len(stats)
    stats.apply_correction(est.time_ns, round(est.offset_ns), est.frequency)
    after = stats.estimate
    assert after is not None
    assert len(stats) == before_n
    assert after.offset_ns == pytest.approx(0.0, abs=1_000)
    assert after.frequency == pytest.approx(0.0, abs=1e-9)
    # the corrected samples sit on our (now corrected) clock: their times moved too
    assert stats.samples[-1].time_ns == est.time_ns + round(est.offset_ns)


def test_apply_correction_offset_only_shifts_every_sample() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, 5, offset0_ns=1_000_000.0, freq=0.0)
    times = [s.time_ns for s in stats.samples]
    stats.apply_correction(times[-1], 400_000, 0.0)
    assert [s.offset_ns for s in stats.samples] == [600_000] * 5
    assert [s.time_ns for s in stats.samples] == [t + 400_000 for t in times]


def test_apply_correction_on_empty_stats_is_harmless() -> None:
    stats = SourceStats(PRECISION_NS)
    stats.apply_correction(T0, 1_000, 1e-6)
    assert stats.estimate is None
    assert stats.last() is None


def test_runs_test_keeps_all_samples_of_a_noisy_line() -> None:
    """Random residuals pass the runs test (about a 5% test: allow rare false alarms)."""
    kept_all = 0
    for seed in range(1, 21):
        stats = SourceStats(PRECISION_NS)
        linear(stats, 48, offset0_ns=0.0, freq=10e-6, queueing_ns=200_000.0, seed=seed)
        est = stats.estimate
        assert est is not None
        kept_all += est.samples_used == 48
    assert kept_all >= 17


def test_runs_test_drops_old_samples_when_the_data_bend() -> None:
    """A quadratic (frequency ramp) leaves long runs of same-sign residuals on a line."""
    stats = SourceStats(PRECISION_NS)
    rng = random.Random(5)
    n = 48
    for i in range(n):
        t_s = i * 16
        y = 2.0 * t_s * t_s + rng.gauss(0.0, 1_000.0)  # ns; 1.2 ms of bend at the end
        stats.add(sample(T0 + t_s * NS, round(y)))
    est = stats.estimate
    assert est is not None
    assert est.samples_used < n
    assert len(stats) == n  # dropped from the fit, not from the history
    # the fit of the newest samples follows the local slope (4 * t ns/s at the end)
    slope_end = 4.0 * (n - 1) * 16 * 1e-9
    assert est.frequency == pytest.approx(slope_end, rel=0.25)


def test_history_is_bounded() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, MAX_SAMPLES + 10, offset0_ns=0.0, freq=0.0)
    assert len(stats) == MAX_SAMPLES
    assert stats.samples[0].time_ns == T0 + 10 * 16 * NS


def test_q_grows_when_the_frequency_really_wanders_and_stays_bounded() -> None:
    """A frequency random walk (the thing q models) raises q; white noise does not (see
    test_q_does_not_grow_without_wander)."""
    stats = SourceStats(PRECISION_NS)
    assert stats.q == WANDER_Q
    rng = random.Random(2)
    seen = []
    freq = 0.0  # fraction
    offset = 0.0  # ns
    for i in range(200):
        # 100 ppb per sqrt(s) over 1024 s polls: wander is what the innovations show.
        freq += rng.gauss(0.0, 100e-9 * 32)
        offset += freq * 1024 * NS
        stats.add(sample(T0 + i * 1024 * NS, round(offset)))
        seen.append(stats.q)
    assert stats.q > WANDER_Q
    assert all(Q_MIN <= q <= Q_MAX for q in seen)


def test_q_never_goes_below_the_assumed_wander() -> None:
    """On perfect data q is not learned below Q_LOW (the assumed wander is a floor: a few
    hours of samples cannot tell less wander from none, and the poll rule relies on it)."""
    stats = SourceStats(PRECISION_NS)
    seen = []
    for i in range(300):
        stats.add(sample(T0 + i * 1024 * NS, 1_000))  # a perfect, constant offset
        seen.append(stats.q)
    assert stats.q == Q_LOW
    assert all(Q_LOW <= q <= Q_MAX for q in seen)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_q_is_learned_near_the_true_wander_through_noise(seed: int) -> None:
    """10 ppb per sqrt(s) of wander, 64 s polls, 100 us of exponential queueing each way:
    the learned q ends within a factor 3 (in sd) of the truth, far above the assumed 2."""
    rng = random.Random(seed)
    stats = SourceStats(PRECISION_NS)
    freq = offset = 0.0
    for i in range(160):
        freq += rng.gauss(0.0, 10e-9 * 8)  # 64 s of a 10 ppb/sqrt(s) walk
        offset += freq * 64 * NS
        up, down = rng.expovariate(1 / 100_000), rng.expovariate(1 / 100_000)
        stats.add(
            sample(T0 + i * 64 * NS, round(offset + (up - down) / 2), 2_000_000 + round(up + down))
        )
    assert 10e-9 / 3 < math.sqrt(stats.q) < 10e-9 * 3


def test_wander_sd_grows_with_interval() -> None:
    stats = SourceStats(PRECISION_NS)
    assert stats.wander_sd_ns(0.0) == 0.0
    a, b = stats.wander_sd_ns(16.0), stats.wander_sd_ns(64.0)
    assert 0 < a < b
    assert b / a == pytest.approx(4.0**1.5)


def test_clear_forgets_samples_and_estimate() -> None:
    stats = SourceStats(PRECISION_NS)
    linear(stats, 4, offset0_ns=0.0, freq=0.0)
    stats.clear()
    assert len(stats) == 0
    assert stats.estimate is None


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_q_does_not_grow_without_wander(seed: int) -> None:
    """Exponential queueing delays each way (mean 20 us): exactly the noise the weights
    model (the offset error is uniform within +-excess/2), and a perfect oscillator."""
    rng = random.Random(seed)
    stats = SourceStats(954)
    for i in range(300):
        up, down = rng.expovariate(1 / 20_000), rng.expovariate(1 / 20_000)
        stats.add(sample(T0 + i * 16 * NS, round((up - down) / 2), 2_000_000 + round(up + down)))
    assert stats.q <= 10 * WANDER_Q
