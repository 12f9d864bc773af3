"""measure_precision: smallest positive step between successive readings, as log2 s."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ntpy.clock import ClockError, measure_precision
from ntpy.core.timestamps import log2_precision_from_ns


def stepping(step_ns: int, repeat: int = 1) -> Callable[[], int]:
    """A clock that returns each value ``repeat`` times, then moves by ``step_ns``."""
    state = {"n": 0}

    def read() -> int:
        state["n"] += 1
        return (state["n"] // repeat) * step_ns

    return read


def test_fine_clock_reports_its_reading_cost() -> None:
    assert measure_precision(stepping(1000)) == log2_precision_from_ns(1000) == -19


def test_coarse_clock_reports_its_tick_and_ignores_equal_readings() -> None:
    assert measure_precision(stepping(4_000_000, repeat=10)) == log2_precision_from_ns(4_000_000)


def test_minimum_wins_and_backward_readings_are_ignored() -> None:
    values = iter([0, 500, 400, 1400, 1500, 3000] * 100)

    def read() -> int:
        return next(values)

    # Differences: 500, -100, 1000, 100, 1500 ...; the smallest positive is 100 ns.
    assert measure_precision(read, samples=50) == log2_precision_from_ns(100)


def test_stopped_clock_is_an_error_within_the_budget() -> None:
    start = time.monotonic_ns()
    with pytest.raises(ClockError, match="did not advance"):
        measure_precision(lambda: 42, budget_ns=5_000_000)
    assert time.monotonic_ns() - start < 1_000_000_000


def test_real_clock_is_fast_and_plausible() -> None:
    start = time.monotonic_ns()
    p = measure_precision()
    elapsed = time.monotonic_ns() - start
    assert -32 <= p <= -10
    assert elapsed < 50_000_000


@pytest.mark.parametrize(("samples", "budget"), [(0, 1), (1, 0)])
def test_bad_arguments(samples: int, budget: int) -> None:
    with pytest.raises(ValueError):
        measure_precision(samples=samples, budget_ns=budget)
