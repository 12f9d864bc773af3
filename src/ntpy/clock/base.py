"""The one clock interface every part of ntpy reads time through.

Three implementations share it: the system clock (adjtimex through ctypes), the virtual
clock (a software offset + frequency register over the system clock, like chrony ``-x``),
and the simulator's clock. Because the daemon only ever asks a ``Clock``, the same code
serves time in production, in an unprivileged container, and inside the simulator.

All times are integer nanoseconds since the Unix epoch ("served time" = the time ntpy
believes is true and hands to clients). Frequencies are in parts per billion (ppb) as
floats, because they are rates, not instants.
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
        """Start correcting served time by ``offset_ns`` gradually (replaces any slew running)."""
        ...

    def set_frequency_ppb(self, ppb: float) -> None:
        """Set the frequency correction: served time runs ``ppb`` parts per billion faster."""
        ...

    def frequency_ppb(self) -> float:
        """The frequency correction in force."""
        ...

    def remaining_slew_ns(self) -> int:
        """Offset still to be corrected by a slew in progress."""
        ...

    def add_step_handler(self, handler: StepHandler) -> None:
        """Register ``handler`` to be told of every step."""
        ...
