"""ntpy.clock: the clocks ntpy reads and disciplines.

``choose_clock(mode)`` picks the system clock (adjtimex, needs CAP_SYS_TIME) or the
virtual clock (a software correction over CLOCK_REALTIME, like chrony ``-x``); both
implement the ``Clock`` protocol from ``ntpy.clock.base``.
"""

from ntpy.clock.base import Clock, StepHandler
from ntpy.clock.capability import has_cap_sys_time
from ntpy.clock.errors import ClockError
from ntpy.clock.precision import measure_precision
from ntpy.clock.select import choose_clock
from ntpy.clock.system import KernelClockStatus, SystemClock
from ntpy.clock.virtual import VirtualClock

__all__ = [
    "Clock",
    "ClockError",
    "KernelClockStatus",
    "StepHandler",
    "SystemClock",
    "VirtualClock",
    "choose_clock",
    "has_cap_sys_time",
    "measure_precision",
]
