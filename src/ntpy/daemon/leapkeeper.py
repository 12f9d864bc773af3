"""The daemon's leap-second shell: the leap file, the clock's arm, the smear, the wakeups.

The decisions are the core's (``core.leap``: which leap, when to announce it, when to
arm); this module carries them out: it reads the ``leapfile`` (at start and on SIGHUP,
warning with the fix when it is expired or corrupt), hands the table to the engine, arms
the clock for the last day before the leap (``clock.leap.arm_leap``: STA_INS/STA_DEL on
the kernel clock, a step at 23:59:60 on the virtual clock), points the serve path's
``SmearedClock`` at the pending leap, and wakes at every boundary (midnight, the leap)
so the served LI and the arm change on time even when no poll falls there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from ntpy.clock.base import Clock
from ntpy.clock.leap import SmearedClock, arm_leap
from ntpy.config import Config
from ntpy.config.leapfile import corrupt_warning, expiry_warning, load_leap_file
from ntpy.core.engine import SyncEngine
from ntpy.core.leap import LeapEvent, SmearPolicy, civil_from_days, next_boundary_ns
from ntpy.core.leapfile import LeapFileError, LeapTable
from ntpy.core.packet import LEAP_ADD, LEAP_DEL
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.loop import Loop

log = logging.getLogger("ntpy.leap")

WAKE_MARGIN_NS = 1_000_000
"""Wake this long after a boundary, so the clock reads past it."""


def describe(event: LeapEvent) -> str:
    """'insert 23:59:60 UTC at the end of 2026-12-31 (from the leapfile)'."""
    y, m, d = civil_from_days(event.at_unix_s // 86_400 - 1)
    what = "insert 23:59:60" if event.step > 0 else "delete 23:59:59"
    return f"{what} UTC at the end of {y:04d}-{m:02d}-{d:02d} (from the {event.source})"


class LeapKeeper:
    """Owns the leap file's table and the leap's effects on the clock and served state."""

    def __init__(
        self,
        engine: SyncEngine,
        clock: Clock,
        loop: Loop,
        cooked_now: Callable[[], int],
        refresh: Callable[[], None],
        smeared: SmearedClock | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.loop = loop
        self.cooked_now = cooked_now
        self.refresh = refresh
        self.smeared = smeared
        self.table: LeapTable | None = None
        self.event: LeapEvent | None = None
        self.armed = 0
        self._gen = 0
        self._due: int | None = None

    def load(self, path: str | None) -> None:
        """(Re)read the leap file; a bad one is warned about and not used."""
        table: LeapTable | None = None
        if path:
            try:
                table = load_leap_file(path)
            except LeapFileError as exc:
                log.warning("%s", corrupt_warning(path, exc))
            else:
                now = self.cooked_now()
                if table.expired(now):
                    log.warning("%s", expiry_warning(path, table))
                else:
                    nxt = table.next_leap(now)
                    log.info(
                        "leapfile %s: %d entries, TAI-UTC %s s, expires in %d days; next leap %s",
                        path,
                        len(table.entries),
                        table.tai_offset(now),
                        (table.expires_unix_s * NS_PER_S - now) // (86_400 * NS_PER_S),
                        "none listed"
                        if nxt is None
                        else describe(LeapEvent(nxt[0], nxt[1], "leapfile")),
                    )
        self.table = table
        self.engine.set_leap_table(table)

    def served(self, state: SystemState) -> SystemState:
        """The state to serve: a smearing server does not announce the leap (the clients
        would apply it on top of the smear)."""
        if self.smeared is not None and state.leap in (LEAP_ADD, LEAP_DEL):
            return replace(state, leap=0)
        return state

    def update(self) -> None:
        """After every state publication: follow the pending leap, arm the clock, and
        wake at the next boundary."""
        now = self.cooked_now()
        event = self.engine.leap_event(now)
        if event != self.event:
            if event is not None:
                how = (
                    f"smeared over {self.smeared.policy.interval_s} s ({self.smeared.policy.mode})"
                    if self.smeared is not None
                    else "announced to clients (LI) until then"
                )
                log.warning("leap second pending: %s; %s", describe(event), how)
            elif self.event is not None:
                log.info("leap second no longer pending (%s)", describe(self.event))
            self.event = event
        if self.smeared is not None:
            self.smeared.follow(event, now)
        try:
            armed = arm_leap(self.clock, event, now)
        except Exception:  # a failed adjtimex must not stop time keeping
            log.exception("arming the clock for the leap second failed")
            armed = self.armed
        if armed != self.armed:
            log.info(
                "clock %s for the leap second at the next midnight UTC",
                "disarmed"
                if not armed
                else ("armed to insert" if armed > 0 else "armed to delete"),
            )
            self.armed = armed
        self._schedule(next_boundary_ns(now, event) - now)

    def _schedule(self, wait_ns: int) -> None:
        due = time.monotonic_ns() + max(0, wait_ns) + WAKE_MARGIN_NS
        if self._due is not None and self._due <= due and self._due > time.monotonic_ns():
            return
        self._gen += 1
        gen = self._gen
        self._due = due
        self.loop.call_at(due, lambda: self._on_timer(gen))

    def _on_timer(self, gen: int) -> None:
        if gen != self._gen:
            return
        self._due = None
        self.refresh()  # republishes the state, which calls update() again
        if self._due is None:
            self.update()


def build_smear(config: Config, clock: Clock) -> SmearedClock | None:
    """The serve path's smeared clock for ``leapsmear`` (None without it), said in the log:
    clients must not mix smearing and non-smearing servers."""
    spec = config.leapsmear
    if spec is None:
        return None
    policy = SmearPolicy(spec.mode, spec.interval_s)
    if spec.mode == "noon":
        how = "linearly over 24 h, noon to noon UTC around the leap (as Google's public NTP)"
    else:
        how = f"linearly over the {spec.interval_s} s before the leap (NTPsec leapsmearinterval)"
    log.warning(
        "leapsmear: this server SMEARS leap seconds %s and does not announce them; its "
        "clients must not mix it with servers that do not smear",
        how,
    )
    return SmearedClock(clock, policy)
