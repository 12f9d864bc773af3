"""The test-suite guard: with NTPY_FORBID_CLOCK_CHANGES set, the real SystemClock refuses
every clock-changing call before it reaches the kernel (conftest sets it for all tests)."""

from __future__ import annotations

import os

import pytest

from ntpy.clock import ClockError, SystemClock
from ntpy.clock.system import FORBID_ENV


def test_guard_is_on_in_tests() -> None:
    assert os.environ.get(FORBID_ENV)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.step(1000),
        lambda c: c.slew(0),
        lambda c: c.set_frequency_ppb(0.0),
        lambda c: c.reset_kernel_discipline(),
    ],
)
def test_real_clock_changes_are_refused(change: object) -> None:
    clock = SystemClock(adjustable=True)
    before = clock.frequency_ppb()  # reads still work
    with pytest.raises(ClockError, match=FORBID_ENV):
        change(clock)  # type: ignore[operator]
    assert clock.frequency_ppb() == before
