"""What a scenario run measured, whether it passed, and the ours-vs-chrony-vs-ntpd table.

The graded quantity is the *served* time error, ``clock.now_ns() - true time``: what a
client of ntpy would see. The engine's own idea of its offset is not trusted here.

A report holds only values derived from the seeded run (no wall-clock time), so the same
scenario and seed give a byte-identical JSON report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ntpy.sim.scenarios import Scenario

US = 1_000


@dataclass(frozen=True, slots=True)
class Metrics:
    """Statistics of one error trace (sampled once per simulated second)."""

    time_to_sync_s: int | None
    """Earliest sample time after which |error| <= sync limit to the end; None if never."""
    window_from_s: int
    """Start of the window the statistics below cover."""
    rms_error_ns: float | None
    max_abs_error_ns: int | None
    rms_freq_error_ppb: float | None
    samples: int
    """Samples in the window."""


def compute_metrics(
    times_s: Sequence[int],
    errors_ns: Sequence[int],
    freq_errors_ppb: Sequence[float],
    sync_limit_ns: int,
    metrics_from_s: int | None = None,
) -> Metrics:
    """Time to sync (clknetsim's definition) and the error statistics after it.

    The window starts at ``metrics_from_s`` when given, else at the time to sync; a run
    that never syncs is measured over its whole trace (and fails its ``must_sync`` limit).
    """
    if not len(times_s) == len(errors_ns) == len(freq_errors_ppb):
        raise ValueError("trace columns differ in length")
    last_bad = -1
    for i in range(len(errors_ns) - 1, -1, -1):
        if abs(errors_ns[i]) > sync_limit_ns:
            last_bad = i
            break
    ended_bad = not errors_ns or last_bad == len(errors_ns) - 1
    sync = None if ended_bad else times_s[last_bad + 1]
    start = metrics_from_s if metrics_from_s is not None else (sync if sync is not None else 0)
    first = next((i for i, t in enumerate(times_s) if t >= start), len(times_s))
    window = errors_ns[first:]
    freqs = freq_errors_ppb[first:]
    n = len(window)
    if n == 0:
        return Metrics(sync, start, None, None, None, 0)
    rms = math.sqrt(math.fsum(float(e) * float(e) for e in window) / n)
    rms_f = math.sqrt(math.fsum(f * f for f in freqs) / n)
    return Metrics(sync, start, rms, max(abs(e) for e in window), rms_f, n)


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one scenario run."""

    scenario: str
    seed: int
    duration_s: int
    """Simulated seconds actually run (less than the scenario's if it stopped on a Panic)."""
    sync_limit_ns: int
    time_to_sync_s: int | None
    window_from_s: int
    rms_error_ns: float | None
    max_abs_error_ns: int | None
    rms_freq_error_ppb: float | None
    final_error_ns: int
    steps: int
    refused: bool
    panic_message: str | None
    falseticker_peer_id: int | None
    """Source id of the first falseticker that became system peer, None if none ever did."""
    falseticker_peer_at_s: int | None
    peer_changes: int
    final_stratum: int
    final_synchronized: bool
    packets_sent: int
    packets_lost: int
    replies_received: int
    log_events: tuple[str, ...]
    """The first engine log events, "t=<s> <level>: <message>"."""
    log_event_count: int
    passed: bool
    failures: tuple[str, ...]
    trace_step_s: int
    trace: tuple[tuple[int, int, float], ...]
    """(seconds since start, served error ns, frequency error ppb) every ``trace_step_s``."""
    clock: str = "virtual"
    """The clock adapter: "virtual" (VirtualClock) or "kernel" (SystemClock over the model
    of the Linux kernel clock)."""
    kernel_time_to_sync_s: int | None = None
    """The kernel clock's own error (what other programs read), kernel runs only: time to
    sync, RMS and max over the same window as the served error."""
    kernel_rms_error_ns: float | None = None
    kernel_max_abs_error_ns: int | None = None
    clock_timers: int = 0
    """Times the adapter's own timer ran (the ends of kernel slews)."""

    def to_json(self, *, trace: bool = True) -> str:
        return json.dumps(self.to_dict(trace=trace), sort_keys=True)

    def to_dict(self, *, trace: bool = True) -> dict[str, object]:
        d = asdict(self)
        if not trace:
            d.pop("trace")
        return d

    def summary(self) -> str:
        """A few human lines."""
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return "\n".join(
            [
                f"scenario {self.scenario} (seed {self.seed}, {self.clock} clock, "
                f"{self.duration_s} s simulated)",
                f"  time to sync (|error| <= {_us(self.sync_limit_ns)} us): "
                + ("never" if self.time_to_sync_s is None else f"{self.time_to_sync_s} s"),
                f"  after {self.window_from_s} s: RMS {_us(self.rms_error_ns)} us, "
                f"max {_us(self.max_abs_error_ns)} us, "
                f"RMS frequency error {_fmt(self.rms_freq_error_ppb)} ppb",
                *_kernel_lines(self),
                f"  steps {self.steps}, refused {self.refused}, final stratum "
                f"{self.final_stratum}, falseticker peer {self.falseticker_peer_id}",
                f"  packets sent {self.packets_sent}, lost {self.packets_lost}, "
                f"replies {self.replies_received}",
                f"  {verdict}",
            ]
        )


def _kernel_lines(r: Report) -> list[str]:
    if r.clock != "kernel":
        return []
    sync = "never" if r.kernel_time_to_sync_s is None else f"{r.kernel_time_to_sync_s} s"
    return [
        f"  kernel clock itself: time to sync {sync}, RMS {_us(r.kernel_rms_error_ns)} us, "
        f"max {_us(r.kernel_max_abs_error_ns)} us ({r.clock_timers} slew-end timers)"
    ]


def evaluate(scenario: Scenario, report: Report) -> tuple[str, ...]:
    """The scenario's pass limits ``report`` violates (empty: passed)."""
    lim = scenario.limits
    out: list[str] = []
    if lim.refused and not report.refused:
        out.append("expected a Panic refusal, none came")
    if not lim.refused and report.refused:
        out.append(f"refused unexpectedly: {report.panic_message}")
    if lim.steps is not None and report.steps != lim.steps:
        out.append(f"stepped {report.steps} times, expected {lim.steps}")
    if lim.no_falseticker_peer and report.falseticker_peer_id is not None:
        out.append(
            f"falseticker (source {report.falseticker_peer_id}) became system peer at "
            f"{report.falseticker_peer_at_s} s"
        )
    if lim.must_sync and report.time_to_sync_s is None:
        out.append(f"never stayed within {_us(scenario.sync_limit_ns)} us")
    if lim.max_sync_s is not None and (
        report.time_to_sync_s is None or report.time_to_sync_s > lim.max_sync_s
    ):
        out.append(f"time to sync {report.time_to_sync_s} s > {lim.max_sync_s} s")
    if lim.max_abs_error_ns is not None and (
        report.max_abs_error_ns is None or report.max_abs_error_ns >= lim.max_abs_error_ns
    ):
        out.append(f"max error {_us(report.max_abs_error_ns)} us >= {_us(lim.max_abs_error_ns)} us")
    if lim.rms_error_ns is not None and (
        report.rms_error_ns is None or report.rms_error_ns >= lim.rms_error_ns
    ):
        out.append(f"RMS error {_us(report.rms_error_ns)} us >= {_us(lim.rms_error_ns)} us")
    if lim.max_peer_changes is not None and report.peer_changes > lim.max_peer_changes:
        out.append(f"system peer changed {report.peer_changes} times > {lim.max_peer_changes}")
    return tuple(out)


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / US:.1f}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _limit_text(s: Scenario) -> str:
    lim = s.limits
    parts: list[str] = []
    if lim.refused:
        parts.append("refuse")
    if lim.steps is not None:
        parts.append(f"steps={lim.steps}")
    if lim.max_sync_s is not None:
        parts.append(f"sync<={lim.max_sync_s}s")
    if lim.max_abs_error_ns is not None:
        parts.append(f"max<{_us(lim.max_abs_error_ns)}")
    if lim.rms_error_ns is not None:
        parts.append(f"RMS<{_us(lim.rms_error_ns)}")
    if lim.max_peer_changes is not None:
        parts.append(f"peer changes<={lim.max_peer_changes}")
    return ", ".join(parts)


