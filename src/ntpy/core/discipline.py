"""Clock discipline policy: whether an offset is slewed, stepped, waited on or refused, and
how much the frequency changes.

Pure functions of the offset, the thresholds and a little state, kept apart from the engine
so the policy -- ntpd's step/stepout/panic thresholds, chrony's makestep, the shrunk
frequency step -- reads in one place and is tested without sources or packets.

The panic threshold has two answers. On the first update (or with ``panic_exit``) the
offset is refused and the shell stops, as ntpd does: a clock that far off at start needs a
human or ``-g``. Once the clock was set, one upstream claiming a far-off time is much more
likely wrong than our disciplined clock, and exiting would let it switch the service off,
so the engine ignores that source and holds over instead (see ``SyncEngine``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ntpy.core.source import NS, Source
from ntpy.core.sourcestats import Estimate

SLEW = "slew"
STEP = "step"
WAIT = "wait"
"""Beyond the step threshold, but not yet for ``stepout``: leave the clock alone."""
PANIC = "panic"
"""Beyond the panic threshold: refuse."""


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
                f"offset {offset / NS:+.6f} s exceeds the step threshold; stepping if it "
                f"persists for {rules.stepout_ns // NS} s",
            )
        if now_mono - spike_since >= rules.stepout_ns:
            return Decision(STEP, None)
        return Decision(WAIT, spike_since)
    return Decision(SLEW, None)


def exit_message(offset: int, threshold_ns: int) -> str:
    return (
        f"offset {offset / NS:+.3f} s exceeds the panic threshold {threshold_ns / NS:g} s: "
        "refusing to adjust the clock; set it by hand, or allow it with -g (first "
        "adjustment) or 'tinker panic 0'"
    )


def holdover_message(label: str, offset: int, threshold_ns: int) -> str:
    return (
        f"source {label}: offset {offset / NS:+.3f} s exceeds the panic threshold "
        f"{threshold_ns / NS:g} s: ignoring it and holding over (if it is our clock that is "
        "wrong, set it by hand; 'tinker panicexit 1' exits instead, as ntpd does)"
    )


def combined_frequency(estimates: Iterable[Estimate | None]) -> tuple[float, float]:
    """Inverse-variance average of the survivors' residual frequencies, and its variance."""
    num = den = 0.0
    for est in estimates:
        if est is None or not math.isfinite(est.frequency_sd) or est.samples_used < 3:
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
        if src.pending is not None and src.pending.t1_ns is not None:
            t1 = src.pending.t1_ns
            src.pending.t1_ns = t1 + round(offset + dfreq * (t1 - at))
