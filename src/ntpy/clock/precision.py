"""Measure the precision a clock can be read with, the way chrony and ntpd do.

chrony (local.c ``measure_clock_read_delay``) reads the clock back to back until it has
seen 100 increments and keeps the smallest positive difference: that is the reading cost
when the clock is fine-grained, and the tick when the clock is coarse (equal readings are
skipped). ntpd's ``default_get_precision`` does the same with a minimum step. chrony also
tries to measure the clocksource resolution with busy loops, and takes the smaller of the
two; from Python the interpreter's own cost between two readings dwarfs the clocksource
resolution, so that part would only report a precision no Python timestamp can reach. We
therefore keep the read-delay method, which is what actually bounds our timestamps.

Readings are taken in short batches so that the time budget is checked between batches,
never between the two readings whose difference is measured.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from ntpy.clock.errors import ClockError
from ntpy.core.timestamps import log2_precision_from_ns

DEFAULT_INCREMENTS = 100
"""chrony's NITERS: increments to observe before trusting the minimum."""

DEFAULT_BUDGET_NS = 20_000_000
"""Give up after 20 ms of wall time so start-up stays fast even on a coarse clock."""

_BATCH = 16


def measure_precision(
    read: Callable[[], int] = time.time_ns,
    samples: int = DEFAULT_INCREMENTS,
    *,
    budget_ns: int = DEFAULT_BUDGET_NS,
) -> int:
    """Return the NTP precision exponent (e.g. -23) of the clock ``read`` returns, in ns.

    ``samples`` is the number of positive increments to observe; the measurement stops
    earlier when ``budget_ns`` of monotonic time has passed, using what it has. Raises
    ``ClockError`` if the clock never advanced within the budget (a stopped clock has no
    meaningful precision).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if budget_ns <= 0:
        raise ValueError(f"budget_ns must be positive, got {budget_ns}")
    deadline = time.monotonic_ns() + budget_ns
    best = 0
    seen = 0
    while seen < samples:
        batch = [read() for _ in range(_BATCH)]
        for prev, cur in itertools.pairwise(batch):
            diff = cur - prev
            if diff > 0:
                seen += 1
                if best == 0 or diff < best:
                    best = diff
        if time.monotonic_ns() >= deadline:
            break
    if best == 0:
        raise ClockError("the clock did not advance while measuring its precision")
    return log2_precision_from_ns(best)
