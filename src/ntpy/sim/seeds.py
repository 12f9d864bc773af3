"""Several seeds at once: the mean and the worst seed of each scenario, against chrony.

One seed can be lucky. Claims about time quality (issue notes, docs/simulation.md) are
made on the mean over seeds, with the worst seed beside it, so this table is what
``python -m ntpy.sim all --seeds 1-5`` prints. The target column is 0.8x chrony's
published RMS (and sync time), the bar the kernel-clock issue set.
"""

from __future__ import annotations

from collections.abc import Sequence

from ntpy.sim.report import Report
from ntpy.sim.scenarios import Scenario

TARGET_RATIO = 0.8


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` or ``"1,3,7"``; raises ValueError with the accepted forms."""
    try:
        if "-" in text:
            lo, hi = (int(p) for p in text.split("-", 1))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes A-B or A,B,C, got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed")
    return seeds


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f}"


def _mean_worst(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if len(known) < len(values) or not known:
        return None, None
    return sum(known) / len(known), max(known)


def seeds_table(runs: Sequence[tuple[Scenario, str, Sequence[Report]]]) -> str:
    """One row per scenario and clock: RMS, max and sync time as mean (worst seed), chrony's
    figure, and whether the mean meets 0.8x chrony and every seed passed its limits."""
    out = [
        "| scenario | clock | seeds | RMS us mean (worst) | max us mean (worst) "
        "| sync s mean (worst) | chrony RMS us / sync s | 0.8x chrony | limits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, clock, reports in runs:
        rms, rms_w = _mean_worst([r.rms_error_ns for r in reports])
        mx, mx_w = _mean_worst(
            [None if r.max_abs_error_ns is None else float(r.max_abs_error_ns) for r in reports]
        )
        sy, sy_w = _mean_worst(
            [None if r.time_to_sync_s is None else float(r.time_to_sync_s) for r in reports]
        )
        ref = scenario.reference
        c_rms, c_sync = ref.chrony_rms_ns, ref.chrony_sync_s
        verdicts = []
        if c_rms is not None and rms is not None:
            verdicts.append("RMS " + ("yes" if rms <= TARGET_RATIO * c_rms else "no"))
        if c_sync is not None and sy is not None:
            verdicts.append("sync " + ("yes" if sy <= TARGET_RATIO * c_sync else "no"))
        passed = sum(1 for r in reports if r.passed)
        chrony = f"{_us(c_rms)} / {'-' if c_sync is None else c_sync}"
        sync = "never" if sy is None else f"{sy:.0f} ({sy_w:.0f})"
        out.append(
            f"| {scenario.name} | {clock} | {len(reports)} | {_us(rms)} ({_us(rms_w)}) "
            f"| {_us(mx)} ({_us(mx_w)}) | {sync} | {chrony} | {', '.join(verdicts) or '-'} "
            f"| {passed}/{len(reports)} pass |"
        )
    return "\n".join(out)
