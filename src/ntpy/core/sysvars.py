"""The system-variables stage: what this server tells its clients, after each clock update
and while no upstream can be followed.

After an update the system peer's stratum, refid and root delay/dispersion become ours
(RFC 5905 clock_update, chrony's ``reference.c``). Between updates they age: root
dispersion grows at PHI from the reference time, and once the root distance passes
``tos maxdist`` the server says it is unsynchronized. With no usable upstream for
``orphanwait``, a configured fallback -- the local clock (ntpd's LOCAL driver, chrony's
``local``) or orphan mode -- serves instead. ``served`` is the snapshot the responder uses.

A fallback serves only a clock known to be good (``armed``): synchronized in this run (with
chrony's ``local activate D``: to a root distance below D), or vouched for by the last-good
time file at start (``core/clockguard.py``), or the admin allowed a cold start (``tos
coldstart 1``). Until then it stays off and clients get "unsynchronized", so a server that
boots with a wrong clock and no network does not hand that clock out as good time. A local
clock configured with no upstream at all is the time source the admin chose and serves at
once.

Leap seconds (``core/leap.py``): the selection's vote (a strict majority of the survivors)
and the leap file, when valid, decide the pending leap; the served LI announces it during
the month of the event only, and the shell arms the clock from ``leap_event``.
"""

from __future__ import annotations

from dataclasses import replace

from ntpy.core.actions import Action, LogEvent
from ntpy.core.leap import LeapEvent, announce, pending_leap
from ntpy.core.leapfile import LeapTable
from ntpy.core.options import SyncOptions
from ntpy.core.packet import LEAP_ALARM, refid_from_text
from ntpy.core.select import Selection
from ntpy.core.source import Source, label
from ntpy.core.system import (
    PHI_PPB,
    STRATUM_UNSYNC,
    LocalReference,
    SystemState,
    address_refid,
    unsynchronized,
)
from ntpy.core.timestamps import NS_PER_S

REFID_LOOPBACK = 0x7F000001
"""Orphan mode's refid (127.0.0.1)."""
FAR_AWAY = 1 << 62
"""Root distance before the first update: beyond any maxdist."""


