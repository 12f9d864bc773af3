"""Which leap second is coming, when to announce it, when to arm the clock, how to smear it.

Inputs: the time now (Unix ns, the cooked clock), the upstream vote (the leap indicator a
strict majority of the survivors announces, ``core.combine.leap_vote``, as ntpd's
``sys_leap`` vote) and the leap file's table when it is valid (hash checked, not expired).
The valid file wins over the vote: upstreams can be wrong, the IERS list is not.

The rules, and why:

* **The event** is always at a UTC midnight that starts a month (IERS: end of June or
  December first, then March or September). A vote has no date, so it means the end of
  the current month (ntpd's rule). A vote on the first day of a month is ignored: a real
  announcement covers at least the last day before the event, and a vote on the day after
  is an upstream still announcing the leap just done (which would otherwise schedule a
  second one a month later).
* **Announcing** (LI 1 or 2 in our replies): during the whole UTC month that ends with the
  leap, until the leap instant -- ntpd's behaviour (RFC 5905 says "the last minute of the
  day" of the event; ntpd and most servers announce for the month, and chrony and ntpd
  clients only act on the leap day anyway).
* **Arming the clock** (kernel STA_INS/STA_DEL, or the virtual clock's step): only during
  the last UTC day before the event, because the kernel performs an armed leap at the
  next midnight, whichever it is.
* **Smearing** (optional, served time only): see ``smear_offset_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core.leapfile import LeapTable
from ntpy.core.packet import LEAP_ADD, LEAP_DEL, LEAP_NONE
from ntpy.core.timestamps import NS_PER_S

DAY_S = 86_400
DAY_NS = DAY_S * NS_PER_S


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month 1..12, day 1..31) of a day count since 1970-01-01 (proleptic
    Gregorian; H. Hinnant's algorithm -- the core may not import ``datetime``)."""
    z = days + 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a civil date (the inverse of ``civil_from_days``)."""
    y = year - (1 if month <= 2 else 0)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def month_start_s(now_unix_ns: int) -> int:
    """Unix seconds of 00:00 UTC on the first day of the month containing ``now``."""
    y, m, _d = civil_from_days(now_unix_ns // DAY_NS)
    return days_from_civil(y, m, 1) * DAY_S


def next_month_start_s(now_unix_ns: int) -> int:
    """Unix seconds of 00:00 UTC on the first day of the month after ``now``'s."""
    y, m, _d = civil_from_days(now_unix_ns // DAY_NS)
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return days_from_civil(y, m, 1) * DAY_S


@dataclass(frozen=True, slots=True)
class LeapEvent:
    """A leap second at ``at_unix_s`` (a UTC midnight): +1 inserts 23:59:60, -1 deletes
    23:59:59 of the day before. ``source``: "leapfile" or "upstream"."""

    at_unix_s: int
    step: int
    source: str

    @property
    def indicator(self) -> int:
        """The NTP leap indicator that announces it."""
        return LEAP_ADD if self.step > 0 else LEAP_DEL

    @property
    def at_ns(self) -> int:
        return self.at_unix_s * NS_PER_S


def pending_leap(now_unix_ns: int, table: LeapTable | None, vote: int) -> LeapEvent | None:
    """The leap to announce now: the valid file's next leap if it falls at the end of this
    month; else the upstream vote (``vote``: leap indicator 0, 1 or 2). None: none."""
    if table is not None and not table.expired(now_unix_ns):
        nxt = table.next_leap(now_unix_ns)
        if nxt is None or nxt[0] != next_month_start_s(now_unix_ns):
            return None
        return LeapEvent(nxt[0], nxt[1], "leapfile")
    if vote not in (LEAP_ADD, LEAP_DEL):
        return None
    if now_unix_ns < month_start_s(now_unix_ns) * NS_PER_S + DAY_NS:
        return None  # the first day of a month: a stale announcement of the leap just done
    return LeapEvent(next_month_start_s(now_unix_ns), 1 if vote == LEAP_ADD else -1, "upstream")


def announce(now_unix_ns: int, event: LeapEvent | None) -> int:
    """The leap indicator to serve (synchronized servers only): the event's until it
    happens, else none."""
    if event is None or now_unix_ns >= event.at_ns:
        return LEAP_NONE
    return event.indicator


def clock_leap(now_unix_ns: int, event: LeapEvent | None) -> int:
    """What to arm the clock with now (+1, -1, 0): the event's step during its last day.

    During an inserted second the clock reads the last second again (before
    ``at_ns``), so the arm stays set until the clock is past midnight once more; a clock
    that already did its leap waits for the disarm (the kernel's TIME_WAIT) and does not
    repeat it."""
    if event is None or not event.at_ns - DAY_NS <= now_unix_ns < event.at_ns:
        return 0
    return event.step


def next_boundary_ns(now_unix_ns: int, event: LeapEvent | None) -> int:
    """The next instant (Unix ns) at which ``announce``/``clock_leap``/``pending_leap`` can
    change: the start of the next day, or the leap itself. The shell wakes there to
    republish the served state and re-arm the clock."""
    day_end = (now_unix_ns // DAY_NS + 1) * DAY_NS
    if event is not None:
        # a deleting clock jumps from 23:59:59 straight to the leap: wake at the jump
        jump = event.at_ns - (NS_PER_S if event.step < 0 else 0)
        if now_unix_ns < jump < day_end:
            return jump
        if now_unix_ns < event.at_ns < day_end:
            return event.at_ns
    return day_end


# --- smearing ------------------------------------------------------------------------------

SMEAR_NOON = "noon"
"""Google's public NTP: a linear smear over 24 h from noon to noon around the leap."""
SMEAR_INTERVAL = "interval"
"""NTPsec's ``leapsmearinterval S``: a linear smear over the S seconds ending at the leap."""


@dataclass(frozen=True, slots=True)
class SmearPolicy:
    """``mode`` one of SMEAR_NOON / SMEAR_INTERVAL; ``interval_s`` the length (the noon
    smear is 86400 s)."""

    mode: str
    interval_s: int

    def __post_init__(self) -> None:
        if self.mode not in (SMEAR_NOON, SMEAR_INTERVAL):
            raise ValueError(f"unknown smear mode {self.mode!r}")
        if not 1 <= self.interval_s <= 2 * DAY_S:
            raise ValueError(f"smear interval must be 1..{2 * DAY_S} s, got {self.interval_s}")

    def window(self, event: LeapEvent) -> tuple[int, int]:
        """(start, end) of the smear in Unix ns of the *unsmeared, leap-stepped* clock."""
        if self.mode == SMEAR_NOON:
            half = DAY_NS // 2
            return event.at_ns - half, event.at_ns + half
        return event.at_ns - self.interval_s * NS_PER_S, event.at_ns


def smear_offset_ns(
    now_unix_ns: int, event: LeapEvent | None, policy: SmearPolicy, leap_done: bool
) -> int:
    """What to add to served timestamps at ``now`` (the clock's reading, which does the
    leap as a step) so that the served time runs smoothly through the leap instead.

    ``leap_done``: the clock has already performed this leap. It tells the two passes
    through a repeated (inserted) second apart, and which side of a deleted one we are on.

    Model: over the window the smeared time advances evenly, absorbing ``step`` seconds.
    With ``e`` the seconds elapsed since the window start in real (SI) time and ``w`` the
    window's length on the clock, smeared = start + e * w / (w + step); the clock reads
    start + e before the leap and start + e - step after it. So the offset is
    ``-e * step / (w + step)`` before and ``step - e * step / (w + step)`` after: zero at
    both ends, continuous at the leap, slope at most 1 s per window. Exact integer ns.
    """
    if event is None:
        return 0
    start, end = policy.window(event)
    step_ns = event.step * NS_PER_S
    elapsed = now_unix_ns - start + (step_ns if leap_done else 0)
    w = end - start
    if elapsed <= 0 or elapsed >= w + step_ns:
        return 0
    shrink = elapsed * step_ns // (w + step_ns)
    return (step_ns - shrink) if leap_done else -shrink
