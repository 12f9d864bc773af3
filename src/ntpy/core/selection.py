"""The selection stage: from the sources' statistics to candidates, a ``Selection``, and the
tally and state of every source.

``select.py`` is the pure algorithm over ``Candidate`` values (intersection, clustering,
system peer; ``combine.py`` merges the survivors). This module is what stands between it
and the sources, as chrony's ``sources.c`` does: which sources may enter (reachable, not
leap 3, not ``noselect``, within ``tos maxdist``, not ignored after a panic), each one's
root distance, and afterwards the tally (``*+-x#``) and ``SourceState`` that ``ntpy peers``,
ntpq and the metrics show. It also keeps what the last run concluded (``Outcome``), which
the reason reported by ``report.py`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ntpy.core.actions import Action, LogEvent
from ntpy.core.options import SyncOptions
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.select import Candidate, Selection, select_sources
from ntpy.core.source import Source, label
from ntpy.core.sourcestats import offset_at
from ntpy.core.status import SourceState, SyncReason

MAX_LISTED = 4
"""Candidates named in a "no majority" sentence (more would not fit a log line)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the last selection run concluded, beyond the ``Selection`` itself."""

    candidates: tuple[int, ...]
    """Ids that entered selection."""
    failure: SyncReason | None = None
    """NO_MAJORITY or TOO_FEW when selection returned nothing, else None."""
    detail: str = ""


def select_outcome(
    cands: list[Candidate], sel: Selection | None, minsane: int, names: dict[int, str]
) -> Outcome:
    """Why ``select_sources`` returned None for ``cands`` (if it did)."""
    ids = tuple(sorted(c.id for c in cands))
    if sel is not None or not cands:
        return Outcome(ids)
    # select_sources returns None for two causes; with minsane 0 only the first remains.
    if minsane > 0 and select_sources(cands, minsane=0) is not None:
        return Outcome(
            ids,
            SyncReason.TOO_FEW,
            f"fewer truechimers than tos minsane {minsane} among {len(cands)} candidates",
        )
    listed = ", ".join(
        f"{names.get(c.id, str(c.id))} {c.offset_ns / 1e6:+.3f}±{c.root_distance_ns / 1e6:.3f} ms"
        for c in sorted(cands, key=lambda c: c.offset_ns)[:MAX_LISTED]
    )
    return Outcome(
        ids,
        SyncReason.NO_MAJORITY,
        f"all {len(cands)} candidates are falsetickers: no offset lies within a majority of "
        f"their intervals ({listed})",
    )


def root_distance(src: Source, now_clock: int) -> int:
    """The source's synchronization distance now: its root delay / 2 and root dispersion,
    half our delay to it, its dispersion grown since the last sample, and the regression's
    jitter and offset uncertainty. Needs at least one sample."""
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


class Selector:
    """Runs selection over the engine's sources and remembers the outcome."""

    def __init__(self, options: SyncOptions) -> None:
        self.opts = options
        self.selection: Selection | None = None
        self.outcome = Outcome(())
        self.last_selectable_mono: int | None = None
        """When some source last was a candidate (monotonic ns): the orphan wait runs from
        there."""

    def has_selection(self) -> bool:
        return self.selection is not None and self.selection.system_peer is not None

    def candidates(
        self, sources: Mapping[int, Source], now_clock: int, actions: list[Action]
    ) -> list[Candidate]:
        """The sources that may enter selection, as ``Candidate`` values; clears every tally
        and marks the ones too far away. A source ignored after a panic re-enters once its
        offset is back within the panic threshold (logged)."""
        opts = self.opts
        out: list[Candidate] = []
        for src in sources.values():
            est = src.stats.estimate
            last = src.stats.last()
            src.tally = " "
            if not src.active or not src.reachable or est is None or last is None:
                continue
            if last.leap == LEAP_ALARM or src.config.noselect:
                continue
            if src.loop:
                src.state = SourceState.LOOP
                continue
            dist = root_distance(src, now_clock)
            if dist > opts.maxdist_ns:
                src.state = SourceState.TOO_FAR
                continue
            offset = round(offset_at(est, now_clock))
            if src.panic_offset_ns is not None:
                if abs(offset) > opts.panic_threshold_ns:
                    continue
                src.panic_offset_ns = None
                actions.append(LogEvent("info", f"source {label(src)} is sane again"))
            out.append(
                Candidate(
                    id=src.id,
                    offset_ns=offset,
                    root_distance_ns=max(dist, opts.mindist_ns),
                    jitter_ns=max(1, round(est.jitter_ns)),
                    stratum=last.stratum,
                    leap=last.leap,
                    prefer=src.config.prefer,
                )
            )
        return out

    def run(
        self,
        sources: Mapping[int, Source],
        previous_peer: int | None,
        following: bool,
        now_mono: int,
        now_clock: int,
        actions: list[Action],
    ) -> Selection | None:
        """Select over the current candidates and mark every source's tally and state.
        ``following``: the clock follows the system peer (synchronized, no panic)."""
        cands = self.candidates(sources, now_clock, actions)
        if cands:
            self.last_selectable_mono = now_mono
        sel = select_sources(
            cands,
            minsane=self.opts.minsane,
            minclock=self.opts.minclock,
            maxclock=self.opts.maxclock,
            previous_peer=previous_peer,
        )
        self.selection = sel
        names = {c.id: label(sources[c.id]) for c in cands}
        self.outcome = select_outcome(cands, sel, self.opts.minsane, names)
        self._mark(sources, sel, following)
        return sel

    def _mark(self, sources: Mapping[int, Source], sel: Selection | None, following: bool) -> None:
        if sel is None:
            # No majority: as in ntpd, every candidate is a falseticker ('x').
            failure = self.outcome.failure
            tally = "x" if failure is not None else " "
            for sid in self.outcome.candidates:
                src = sources[sid]
                src.tally, src.state = tally, SourceState(str(failure))
            return
        for sid in sel.falsetickers:
            sources[sid].tally, sources[sid].state = "x", SourceState.FALSETICKER
        for sid in sel.outliers:
            sources[sid].tally, sources[sid].state = "-", SourceState.OUTLIER
        for sid in sel.excess:
            sources[sid].tally, sources[sid].state = "#", SourceState.EXCESS
        for sid in sel.survivors:  # excess ids are never survivors
            sources[sid].tally, sources[sid].state = "+", SourceState.CANDIDATE
        if sel.system_peer is not None:
            # '*' only while the clock follows it: before the first update, or while an
            # update is refused, 'ntpy peers' must not claim a sync that 'ntpy stat' denies.
            sources[sel.system_peer].tally = "*" if following else "+"
            sources[sel.system_peer].state = SourceState.SYNC if following else SourceState.SELECTED