class SystemVariables:
    """Leap, stratum, refid, reference time, root delay/dispersion and the fallback state."""

    def __init__(self, options: SyncOptions) -> None:
        self.opts = options
        self.leap = LEAP_ALARM
        """The survivors' leap vote at the last update (3 before the first)."""
        self.leap_table: LeapTable | None = None
        """The leap file's table, when it parsed and its hash matched."""
        self.stratum = STRATUM_UNSYNC
        self.refid = 0
        self.reference_ns: int | None = None
        self.root_delay_ns = 0
        self.root_disp_ns = 0
        self.jitter_ns = 0
        self.synced = False
        """Following upstream, and the root distance is within maxdist."""
        self.ever_synced = False
        self.fallback_active = False
        self.armed = options.fallback_cold_start or options.clock_vouched
        """The fallback may take over (see the module doc)."""
        self._held_back_logged = False

    def update(
        self, sel: Selection, peer: Source, offset_ns: int, now_clock: int, actions: list[Action]
    ) -> None:
        """Take the system variables from the system peer after a clock update."""
        est = peer.stats.estimate
        last = peer.stats.last()
        assert est is not None and last is not None
        self.leap = sel.leap
        self.stratum = min(last.stratum + 1, STRATUM_UNSYNC)
        clock = peer.refclock
        self.refid = (
            refid_from_text(clock.config.refid)
            if clock is not None
            else address_refid(peer.config.address)
        )
        self.reference_ns = now_clock + offset_ns
        self.root_delay_ns = last.root_delay_ns + est.min_delay_ns
        self.root_disp_ns = (
            last.root_dispersion_ns
            + peer.dispersion_now(now_clock)
            + int(est.jitter_ns)
            + abs(offset_ns)
        )
        self.jitter_ns = sel.jitter_ns
        if not self.synced:
            actions.append(
                LogEvent(
                    "info",
                    f"synchronized to {label(peer)} at stratum {self.stratum}"
                    + (" (regained)" if self.ever_synced else ""),
                )
            )
        self.synced = True
        self.ever_synced = True
        self.fallback_active = False
        activate = self.opts.fallback_activate_ns
        if not self.armed and (activate is None or self.root_distance(now_clock) < activate):
            self.armed = True
            if self.fallback() is not None and self._held_back_logged:
                actions.append(LogEvent("info", f"the {self._what()} may take over from now on"))

    def root_distance(self, now_clock: int) -> int:
        if self.reference_ns is None:
            return FAR_AWAY
        age = max(0, now_clock - self.reference_ns)
        return self.root_delay_ns // 2 + self.root_disp_ns + age * PHI_PPB // NS_PER_S

    def fallback(self) -> LocalReference | None:
        """The configured local clock, else orphan mode if ``tos orphan`` is set, else None."""
        if self.opts.local is not None:
            return self.opts.local
        if self.opts.orphan_stratum < STRATUM_UNSYNC:
            return LocalReference(self.opts.orphan_stratum, REFID_LOOPBACK)
        return None

    def housekeeping(
        self,
        upstream: bool,
        since: int | None,
        has_selection: bool,
        now_mono: int,
        now_clock: int,
        actions: list[Action],
    ) -> None:
        """Drop sync when the root distance passes maxdist; switch the fallback on after
        ``orphanwait`` without a selection (at once with no ``upstream`` source at all), and
        off once synchronized again. ``since``: when a source was last selectable (or the
        start)."""
        maxdist = self.opts.maxdist_ns
        if self.synced and self.root_distance(now_clock) > maxdist:
            self.synced = False
            actions.append(
                LogEvent(
                    "warning",
                    "sync lost: no usable source and the root distance has grown beyond "
                    f"maxdist ({maxdist / NS_PER_S:g} s)",
                )
            )
        fallback = self.fallback()
        if fallback is None:
            return
        lost = not upstream or (
            since is not None and now_mono - since >= self.opts.orphanwait_ns and not has_selection
        )
        if lost and not self.fallback_active:
            if (upstream or not self.opts.local_standalone) and not self.armed:
                self._hold_back(actions)
                return
            self.fallback_active = True
            what = self._what()
            actions.append(
                LogEvent(
                    "warning" if upstream else "info",
                    f"serving from the {what} at stratum {fallback.served_stratum}"
                    + (" (no usable upstream source)" if upstream else ""),
                )
            )
        elif not lost and self.fallback_active and self.synced:
            self.fallback_active = False

    def _what(self) -> str:
        return "local clock" if self.opts.local is not None else "orphan mode"

    def _hold_back(self, actions: list[Action]) -> None:
        """Say once why the fallback does not serve (the answer is 'unsynchronized')."""
        if self._held_back_logged:
            return
        self._held_back_logged = True
        activate = self.opts.fallback_activate_ns
        need = (
            "synchronized"
            if activate is None or not self.ever_synced
            else f"synchronized to a root distance below {activate / NS_PER_S:g} s"
        )
        actions.append(
            LogEvent(
                "warning",
                f"the {self._what()} stays off: this clock has not been {need} in this run, "
                "and no recent last-good time vouches for it; clients are told "
                "'unsynchronized' until an upstream is reached ('tos coldstart 1' lets a "
                "never-synchronized clock serve)",
            )
        )

    def leap_event(self, now_clock: int) -> LeapEvent | None:
        """The leap pending at ``now_clock``: the valid file's, else the upstream vote
        (while synchronized), else None."""
        vote = self.leap if self.synced else 0
        return pending_leap(now_clock, self.leap_table, vote)

    def served(self, now_clock: int) -> SystemState:
        """The system state the responder serves at ``now_clock``."""
        precision = self.opts.precision
        if self.synced and self.root_distance(now_clock) <= self.opts.maxdist_ns:
            return SystemState(
                leap=announce(now_clock, self.leap_event(now_clock)),
                stratum=self.stratum,
                refid=self.refid,
                reference_ns=self.reference_ns,
                root_delay_ns=self.root_delay_ns,
                root_dispersion_ns=self.root_disp_ns,
                precision=precision,
            )
        fallback = self.fallback()
        if fallback is not None and self.fallback_active:
            state = fallback.state(now_clock, precision)
            leap = announce(now_clock, self.leap_event(now_clock))
            return replace(state, leap=leap) if leap else state
        return unsynchronized(precision)
