"""Leap seconds on the clocks: arming them, and the smeared view of served time.

Both adjustable clocks take ``set_leap(+1 | -1 | 0)`` with the kernel's meaning (perform a
leap at the next UTC midnight; the kernel clock through STA_INS/STA_DEL, the virtual clock
as a step of its register) and say ``leap_applied()`` once they did. ``arm_leap`` is what
the shells (daemon and simulator) call after every engine step and at every leap boundary,
so both drive the clock the same way from ``core.leap.clock_leap``.

``SmearedClock`` wraps the served clock for the *serve path only*: timestamps handed to
clients get ``core.leap.smear_offset_ns`` added, while the engine keeps measuring and
disciplining the unsmeared clock. A smearing server must say so: clients must not mix
smeared and unsmeared servers (they would see a 1 s disagreement across the smear).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ntpy.clock.base import Clock, StepHandler
from ntpy.core.leap import LeapEvent, SmearPolicy, clock_leap, smear_offset_ns
from ntpy.core.timestamps import NS_PER_S


@runtime_checkable
class LeapClock(Protocol):
    """A clock that performs leap seconds itself."""

    def set_leap(self, leap: int) -> None: ...

    def leap_applied(self) -> bool: ...


def arm_leap(clock: Clock, event: LeapEvent | None, now_ns: int) -> int:
    """Arm (or disarm) ``clock`` for ``event`` as ``core.leap.clock_leap`` says at
    ``now_ns``; returns what was asked (+1, -1, 0). Clocks that cannot adjust are left."""
    want = clock_leap(now_ns, event)
    if isinstance(clock, LeapClock) and clock.can_adjust():
        clock.set_leap(want)
    return want


def leap_done(clock: Clock, event: LeapEvent, now_ns: int) -> bool:
    """Has ``clock`` performed ``event``, given its reading ``now_ns``? A reading at or past
    the leap instant comes after it; only an inserted second (read twice) needs the clock
    asked, while it is read (the clock is disarmed only once past the instant)."""
    if now_ns >= event.at_ns:
        return True
    if event.step < 0 or now_ns < event.at_ns - NS_PER_S:
        return False
    return isinstance(clock, LeapClock) and clock.leap_applied()


class SmearedClock:
    """``clock`` with the leap smear added to what clients are served (see module doc).

    The synchronization shell calls ``follow`` whenever the pending leap changes."""

    def __init__(self, clock: Clock, policy: SmearPolicy) -> None:
        self.inner = clock
        self.policy = policy
        self.event: LeapEvent | None = None
        self.name = clock.name

    def follow(self, event: LeapEvent | None, now_ns: int) -> None:
        """Smear for ``event``. The pending leap disappears at the leap instant, but a
        smear can run on past it (noon to noon): the last one is kept until its window
        is over."""
        if event is not None:
            self.event = event
        elif self.event is not None and now_ns > self.policy.window(self.event)[1] + 2 * NS_PER_S:
            self.event = None

    def _offset(self, t: int) -> int:
        event = self.event
        if event is None:
            return 0
        start, end = self.policy.window(event)
        if not start - 2 * NS_PER_S <= t <= end + 2 * NS_PER_S:
            return 0
        return smear_offset_ns(t, event, self.policy, leap_done(self.inner, event, t))

    def smear_ns(self) -> int:
        """The smear offset in force now (for status and logs)."""
        return self._offset(self.inner.now_ns())

    def now_ns(self) -> int:
        t = self.inner.now_ns()
        return t + self._offset(t)

    def from_realtime_ns(self, realtime_ns: int) -> int:
        t = self.inner.from_realtime_ns(realtime_ns)
        return t + self._offset(t)

    def precision(self) -> int:
        return self.inner.precision()

    def can_adjust(self) -> bool:
        return self.inner.can_adjust()

    def step(self, offset_ns: int) -> None:
        self.inner.step(offset_ns)

    def slew(self, offset_ns: int) -> None:
        self.inner.slew(offset_ns)

    def set_frequency_ppb(self, ppb: float) -> None:
        self.inner.set_frequency_ppb(ppb)

    def frequency_ppb(self) -> float:
        return self.inner.frequency_ppb()

    def remaining_slew_ns(self) -> int:
        return self.inner.remaining_slew_ns()

    def add_step_handler(self, handler: StepHandler) -> None:
        self.inner.add_step_handler(handler)