def markdown_table(pairs: Sequence[tuple[Scenario, Report]]) -> str:
    """ours-vs-chrony-vs-ntpd, one row per scenario and clock adapter (times in us unless
    marked). "kernel clock" is the kernel clock's own error on kernel runs (sync s / RMS /
    max): served time is cooked, the kernel clock follows it by slewing."""
    lines = [
        "| scenario | clock | sync s (chrony) | RMS us | chrony RMS | ntpd RMS "
        "| max us (chrony) | kernel clock sync s / RMS / max | steps | limits | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in pairs:
        ref = s.reference
        sync = "never" if r.time_to_sync_s is None else str(r.time_to_sync_s)
        if ref.chrony_sync_s is not None:
            sync += f" ({ref.chrony_sync_s})"
        mx = _us(r.max_abs_error_ns)
        if ref.chrony_max_ns is not None:
            mx += f" ({_us(ref.chrony_max_ns)})"
        steps = str(r.steps) + (" refused" if r.refused else "")
        result = "pass" if r.passed else "FAIL"
        kernel = "-"
        if r.clock == "kernel":
            ks = "never" if r.kernel_time_to_sync_s is None else str(r.kernel_time_to_sync_s)
            kernel = f"{ks} / {_us(r.kernel_rms_error_ns)} / {_us(r.kernel_max_abs_error_ns)}"
        lines.append(
            f"| {s.name} | {r.clock} | {sync} | {_us(r.rms_error_ns)} "
            f"| {_us(ref.chrony_rms_ns)} | {_us(ref.ntpd_rms_ns)} | {mx} | {kernel} | {steps} "
            f"| {_limit_text(s)} | {result} |"
        )
    return "\n".join(lines)
