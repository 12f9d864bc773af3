"""Bounded in-memory history of the clock's offset, jitter and frequency, and of each
source's offset and delay, for the plots on the web status page.

Why in memory and bounded: the page shows "the last hours" of a running daemon; anything
longer-lived belongs to the statistics files or Prometheus. Memory must not grow with
uptime or with the number of sources a pool churns through, so every series is a deque
with a fixed maximum length (by default 24 h at one point per 16 s), points older than the
window are dropped, and at most ``max_sources`` source series are kept.

Two feeds: ``record`` receives the sync shell's LoopStats/PeerStats (exact values at each
clock update and each sample), and ``sample`` takes the periodic ``daemon.status()``
snapshot, so a daemon that only serves its local clock -- which makes no clock updates --
still has a line to plot. A sample is skipped when a LoopStats point arrived within the
last interval, so both feeds together stay near one point per interval.

Times are the daemon's served time (the clock it serves, virtual under ``-x``), integer ns;
the JSON carries milliseconds, exact in a JavaScript number.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ntpy.core.actions import LoopStats, PeerStats, Record
from ntpy.core.status import SyncStatus
from ntpy.core.timestamps import NS_PER_S

NS_PER_MS = 1_000_000
DEFAULT_WINDOW_NS = 24 * 3600 * NS_PER_S
DEFAULT_INTERVAL_NS = 16 * NS_PER_S
MAX_SOURCES = 32


@dataclass(frozen=True, slots=True)
class SystemPoint:
    time_ns: int
    offset_ns: int
    jitter_ns: int
    frequency_ppb: float


@dataclass(frozen=True, slots=True)
class SourcePoint:
    time_ns: int
    offset_ns: int
    delay_ns: int


@dataclass(slots=True)
class SourceSeries:
    source_id: int
    address: str
    name: str
    points: deque[SourcePoint]
    last_ns: int = 0


class History:
    """The plot data: a system series and one series per source, all bounded."""

    def __init__(
        self,
        window_ns: int = DEFAULT_WINDOW_NS,
        interval_ns: int = DEFAULT_INTERVAL_NS,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if interval_ns <= 0 or window_ns < interval_ns or max_sources < 1:
            raise ValueError("need interval_ns > 0, window_ns >= interval_ns, max_sources >= 1")
        self.window_ns = window_ns
        self.interval_ns = interval_ns
        self.max_points = window_ns // interval_ns
        self.max_sources = max_sources
        self.system: deque[SystemPoint] = deque(maxlen=self.max_points)
        self.sources: dict[int, SourceSeries] = {}
        self._last_loopstats_ns: int | None = None
        self._names: dict[int, str] = {}
        """Configured names of sources by id (PeerStats carry only the address)."""

    # -- feeding ------------------------------------------------------------------------

    def record(self, rec: Record) -> None:
        """A sync-shell record (append this method to ``SyncShell.recorders``)."""
        if isinstance(rec, LoopStats):
            if math.isfinite(rec.frequency_ppb):
                self._add_system(
                    SystemPoint(rec.time_ns, rec.offset_ns, rec.jitter_ns, rec.frequency_ppb)
                )
                self._last_loopstats_ns = rec.time_ns
        elif isinstance(rec, PeerStats):
            self._add_source(rec)
        else:
            raise TypeError(f"History.record takes LoopStats or PeerStats, not {type(rec)!r}")

    def sample(self, status: SyncStatus, now_ns: int) -> None:
        """A periodic snapshot (every ``interval_ns``); ``now_ns`` is served time."""
        for src in status.sources:
            self._names[src.id] = src.name
            series = self.sources.get(src.id)
            if series is not None:
                series.name = src.name
        if len(self._names) > 4 * self.max_sources:  # pool churn: forget old names
            live = {src.id for src in status.sources} | set(self.sources)
            self._names = {k: v for k, v in self._names.items() if k in live}
        last = self._last_loopstats_ns
        if last is not None and 0 <= now_ns - last < self.interval_ns:
            return
        if not math.isfinite(status.frequency_ppb):
            return
        self._add_system(
            SystemPoint(now_ns, status.offset_ns, status.jitter_ns, status.frequency_ppb)
        )

    def _add_system(self, point: SystemPoint) -> None:
        self.system.append(point)
        _expire(self.system, point.time_ns - self.window_ns)

    def _add_source(self, rec: PeerStats) -> None:
        series = self.sources.get(rec.source_id)
        if series is None:
            if len(self.sources) >= self.max_sources:
                stale = min(self.sources.values(), key=lambda s: s.last_ns)
                del self.sources[stale.source_id]
            name = self._names.get(rec.source_id, rec.address)
            series = SourceSeries(rec.source_id, rec.address, name, deque(maxlen=self.max_points))
            self.sources[rec.source_id] = series
        series.address = rec.address
        series.last_ns = rec.time_ns
        series.points.append(SourcePoint(rec.time_ns, rec.offset_ns, rec.delay_ns))
        cutoff = rec.time_ns - self.window_ns
        _expire(series.points, cutoff)
        for other in [s for s in self.sources.values() if s.last_ns < cutoff]:
            del self.sources[other.source_id]  # a source gone for a whole window

    # -- reading ------------------------------------------------------------------------

    def to_json(self, since_ns: int | None = None) -> dict[str, object]:
        """A JSON-ready object with the points newer than ``since_ns`` (all if None).

        Columnar (one array per quantity) because it is a third the size of a list of
        objects and is what the plotting code wants anyway.
        """
        sys_pts = [p for p in self.system if since_ns is None or p.time_ns > since_ns]
        sources: list[dict[str, object]] = []
        for series in sorted(self.sources.values(), key=lambda s: s.source_id):
            pts = [p for p in series.points if since_ns is None or p.time_ns > since_ns]
            sources.append(
                {
                    "id": series.source_id,
                    "name": series.name,
                    "address": series.address,
                    "t_ms": [p.time_ns // NS_PER_MS for p in pts],
                    "offset_ns": [p.offset_ns for p in pts],
                    "delay_ns": [p.delay_ns for p in pts],
                }
            )
        return {
            "window_s": self.window_ns // NS_PER_S,
            "interval_s": self.interval_ns / NS_PER_S,
            "max_points": self.max_points,
            "system": {
                "t_ms": [p.time_ns // NS_PER_MS for p in sys_pts],
                "offset_ns": [p.offset_ns for p in sys_pts],
                "jitter_ns": [p.jitter_ns for p in sys_pts],
                "frequency_ppb": [round(p.frequency_ppb, 3) for p in sys_pts],
            },
            "sources": sources,
        }


def _expire(points: deque[SystemPoint] | deque[SourcePoint], cutoff_ns: int) -> None:
    """Drop points older than the window (the deque's maxlen bounds the count anyway)."""
    while points and points[0].time_ns < cutoff_ns:
        points.popleft()
