"""The synchronization engine: sources -> selection -> discipline -> served system state.

Sans-IO. The shell (daemon or simulator) calls ``handle_timer`` when ``next_wakeup`` is due
and ``handle_packet`` for each reply, carries out the returned actions in order, and reads
``system_state`` for the responder. Times: ``now_mono`` is CLOCK_MONOTONIC (timers only);
clock times are the *cooked* clock (``actions.cooked_now``): served time plus any slew still
to run, so a slew counts as applied the moment it is ordered.

Discipline, in brief (chrony-style rather than ntpd's PLL, because it measured better):
every accepted sample refits that source's regression; selection (RFC 5905 intersection and
clustering) picks truechimers and the system peer; the survivors' offsets are combined and
slewed away at once, and the residual frequency the regressions see is added to the clock's
frequency. Every correction is folded back into all stored samples, so the regressions keep
fitting across updates. The step/slew/panic policy and the frequency step live in
``discipline``. Beyond the panic threshold, the first update stops the daemon unless allowed
(``-g``, ``tinker panic 0``); after that, the sources claiming such an offset are ignored
and the engine holds over (``tinker panicexit 1`` restores ntpd's exit).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ntpy.core.actions import (
    Action,
    LogEvent,
    LoopStats,
    Panic,
    PeerStats,
    ReplaceSource,
    SendRequest,
    SetFrequency,
    SlewClock,
    StepClock,
)
from ntpy.core.discipline import (
    PANIC,
    STEP,
    WAIT,
    StepRules,
    decide,
    exit_message,
    fold_correction,
    frequency_step,
    holdover_message,
)
from ntpy.core.notices import Notices
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.report import (
    Outcome,
    label,
    never_reached,
    select_outcome,
    source_status,
    sync_status,
)
from ntpy.core.report import host as _host
from ntpy.core.select import Candidate, Selection, select_sources
from ntpy.core.source import NS, PHI_PPB, Source, SourceConfig
from ntpy.core.sourcestats import offset_at
from ntpy.core.status import SyncStatus, peer_status_word
from ntpy.core.system import (
    STRATUM_UNSYNC,
    LocalReference,
    SystemState,
    address_refid,
    unsynchronized,
)
from ntpy.core.timestamps import precision_to_ns

__all__ = ["SourceConfig", "SyncEngine", "SyncOptions"]

HOUSEKEEPING_NS = 4 * NS
FIRST_UPDATE_WAIT_NS = 16 * NS
FALSETICKER_REPLACE = 4
POOL_SILENT_POLLS = 4
MAX_FREQ_PPB = 500_000.0
FREQ_VAR_UNKNOWN = (100e-6) ** 2
"""Prior variance of our frequency with no drift file: about 100 ppm, a typical crystal."""
FREQ_VAR_DRIFTFILE = (1e-6) ** 2

REFID_LOOPBACK = 0x7F000001


@dataclass(frozen=True, slots=True)
class SyncOptions:
    precision: int = -20
    step_threshold_ns: int = 128_000_000
    """``tinker step``: larger offsets are stepped at once (first update) or after stepout."""
    stepout_ns: int = 300 * NS
    panic_threshold_ns: int = 1000 * NS
    """``tinker panic``: refuse offsets beyond this; 0 = no limit."""
    panic_exit: bool = False
    """``tinker panicexit``: beyond the panic threshold after the first update, stop (as
    ntpd) rather than ignore the sources claiming it and hold over."""
    allow_panic_step: bool = False
    """ntpd ``-g``: the first update may step any distance."""
    makestep: tuple[int, int] | None = None
    """chrony ``makestep THRESHOLD LIMIT``: step if beyond threshold in the first LIMIT
    updates (LIMIT < 0: always)."""
    maxdist_ns: int = 1_500_000_000
    mindist_ns: int = 1_000_000
    """``tos mindist``: the floor of every source's root distance (ntpd's sys_mindisp), so
    close sources with tiny distances still overlap and form a majority."""
    minsane: int = 1
    minclock: int = 3
    maxclock: int = 10
    initial_frequency_ppb: float | None = None
    local: LocalReference | None = None
    orphan_stratum: int = 16
    orphanwait_ns: int = 300 * NS
    clock_name: str = "virtual"


CLOCK_AVG = 8
"""Averaging constant for clock jitter (ntpd's CLOCK_AVG): RMS over about 8 updates of the
change between successive offsets."""
WANDER_AVG = 4
"""Averaging constant for frequency wander (ntpd uses the same 4 for clk_wander)."""


class SyncEngine:
    """Keeps time from upstream sources; see the module docstring."""

    def __init__(self, options: SyncOptions, random64: Callable[[], int]) -> None:
        self.opts = options
        self.rules = StepRules(
            options.step_threshold_ns,
            options.stepout_ns,
            options.panic_threshold_ns,
            options.allow_panic_step,
            options.makestep,
        )
        self.random64 = random64
        self.precision_ns = precision_to_ns(options.precision)
        self.sources: dict[int, Source] = {}
        self._next_id = 1
        self.frequency_ppb = options.initial_frequency_ppb or 0.0
        self.freq_prior_var = (
            FREQ_VAR_UNKNOWN if options.initial_frequency_ppb is None else FREQ_VAR_DRIFTFILE
        )
        self.system_peer: int | None = None
        self.selection: Selection | None = None
        self.outcome = Outcome(())
        self.notices = Notices()
        self.updates = 0
        self.synced = False
        self.ever_synced = False
        self.panicked = False
        self.spike_since: int | None = None
        self.start_mono: int | None = None
        self.last_selectable_mono: int | None = None
        self.next_housekeeping = 0
        self.fallback_active = False
        self.first_wait_over = False
        # System variables from the last clock update.
        self.sys_leap = LEAP_ALARM
        self.sys_stratum = STRATUM_UNSYNC
        self.sys_refid = 0
        self.sys_reference: int | None = None
        self.sys_root_delay = 0
        self.sys_root_disp = 0
        self.sys_offset = 0
        self.sys_jitter = 0
        self.sys_peer_address: str | None = None
        self.clock_jitter_sq = 0.0
        self.clock_wander_sq = 0.0

    # ----------------------------------------------------------------- sources

    def add_source(self, config: SourceConfig, now_mono: int) -> int:
        sid = self._next_id
        self._next_id += 1
        spread = (self.random64() % 1000) / 1000.0  # first poll within 1 s
        self.sources[sid] = Source(sid, config, self.precision_ns, now_mono, spread)
        return sid

    def remove_source(self, source_id: int) -> None:
        self.sources.pop(source_id, None)
        self.notices.forget(source_id)
        if self.system_peer == source_id:
            self.system_peer = None

    # ----------------------------------------------------------------- entry points

    def start(self, now_mono: int, now_clock: int) -> list[Action]:
        self.start_mono = now_mono
        self.next_housekeeping = now_mono
        actions: list[Action] = []
        if self.opts.initial_frequency_ppb is not None:
            self.frequency_ppb = max(
                -MAX_FREQ_PPB, min(MAX_FREQ_PPB, self.opts.initial_frequency_ppb)
            )
            actions.append(SetFrequency(self.frequency_ppb))
        if not self.sources:
            self._housekeeping(now_mono, now_clock, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def next_wakeup(self) -> int | None:
        times = [s.next_poll_mono for s in self.sources.values() if s.active]
        times.append(self.next_housekeeping)
        if self.updates == 0 and not self.first_wait_over and self.start_mono is not None:
            times.append(self.start_mono + FIRST_UPDATE_WAIT_NS)
        return min(times)

    def mark_sent(self, source_id: int, t1_clock: int) -> None:
        src = self.sources.get(source_id)
        if src is not None:
            src.mark_sent(t1_clock)

    def handle_timer(self, now_mono: int, now_clock: int) -> list[Action]:
        actions: list[Action] = []
        for src in list(self.sources.values()):
            if not src.due(now_mono):
                continue
            was_reachable, missed_first = src.reachable, never_reached(src)
            rnd = (self.random64() % 2000) / 1000.0 - 1.0
            data = src.poll_request(now_mono, self.random64(), rnd)
            actions.append(SendRequest(src.id, src.config.address, data))
            if not src.reachable and (was_reachable or missed_first):
                src.state = "unreachable"
                self.notices.source_unreachable(src, actions)
            if was_reachable and not src.reachable:
                if src.config.pool is not None:
                    src.replace_requested = True
                    actions.append(ReplaceSource(src.id, src.config.pool, "unreachable"))
            elif (
                src.config.pool is not None
                and not src.reachable
                and src.polls_unanswered >= POOL_SILENT_POLLS
                and not src.replace_requested
            ):
                # A pool address that never answered at all: ntpd drops such preemptible
                # associations too; the pool has others.
                src.replace_requested = True
                src.state = "unreachable"
                actions.append(ReplaceSource(src.id, src.config.pool, "never answered"))
        if (
            self.updates == 0
            and not self.first_wait_over
            and self.start_mono is not None
            and now_mono - self.start_mono >= FIRST_UPDATE_WAIT_NS
        ):
            # A source that never answered must not hold the first update hostage until
            # the next reply, which may be a whole poll away.
            self.first_wait_over = True
            if any(s.stats.estimate is not None for s in self.sources.values()):
                self._update(now_mono, now_clock, actions)
        if now_mono >= self.next_housekeeping:
            self._housekeeping(now_mono, now_clock, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def handle_packet(
        self, source_id: int, data: bytes, t4_clock: int, now_mono: int
    ) -> list[Action]:
        src = self.sources.get(source_id)
        if src is None:
            return []
        actions: list[Action] = []
        prev = src.stats.estimate
        m, reason = src.receive(data, t4_clock, now_mono)
        self.notices.source_replied(src, actions)
        if reason.startswith("kod_"):
            self._log_kiss(src, reason[4:], actions)
            if src.kod is not None:
                if self.system_peer == src.id:
                    self.system_peer = None
                if src.config.pool is not None:
                    actions.append(ReplaceSource(src.id, src.config.pool, reason))
        if m is None:
            self.notices.reason_changed(self, actions)
            return actions
        est = src.stats.add(m)
        if prev is not None:
            innovation = m.offset_ns - offset_at(prev, m.time_ns)
            sd = math.hypot(prev.offset_sd_ns, est.jitter_ns, m.delay_ns / 4.0)
            src.adapt_poll(innovation, sd, est)
        self._update(now_mono, t4_clock, actions)
        actions.append(
            PeerStats(
                time_ns=t4_clock,
                source_id=src.id,
                address=_host(src.config.address),
                status=peer_status_word(source_status(self, src, now_mono, t4_clock)),
                offset_ns=m.offset_ns,
                delay_ns=m.delay_ns,
                dispersion_ns=src.dispersion_now(t4_clock),
                jitter_ns=round(est.jitter_ns),
            )
        )
        self.notices.reason_changed(self, actions)
        return actions

    def _log_kiss(self, src: Source, code: str, actions: list[Action]) -> None:
        """At warning: each RATE (each one lengthens the poll), and DENY/RSTR (logged once:
        the source is never polled again)."""
        what = f"polling every {1 << src.poll} s" if code == "RATE" else "no longer polled"
        actions.append(LogEvent("warning", f"kiss-o'-death {code} from {self._label(src)}: {what}"))

    # ----------------------------------------------------------------- selection + discipline

    def _distance(self, src: Source, now_clock: int) -> int:
        est = src.stats.estimate
        last = src.stats.last()
        assert est is not None and last is not None
        return int(
            last.root_delay_ns / 2
            + last.root_dispersion_ns
            + est.min_delay_ns / 2
            + src.dispersion_now(now_clock)
            + est.jitter_ns
            + est.offset_sd_ns
        )

    def _candidates(self, now_clock: int, actions: list[Action]) -> list[Candidate]:
        out: list[Candidate] = []
        for src in self.sources.values():
            est = src.stats.estimate
            last = src.stats.last()
            src.tally = " "
            if not src.active or not src.reachable or est is None or last is None:
                continue
            if last.leap == LEAP_ALARM or src.config.noselect:
                continue
            dist = self._distance(src, now_clock)
            if dist > self.opts.maxdist_ns:
                src.state = "too far"
                continue
            offset = round(offset_at(est, now_clock))
            if src.panic_offset_ns is not None:
                if abs(offset) > self.opts.panic_threshold_ns:
                    continue
                src.panic_offset_ns = None
                actions.append(LogEvent("info", f"source {self._label(src)} is sane again"))
            out.append(
                Candidate(
                    id=src.id,
                    offset_ns=offset,
                    root_distance_ns=max(dist, self.opts.mindist_ns),
                    jitter_ns=max(1, round(est.jitter_ns)),
                    stratum=last.stratum,
                    leap=last.leap,
                    prefer=src.config.prefer,
                )
            )
        return out

    def _update(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        if self.panicked:
            return
        if self.updates == 0 and not self._ready_for_first_update(now_mono):
            return
        sel = self._select(now_mono, now_clock, actions)
        self._replace_bad_pool_members(sel, actions)
        if sel is None or sel.system_peer is None:
            return
        self.notices.system_peer(self.sources[sel.system_peer], actions)
        self.system_peer = sel.system_peer
        offset = sel.offset_ns
        if not self._discipline(offset, sel, now_mono, now_clock, actions):
            return
        self._set_system_vars(sel, now_clock, actions)
        self.sources[sel.system_peer].tally = "*"  # only now: peers agrees with stat

    def _ready_for_first_update(self, now_mono: int) -> bool:
        """Hold the first clock update until every source has answered (or one iburst,
        16 s, has passed): otherwise whichever server answers first -- a liar, say -- would
        win the first selection alone, and could set the clock or trip the panic check."""
        if all(s.stats.estimate is not None for s in self.sources.values() if s.active):
            return True
        return self.start_mono is not None and now_mono - self.start_mono >= FIRST_UPDATE_WAIT_NS

    def _replace_bad_pool_members(self, sel: Selection | None, actions: list[Action]) -> None:
        """A pool member that keeps being a falseticker is dropped and replaced (the pool
        has plenty of others; a liar among a few sources weakens every later vote)."""
        false_ids = set(sel.falsetickers) if sel is not None else set()
        for src in list(self.sources.values()):
            if src.id in false_ids:
                src.falseticker_count += 1
            else:
                src.falseticker_count = 0
            if src.config.pool is not None and src.falseticker_count >= FALSETICKER_REPLACE:
                src.falseticker_count = 0
                actions.append(
                    LogEvent(
                        "warning", f"pool source {self._label(src)} is a falseticker: replacing it"
                    )
                )
                actions.append(ReplaceSource(src.id, src.config.pool, "falseticker"))

    def _mark_tallies(self, sel: Selection | None) -> None:
        if sel is None:
            # No majority: as in ntpd, every candidate is a falseticker ('x').
            tally = "x" if self.outcome.failure is not None else " "
            for sid in self.outcome.candidates:
                src = self.sources[sid]
                src.tally, src.state = tally, str(self.outcome.failure)
            return
        for sid in sel.falsetickers:
            self.sources[sid].tally, self.sources[sid].state = "x", "falseticker"
        for sid in sel.outliers:
            self.sources[sid].tally, self.sources[sid].state = "-", "outlier"
        for sid in sel.excess:
            self.sources[sid].tally, self.sources[sid].state = "#", "excess"
        for sid in sel.survivors:  # excess ids are never survivors
            self.sources[sid].tally, self.sources[sid].state = "+", "candidate"
        if sel.system_peer is not None:
            # '*' only while the clock follows it: before the first update, or while an
            # update is refused, 'ntpy peers' must not claim a sync that 'ntpy stat' denies.
            following = self.synced and not self.panicked
            self.sources[sel.system_peer].tally = "*" if following else "+"
            self.sources[sel.system_peer].state = "sync" if following else "selected"

    def _discipline(
        self, offset: int, sel: Selection, now_mono: int, now_clock: int, actions: list[Action]
    ) -> bool:
        """Step / slew / refuse ``offset`` (policy in ``discipline.decide``). False if the
        clock was not updated."""
        d = decide(offset, self.rules, self.updates, self.spike_since, now_mono)
        self.spike_since = d.spike_since
        if d.warning is not None:
            actions.append(LogEvent("warning", d.warning))
        if d.action == PANIC:
            self._refuse(offset, sel, now_mono, now_clock, actions)
            return False
        if d.action == WAIT:
            return False
        step = d.action == STEP
        if step:
            actions.append(StepClock(offset))
            actions.append(LogEvent("warning", f"stepped the clock by {offset / NS:+.6f} s"))
            fold_correction(self.sources.values(), now_clock, offset, 0.0)
        else:
            estimates = (self.sources[sid].stats.estimate for sid in sel.survivors)
            dfreq = frequency_step(estimates, self.freq_prior_var)
            new_ppb = max(-MAX_FREQ_PPB, min(MAX_FREQ_PPB, self.frequency_ppb + dfreq * 1e9))
            applied = (new_ppb - self.frequency_ppb) / 1e9
            if applied:
                self.frequency_ppb = new_ppb
                actions.append(SetFrequency(new_ppb))
            if offset:
                actions.append(SlewClock(offset))
            fold_correction(self.sources.values(), now_clock, offset, applied)
        # ntpd's clock jitter: RMS of the change between successive offsets, floored at
        # the clock's precision (so ntpq's clk_jitter means the same thing for both).
        change = max(abs(offset - self.sys_offset), self.precision_ns)
        self.sys_offset = offset
        self.updates += 1
        self.clock_jitter_sq += (float(change) ** 2 - self.clock_jitter_sq) / CLOCK_AVG
        dppb = 0.0 if step else applied * 1e9
        self.clock_wander_sq += (dppb**2 - self.clock_wander_sq) / WANDER_AVG
        peer = self.sources.get(self.system_peer) if self.system_peer is not None else None
        actions.append(
            LoopStats(
                time_ns=now_clock,
                offset_ns=offset,
                frequency_ppb=self.frequency_ppb,
                jitter_ns=round(math.sqrt(self.clock_jitter_sq)),
                wander_ppb=math.sqrt(self.clock_wander_sq),
                poll=peer.poll if peer is not None else 6,
            )
        )
        return True

    def _refuse(
        self, offset: int, sel: Selection, now_mono: int, now_clock: int, actions: list[Action]
    ) -> None:
        """An offset beyond the panic threshold. On the first update, or with
        ``panic_exit``, stop as ntpd does. Otherwise mark the sources that claim it, log
        each once, and reselect without them: the clock holds over (and goes unsynchronized
        when the root distance passes maxdist) unless sane sources are left."""
        limit = self.opts.panic_threshold_ns
        if self.updates == 0 or self.opts.panic_exit:
            self.panicked = True
            msg = exit_message(offset, limit)
            actions.append(LogEvent("error", msg))
            actions.append(Panic(offset, msg))
            return
        wild = []
        for sid in sel.survivors:
            est = self.sources[sid].stats.estimate
            own = round(offset_at(est, now_clock)) if est is not None else offset
            if abs(own) > limit:
                wild.append((self.sources[sid], own))
        for src, own in wild or [(self.sources[sel.survivors[0]], offset)]:
            src.panic_offset_ns, src.state, src.tally = own, "panic", " "
            actions.append(LogEvent("error", holdover_message(self._label(src), own, limit)))
        self._reselect(now_mono, now_clock, actions)

    def _set_system_vars(self, sel: Selection, now_clock: int, actions: list[Action]) -> None:
        assert sel.system_peer is not None
        peer = self.sources[sel.system_peer]
        est = peer.stats.estimate
        last = peer.stats.last()
        assert est is not None and last is not None
        self.sys_leap = sel.leap
        self.sys_stratum = min(last.stratum + 1, STRATUM_UNSYNC)
        self.sys_refid = address_refid(peer.config.address)
        self.sys_peer_address = _host(peer.config.address)
        self.sys_reference = now_clock + self.sys_offset
        self.sys_root_delay = last.root_delay_ns + est.min_delay_ns
        self.sys_root_disp = (
            last.root_dispersion_ns
            + peer.dispersion_now(now_clock)
            + int(est.jitter_ns)
            + abs(self.sys_offset)
        )
        self.sys_jitter = sel.jitter_ns
        if not self.synced:
            actions.append(
                LogEvent(
                    "info",
                    f"synchronized to {self._label(peer)} at stratum {self.sys_stratum}"
                    + (" (regained)" if self.ever_synced else ""),
                )
            )
        self.synced = True
        self.ever_synced = True
        self.fallback_active = False

    # ----------------------------------------------------------------- holdover and fallback

    def _root_distance(self, now_clock: int) -> int:
        if self.sys_reference is None:
            return 1 << 62
        age = max(0, now_clock - self.sys_reference)
        return self.sys_root_delay // 2 + self.sys_root_disp + age * PHI_PPB // NS

    def _fallback(self) -> LocalReference | None:
        if self.opts.local is not None:
            return self.opts.local
        if self.opts.orphan_stratum < STRATUM_UNSYNC:
            return LocalReference(self.opts.orphan_stratum, REFID_LOOPBACK)
        return None

    def _select(self, now_mono: int, now_clock: int, actions: list[Action]) -> Selection | None:
        """Run selection over the current candidates, mark the tallies, note what changed."""
        cands = self._candidates(now_clock, actions)
        if cands:
            self.last_selectable_mono = now_mono
        sel = select_sources(
            cands,
            minsane=self.opts.minsane,
            minclock=self.opts.minclock,
            maxclock=self.opts.maxclock,
            previous_peer=self.system_peer,
        )
        self.selection = sel
        names = {c.id: label(self.sources[c.id]) for c in cands}
        self.outcome = select_outcome(cands, sel, self.opts.minsane, names)
        self._mark_tallies(sel)
        self.notices.selected(self, sel, actions)
        return sel

    def _reselect(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        """Re-run selection without touching the clock, so tallies and the system peer
        follow sources that stopped answering (replies are not the only event that counts)."""
        sel = self._select(now_mono, now_clock, actions)
        if sel is None or sel.system_peer is None:
            self.system_peer = None  # the reason ("holding over: ...") is logged on change

    def _housekeeping(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        self.next_housekeeping = now_mono + HOUSEKEEPING_NS
        if self.ever_synced or self.sources:
            self._reselect(now_mono, now_clock, actions)
        if self.synced and self._root_distance(now_clock) > self.opts.maxdist_ns:
            self.synced = False
            actions.append(
                LogEvent(
                    "warning",
                    "sync lost: no usable source and the root distance has grown beyond "
                    f"maxdist ({self.opts.maxdist_ns / NS:g} s)",
                )
            )
        fallback = self._fallback()
        if fallback is None:
            return
        upstream = any(s.active for s in self.sources.values())
        last_ok = self.last_selectable_mono
        since = self.start_mono if last_ok is None else last_ok
        lost = not upstream or (
            since is not None
            and now_mono - since >= self.opts.orphanwait_ns
            and not self._has_selection()
        )
        if lost and not self.fallback_active:
            self.fallback_active = True
            what = "local clock" if self.opts.local is not None else "orphan mode"
            actions.append(
                LogEvent(
                    "warning" if upstream else "info",
                    f"serving from the {what} at stratum {fallback.served_stratum}"
                    + (" (no upstream source)" if upstream else ""),
                )
            )
        elif not lost and self.fallback_active and self.synced:
            self.fallback_active = False

    def _has_selection(self) -> bool:
        return self.selection is not None and self.selection.system_peer is not None

    # ----------------------------------------------------------------- views

    def system_state(self, now_clock: int) -> SystemState:
        if self.synced and self._root_distance(now_clock) <= self.opts.maxdist_ns:
            return SystemState(
                leap=self.sys_leap,
                stratum=self.sys_stratum,
                refid=self.sys_refid,
                reference_ns=self.sys_reference,
                root_delay_ns=self.sys_root_delay,
                root_dispersion_ns=self.sys_root_disp,
                precision=self.opts.precision,
            )
        fallback = self._fallback()
        if fallback is not None and self.fallback_active:
            return fallback.state(now_clock, self.opts.precision)
        return unsynchronized(self.opts.precision)

    def _label(self, src: Source) -> str:
        return label(src)

    def status(self, now_mono: int, now_clock: int) -> SyncStatus:
        return sync_status(self, now_mono, now_clock)
