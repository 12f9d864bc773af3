"""Leap seconds in the simulated world: UTC as the servers and the graders read it.

The simulator's true time ``T`` is continuous (like TAI): it never repeats or skips. UTC,
as a Unix clock shows it, does: across an inserted second it reads the last second of the
day again; across a deleted one it skips 23:59:59. ``utc_of`` maps true time to that
reading, so the servers leap at the right instant and the grader compares the client's
served time with the UTC it should show, not with ``T``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ntpy.clock.leap import arm_leap
from ntpy.core.leap import LeapEvent, clock_leap, month_start_s, next_boundary_ns
from ntpy.core.packet import LEAP_ADD, LEAP_DEL, LEAP_NONE
from ntpy.core.timestamps import NS_PER_S

if TYPE_CHECKING:
    from ntpy.sim.world import Simulation

WAKE_MARGIN_NS = 1_000_000


def leap_threshold_ns(at_s: int, step: int) -> int:
    """The (pre-leap) reading at which a clock leaps: midnight to insert, 23:59:59 to
    delete."""
    return at_s * NS_PER_S - (0 if step > 0 else NS_PER_S)


def utc_of(reading_ns: int, at_s: int | None, step: int) -> int:
    """A continuous reading (true time, or a server's unleaped clock) as UTC shows it."""
    if at_s is None or reading_ns < leap_threshold_ns(at_s, step):
        return reading_ns
    return reading_ns - step * NS_PER_S


def announced(utc_ns: int, at_s: int | None, step: int) -> int:
    """A simulated upstream's LI at its UTC reading: the leap's during its month, as ntpd."""
    if at_s is None:
        return LEAP_NONE
    if not month_start_s(at_s * NS_PER_S - 1) * NS_PER_S <= utc_ns < at_s * NS_PER_S:
        return LEAP_NONE
    return LEAP_ADD if step > 0 else LEAP_DEL


class SimLeap:
    """The simulator's counterpart of the daemon's ``LeapKeeper``: after every engine step
    and at every leap boundary, arm the client's clock from ``core.leap`` (the same
    ``arm_leap`` the daemon calls) and record the served LI's timeline."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.event: LeapEvent | None = None
        self.armed = 0
        self.li_timeline: list[tuple[int, int]] = []
        """(true ns, LI served from then on), one entry per change."""
        self._wake: int | None = None

    def update(self) -> None:
        sim = self.sim
        leap_event = getattr(sim.engine, "leap_event", None)
        if leap_event is None:
            return  # a stand-in engine without leap support
        now = sim.cooked_now()
        event: LeapEvent | None = leap_event(now)
        self.event = event
        if clock_leap(now, event) != self.armed:
            self.armed = arm_leap(sim.clock, event, now)
        li = sim.engine.system_state(now).leap
        if not self.li_timeline or self.li_timeline[-1][1] != li:
            self.li_timeline.append((sim.now, li))
        self._wake = sim.now + max(0, next_boundary_ns(now, event) - now) + WAKE_MARGIN_NS

    def wake_at(self) -> int | None:
        """True time of the next boundary wake-up (None: none wanted)."""
        if self._wake is None or self._wake <= self.sim.now:
            return None
        return self._wake
