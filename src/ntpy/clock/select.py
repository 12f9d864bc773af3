"""Choosing between the system clock and the virtual clock at start-up.

The choice rests on one fact: does this process hold CAP_SYS_TIME? Without it every
adjtimex that changes something fails with EPERM, so "auto" falls back to the virtual
clock and still serves disciplined time. The capability is read from
``/proc/self/status`` (CapEff, bit 25) by ``ntpy.clock.capability``, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

from ntpy.clock.base import Clock
from ntpy.clock.capability import CAP_SYS_TIME as CAP_SYS_TIME
from ntpy.clock.capability import has_cap_sys_time as has_cap_sys_time
from ntpy.clock.errors import ClockError
from ntpy.clock.slewplan import DEFAULT_MAX_SLEW_PPM
from ntpy.clock.system import LibcLike, SystemClock
from ntpy.clock.virtual import VirtualClock

CLOCK_MODES = ("auto", "system", "virtual")

_VIRTUAL_WHY = "served time is system time plus ntpy's correction; the system clock is left alone"
_SYSTEM_WHY = (
    "ntpy steps, slews (tick + frequency) and sets the frequency of the kernel clock with "
    "adjtimex, and serves the corrected time while the kernel clock slews"
)


def choose_clock(
    mode: str,
    *,
    cap_sys_time: bool | None = None,
    libc: LibcLike | None = None,
    realtime: Callable[[], int] | None = None,
    max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM,
) -> tuple[Clock, str]:
    """Build the clock for ``mode`` ("auto" | "system" | "virtual") and say why, for the log.

    ``cap_sys_time`` overrides the capability check and ``libc``/``realtime`` are passed to
    the clocks (tests use them; the daemon leaves them as None). ``max_slew_ppm`` is the
    system clock's fastest slew (``tinker maxslewrate``). Raises ``ClockError`` when
    "system" is asked for without CAP_SYS_TIME, and ``ValueError`` for an unknown mode.
    """
    if mode not in CLOCK_MODES:
        raise ValueError(f"unknown clock mode {mode!r}; expected one of {', '.join(CLOCK_MODES)}")
    if mode == "virtual":
        return _virtual(realtime), f"virtual clock (requested): {_VIRTUAL_WHY}"
    cap = has_cap_sys_time() if cap_sys_time is None else cap_sys_time
    if mode == "system":
        if not cap:
            raise ClockError(
                "clock mode 'system' needs CAP_SYS_TIME to adjust the kernel clock; run as "
                "root or grant cap_sys_time, or use clock mode 'virtual' or 'auto'"
            )
        return (
            SystemClock(libc, adjustable=True, max_slew_ppm=max_slew_ppm),
            f"system clock (requested): {_SYSTEM_WHY}",
        )
    if cap:
        return (
            SystemClock(libc, adjustable=True, max_slew_ppm=max_slew_ppm),
            f"system clock (CAP_SYS_TIME held): {_SYSTEM_WHY}",
        )
    return _virtual(realtime), f"virtual clock (no CAP_SYS_TIME): {_VIRTUAL_WHY}"


VIRTUAL_SLEW_RATE_PPM = 10_000.0
"""The daemon's virtual clock slews at up to 1%: a start-up offset just under the step
threshold (0.128 s) is gone in 13 s instead of 4 minutes at the kernel's 500 ppm, and clients
see a rate error far smaller than chrony's default maximum slew (8.3%)."""


def _virtual(realtime: Callable[[], int] | None) -> VirtualClock:
    if realtime is None:
        return VirtualClock(slew_rate_ppm=VIRTUAL_SLEW_RATE_PPM)
    return VirtualClock(realtime, slew_rate_ppm=VIRTUAL_SLEW_RATE_PPM)
