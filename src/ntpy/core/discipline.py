"""The discipline stage: whether the combined offset is slewed, stepped, waited on or
refused, how much the frequency changes, and the loop statistics that follow.

The policy -- ntpd's step/stepout/panic thresholds, chrony's makestep, the shrunk
frequency step -- is pure functions of the offset, the thresholds and a little state, so it
reads in one place and is tested without sources or packets. ``Discipline`` holds the state
between updates (frequency, update count, pending spike, clock jitter and wander) and turns
a decision into clock actions, as chrony's ``reference.c`` does; every correction is folded
back into the sources' stored samples so their regressions keep fitting.

The panic threshold has two answers. On the first update (or with ``panic_exit``) the
offset is refused and the shell stops, as ntpd does: a clock that far off at start needs a
human or ``-g``. Once the clock was set, one upstream claiming a far-off time is much more
likely wrong than our disciplined clock, and exiting would let it switch the service off,
so the engine ignores that source and holds over instead (see ``SyncEngine``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ntpy.core.actions import Action, LogEvent, LoopStats, Panic, SetFrequency, SlewClock, StepClock
from ntpy.core.options import SyncOptions
from ntpy.core.select import Selection
from ntpy.core.source import Source, label
from ntpy.core.sourcestats import Estimate, offset_at
from ntpy.core.status import SourceState
from ntpy.core.timestamps import NS_PER_S, precision_to_ns

SLEW = "slew"
STEP = "step"
WAIT = "wait"
"""Beyond the step threshold, but not yet for ``stepout``: leave the clock alone."""
PANIC = "panic"
"""Beyond the panic threshold: refuse."""

MAX_FREQ_PPB = 500_000.0
FREQ_VAR_UNKNOWN = (100e-6) ** 2
"""Prior variance of our frequency with no drift file: about 100 ppm, a typical crystal."""
FREQ_VAR_DRIFTFILE = (1e-6) ** 2
CLOCK_AVG = 8
"""Averaging constant for clock jitter (ntpd's CLOCK_AVG): RMS over about 8 updates of the
change between successive offsets."""
WANDER_AVG = 4
"""Averaging constant for frequency wander (ntpd uses the same 4 for clk_wander)."""


@dataclass(frozen=True, slots=True)
class StepRules:
    """The thresholds ``decide`` applies (from ``tinker``, ``makestep`` and ``-g``)."""

    step_threshold_ns: int
    stepout_ns: int
    panic_threshold_ns: int
    allow_panic_step: bool
    makestep: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    """SLEW, STEP, WAIT or PANIC."""
    spike_since: int | None
    """When the offset first exceeded the step threshold (monotonic ns), or None."""
    warning: str | None = None
    """Something to log at warning level."""


def decide(
    offset: int, rules: StepRules, updates: int, spike_since: int | None, now_mono: int
) -> Decision:
    """What to do with ``offset`` on the clock update after ``updates`` earlier ones.

    Offsets beyond the step threshold are stepped on the first update (or with
    ``makestep``), otherwise only once they have persisted for ``stepout`` (ntpd's
    spike detector: a single wild sample must not step a disciplined clock).
    """
    first = updates == 0
    mag = abs(offset)
    if (
        rules.panic_threshold_ns
        and mag > rules.panic_threshold_ns
        and not (first and rules.allow_panic_step)
    ):
        return Decision(PANIC, spike_since)
    ms = rules.makestep
    if ms is not None and mag > ms[0] and (ms[1] < 0 or updates < ms[1]):
        return Decision(STEP, None)
    if rules.step_threshold_ns and mag > rules.step_threshold_ns:
        if first:
            return Decision(STEP, None)
        if spike_since is None:
            return Decision(
                WAIT,
                now_mono,
                f"offset {offset / NS_PER_S:+.6f} s exceeds the step threshold; stepping if it "
                f"persists for {rules.stepout_ns // NS_PER_S} s",
            )
        if now_mono - spike_since >= rules.stepout_ns:
            return Decision(STEP, None)
        return Decision(WAIT, spike_since)
    return Decision(SLEW, None)


def exit_message(offset: int, threshold_ns: int) -> str:
    return (
        f"offset {offset / NS_PER_S:+.3f} s exceeds the panic threshold "
        f"{threshold_ns / NS_PER_S:g} s: refusing to adjust the clock; set it by hand, or "
        "allow it with -g (first adjustment) or 'tinker panic 0'"
    )


def holdover_message(label: str, offset: int, threshold_ns: int) -> str:
    return (
        f"source {label}: offset {offset / NS_PER_S:+.3f} s exceeds the panic threshold "
        f"{threshold_ns / NS_PER_S:g} s: ignoring it and holding over (if it is our clock that is "
        "wrong, set it by hand; 'tinker panicexit 1' exits instead, as ntpd does)"
    )


def combined_frequency(estimates: Iterable[Estimate | None]) -> tuple[float, float]:
    """Inverse-variance average of the survivors' residual frequencies, and its variance."""
    num = den = 0.0
    for est in estimates:
        if est is None or not math.isfinite(est.frequency_sd) or est.samples_used < 2:
            continue
        w = 1.0 / max(est.frequency_sd, 1e-12) ** 2
        num += w * est.frequency
        den += w
    if den <= 0:
        return 0.0, math.inf
    return num / den, 1.0 / den


def frequency_step(estimates: Iterable[Estimate | None], prior_var: float) -> float:
    """How much to change our frequency (dimensionless).

    Each regression's residual slope is already the best estimate from all its samples
    (they were re-expressed after every correction), so it is not averaged with earlier
    estimates -- that would count the same samples twice. It is only shrunk toward what
    we knew before any sample: a crystal within ~100 ppm (or the drift file's value), so
    that a slope from three samples 2 s apart through 10 ms of jitter moves the
    frequency a little instead of 500 ppm.
    """
    slope, var = combined_frequency(estimates)
    if not math.isfinite(var):
        return 0.0
    return slope * prior_var / (prior_var + var)


def fold_correction(sources: Iterable[Source], at: int, offset: int, dfreq: float) -> None:
    """Re-express every stored sample (and every request in flight) in the corrected
    clock's time, so the regressions keep fitting across updates."""
    for src in sources:
        src.stats.apply_correction(at, offset, dfreq)
        if src.refclock is not None:
            src.refclock.apply_correction(at, offset, dfreq)
        if src.pending is not None and src.pending.t1_ns is not None:
            t1 = src.pending.t1_ns
            src.pending.t1_ns = t1 + round(offset + dfreq * (t1 - at))


def _clamp_ppb(ppb: float) -> float:
    return max(-MAX_FREQ_PPB, min(MAX_FREQ_PPB, ppb))


class Discipline:
    """The clock loop's state between updates, and the actions of each update."""

    def __init__(self, options: SyncOptions) -> None:
        self.opts = options
        self.rules = StepRules(
            options.step_threshold_ns,
            options.stepout_ns,
            options.panic_threshold_ns,
            options.allow_panic_step,
            options.makestep,
        )
        self.precision_ns = precision_to_ns(options.precision)
        self.frequency_ppb = options.initial_frequency_ppb or 0.0
        self.freq_prior_var = (
            FREQ_VAR_UNKNOWN if options.initial_frequency_ppb is None else FREQ_VAR_DRIFTFILE
        )
        self.updates = 0
        """Clock updates made (steps and slews)."""
        self.panicked = False
        """An offset beyond the panic threshold was refused for good: the shell stops."""
        self.spike_since: int | None = None
        self.offset_ns = 0
        """The last offset corrected (ntpd's sys_offset)."""
        self.clock_jitter_sq = 0.0
        self.clock_wander_sq = 0.0

    def start(self, actions: list[Action]) -> None:
        """Set the frequency from the drift file, if there was one."""
        if self.opts.initial_frequency_ppb is not None:
            self.frequency_ppb = _clamp_ppb(self.opts.initial_frequency_ppb)
            actions.append(SetFrequency(self.frequency_ppb))

    def update(
        self,
        sel: Selection,
        sources: Mapping[int, Source],
        poll: int,
        now_mono: int,
        now_clock: int,
        actions: list[Action],
    ) -> str:
        """Step / slew / refuse the combined offset of ``sel`` (policy in ``decide``).

        Returns STEP or SLEW when the clock was updated, WAIT when it was left alone, PANIC
        when the offset was refused: then either ``panicked`` is set, or the sources that
        claim it are marked and the caller must reselect without them (``refuse``).
        """
        offset = sel.offset_ns
        d = decide(offset, self.rules, self.updates, self.spike_since, now_mono)
        self.spike_since = d.spike_since
        if d.warning is not None:
            actions.append(LogEvent("warning", d.warning))
        if d.action == PANIC:
            self.refuse(offset, sel, sources, now_clock, actions)
            return PANIC
        if d.action == WAIT:
            return WAIT
        step = d.action == STEP
        applied = 0.0
        if step:
            actions.append(StepClock(offset))
            actions.append(LogEvent("warning", f"stepped the clock by {offset / NS_PER_S:+.6f} s"))
            fold_correction(sources.values(), now_clock, offset, 0.0)
        else:
            estimates = (sources[sid].stats.estimate for sid in sel.survivors)
            dfreq = frequency_step(estimates, self.freq_prior_var)
            new_ppb = _clamp_ppb(self.frequency_ppb + dfreq * 1e9)
            applied = (new_ppb - self.frequency_ppb) / 1e9
            if applied:
                self.frequency_ppb = new_ppb
                actions.append(SetFrequency(new_ppb))
            if offset:
                actions.append(SlewClock(offset))
            fold_correction(sources.values(), now_clock, offset, applied)
        # ntpd's clock jitter: RMS of the change between successive offsets, floored at
        # the clock's precision (so ntpq's clk_jitter means the same thing for both).
        change = max(abs(offset - self.offset_ns), self.precision_ns)
        self.offset_ns = offset
        self.updates += 1
        self.clock_jitter_sq += (float(change) ** 2 - self.clock_jitter_sq) / CLOCK_AVG
        dppb = 0.0 if step else applied * 1e9
        self.clock_wander_sq += (dppb**2 - self.clock_wander_sq) / WANDER_AVG
        actions.append(
            LoopStats(
                time_ns=now_clock,
                offset_ns=offset,
                frequency_ppb=self.frequency_ppb,
                jitter_ns=round(math.sqrt(self.clock_jitter_sq)),
                wander_ppb=math.sqrt(self.clock_wander_sq),
                poll=poll,
            )
        )
        return d.action

    def refuse(
        self,
        offset: int,
        sel: Selection,
        sources: Mapping[int, Source],
        now_clock: int,
        actions: list[Action],
    ) -> None:
        """An offset beyond the panic threshold. On the first update, or with
        ``panic_exit``, stop as ntpd does (``panicked``). Otherwise mark the sources that
        claim it and log each once: the caller reselects without them, and the clock holds
        over (going unsynchronized when the root distance passes maxdist) unless sane
        sources are left."""
        limit = self.opts.panic_threshold_ns
        if self.updates == 0 or self.opts.panic_exit:
            self.panicked = True
            msg = exit_message(offset, limit)
            actions.append(LogEvent("error", msg))
            actions.append(Panic(offset, msg))
            return
        wild = []
        for sid in sel.survivors:
            est = sources[sid].stats.estimate
            own = round(offset_at(est, now_clock)) if est is not None else offset
            if abs(own) > limit:
                wild.append((sources[sid], own))
        for src, own in wild or [(sources[sel.survivors[0]], offset)]:
            src.panic_offset_ns, src.state, src.tally = own, SourceState.PANIC, " "
            actions.append(LogEvent("error", holdover_message(label(src), own, limit)))
