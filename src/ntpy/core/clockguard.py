"""Is this clock believable at start-up? The clock against the last time it was known good.

The Oxide incident: a rack's time server came up without upstream connectivity, its local
clock was years off, and it served that clock to the fleet as good time. Two rules stop it.
First (``core/sysvars.py``), a local clock or orphan fallback takes over only for a clock
that was synchronized -- in this run, or recently before the start, as the last-good time
file says (``clock_vouched``). Second (this module), a clock that disagrees with that file
is refused at start: earlier than the last time it was known good by more than the panic
threshold (time does not run backwards; an RTC that lost power does), or later by more than
a year (an RTC glitch; a machine really off that long is rare and the admin can say so).

Pure: the daemon reads the file and the clock and passes both in; the words for the admin
(dates) are the daemon's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core.timestamps import NS_PER_S

RECENT_NS = 86400 * NS_PER_S
"""How old a last-good time may be and still vouch for the clock (RTC drift of 20 ppm is
under 2 s a day)."""
MAX_AHEAD_NS = 366 * 86400 * NS_PER_S
DEFAULT_MAX_BEHIND_NS = 1000 * NS_PER_S
"""ntpd's panic threshold, used when ``tinker panic 0`` switched it off."""


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    """What the last-good time says about the clock now."""

    problem: str | None
    """"behind" or "ahead" when the clock is not believable; None if it is."""
    vouched: bool
    """The clock agrees with a last-good time younger than ``RECENT_NS``."""
    delta_ns: int
    """Clock now minus the last-good time."""


def judge_clock(now_ns: int, lastgood_ns: int | None, *, panic_ns: int) -> ClockVerdict:
    """``now_ns`` (the clock, Unix ns) against ``lastgood_ns`` (None: no file, nothing to
    judge by). ``panic_ns``: ``tinker panic`` (0: the default 1000 s)."""
    if lastgood_ns is None:
        return ClockVerdict(None, False, 0)
    delta = now_ns - lastgood_ns
    max_behind = panic_ns if panic_ns > 0 else DEFAULT_MAX_BEHIND_NS
    if delta < -max_behind:
        return ClockVerdict("behind", False, delta)
    if delta > MAX_AHEAD_NS:
        return ClockVerdict("ahead", False, delta)
    return ClockVerdict(None, delta <= RECENT_NS, delta)
