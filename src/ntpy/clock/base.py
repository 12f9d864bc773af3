"""The one clock interface every part of ntpy reads time through.

Three implementations share it: the system clock (adjtimex through ctypes), the virtual
clock (a software offset + frequency register over the system clock, like chrony ``-x``),
and the simulator's clock. Because the daemon only ever asks a ``Clock``, the same code
serves time in production, in an unprivileged container, and inside the simulator.

All times are integer nanoseconds since the Unix epoch. Frequencies are in parts per
billion (ppb) as floats, because they are rates, not instants.

The contract, in three quantities:

* *served* time, ``now_ns()``: what clients are given.
* the *unserved slew*, ``remaining_slew_ns()``: correction already decided that served time
  does not include yet.
* *cooked* time = served + unserved slew (``ntpy.core.actions.cooked_now``): the clock with
  every decided correction applied. The engine measures against it (T1, T4, ``now``), and
  ``SlewClock(x)`` is carried out as ``slew(remaining_slew_ns() + x)``, so cooked time moves
  by exactly ``x`` at once on every clock.

The clocks differ in where the slew shows:

* ``VirtualClock`` serves the register with the slew *in progress* (at its slew rate, 1%
  in the daemon): served time moves smoothly and ``remaining_slew_ns()`` is what is left.
* ``SystemClock`` serves the *cooked* time itself (chrony's name): the kernel clock plus
  the correction the kernel still has to slew, so clients never see the half-slewed
  kernel clock; ``remaining_slew_ns()`` is 0 and the kernel's own part is
  ``kernel_slew_ns()``. It needs a timer to end its slews (``TimedClock``).

The simulator grades served time (``now_ns() - true time``) on both, and the daemon hands
the engine the same cooked time the simulator does, so both agree on what is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

StepHandler = Callable[[int], None]
"""Called with the step in ns after the clock was stepped, so timestamp holders can adjust."""


@runtime_checkable
class Clock(Protocol):
    """What the daemon needs from a clock."""

    name: str
    """Short human name: "system", "virtual", "sim"."""

    def now_ns(self) -> int:
        """Served time now, Unix ns."""
        ...

    def from_realtime_ns(self, realtime_ns: int) -> int:
        """Map a CLOCK_REALTIME reading (e.g. a kernel RX timestamp) to served time.

        The system clock returns it unchanged; the virtual clock adds its correction.
        """
        ...

    def precision(self) -> int:
        """log2 seconds of the cost/granularity of reading this clock (e.g. -24)."""
        ...

    def can_adjust(self) -> bool:
        """True if step/slew/frequency changes take effect (always for virtual/sim)."""
        ...

    def step(self, offset_ns: int) -> None:
        """Jump served time by ``offset_ns`` immediately and tell the step handlers."""
        ...

    def slew(self, offset_ns: int) -> None:
        """Set the unserved slew to ``offset_ns`` (replacing what was left of it): cooked
        time moves by the difference at once; served time follows at the clock's pace."""
        ...

    def set_frequency_ppb(self, ppb: float) -> None:
        """Set the frequency correction: served time runs ``ppb`` parts per billion faster."""
        ...

    def frequency_ppb(self) -> float:
        """The frequency correction in force."""
        ...

    def remaining_slew_ns(self) -> int:
        """Correction decided but not yet in served time (cooked minus served)."""
        ...

    def add_step_handler(self, handler: StepHandler) -> None:
        """Register ``handler`` to be told of every step."""
        ...


@runtime_checkable
class TimedClock(Protocol):
    """A clock with work of its own to do later (the system clock ends its slews).

    Its owner asks ``timer_due_in_ns()`` after every clock action and timer, and calls
    ``on_timer()`` once that long has passed (monotonic time runs at the clock's rate).
    Calling it late or early is harmless; only the kernel clock's overshoot grows.
    """

    def timer_due_in_ns(self) -> int | None:
        """ns until ``on_timer()`` is wanted (0: now); None: nothing pending."""
        ...

    def on_timer(self) -> None:
        """Do the work that has come due (no-op if none)."""
        ...
