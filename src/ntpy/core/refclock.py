"""Reference clocks as engine sources: raw samples in, one median-filtered sample per poll.

Sans-IO. The daemon's refclock shell (``daemon/refclocks.py``) reads a driver -- gpsd's
shared memory, chrony's SOCK datagrams, NMEA sentences, a PPS device -- turns each reading
into a ``RawSample`` on the engine's cooked clock and hands it to ``SyncEngine.refclock_sample``.
The samples wait here; at each poll of the source the engine takes one ``Measurement``
from them (``Refclock.take``), which then goes down the same pipeline as a network reply:
filter, regression, selection, combining, discipline.

Why a median filter (ntpd's refclock median): a driver delivers a sample a second, and a
serial line or a busy gpsd makes a few of them late by milliseconds. Sorting the offsets of
a poll interval and trimming the ends keeps the bulk (``KEEP_FRACTION``, ntpd keeps 60%);
their mean is the sample, their spread its jitter.

A PPS clock only knows where the second starts: its offsets are fractions of a second and
mean something only while the clock's whole seconds are right. As in ntpd, such a clock is
used only while another source vouches for the seconds (``locked``): the engine is
synchronized and a survivor of the last selection -- a ``prefer`` one if any is configured
-- is not a PPS clock. Without one, its samples are counted (``unlocked``) and dropped.

Bad readings never get here as samples: the shell counts them by reason in the refclock's
``counters`` (shown as drop reasons), so a stopped gpsd leaves nothing to take, the reach
register empties and the source becomes unreachable rather than stuck on old data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ntpy.core.filter import Measurement
from ntpy.core.timestamps import NS_PER_S, precision_to_ns

MAX_RAW = 64
"""Samples kept between polls (ntpd keeps 60): a poll of up to 64 s at one a second."""
KEEP_FRACTION = 0.6
"""The share of a poll's samples the median filter keeps, trimming the farthest ends."""
UNREACHABLE_POLL_NS = 2 * NS_PER_S
"""While the clock is unreachable it is polled this often (like ``iburst``), so the first
sample after a start or an outage is taken within seconds, not a poll interval."""
MAX_OFFSET_NS = 4 * 3600 * NS_PER_S
"""A sample further off than 4 h is refused (ntpd's SHM default): a GPS with a bad week
number, or a writer with no fix yet, must not be followed."""

# ntpd's driver types ntpy has, with ntpd's clock names and default refids.
NMEA = 20
PPS = 22
SHM = 28
SOCK = 0
"""chrony's SOCK protocol has no ntpd type; 127.127.0.U is ntpy's (``refclock sock``)."""


@dataclass(frozen=True, slots=True)
class Driver:
    """What ntpq and the logs call a driver, and its defaults."""

    type: int
    name: str
    """ntpq's clock name: ``SHM(0)``, ``GPS_NMEA(0)``."""
    keyword: str
    """NTPsec's ``refclock NAME`` (and ``sock``, ntpy's)."""
    refid: str
    precision: int
    """log2 s when the driver says nothing better."""
    pulse: bool = False
    """Only the fraction of a second: needs another source for the seconds."""


DRIVERS: dict[int, Driver] = {
    SHM: Driver(SHM, "SHM", "shm", "SHM", -1),
    NMEA: Driver(NMEA, "GPS_NMEA", "nmea", "GPS", -9),
    PPS: Driver(PPS, "PPS", "pps", "PPS", -20, pulse=True),
    SOCK: Driver(SOCK, "SOCK", "sock", "SOCK", -20),
}
BY_KEYWORD = {d.keyword: d for d in DRIVERS.values()}


@dataclass(frozen=True, slots=True)
class RefclockConfig:
    """A reference clock as the engine sees it (the daemon builds it from ``RefclockSpec``)."""

    driver: int
    unit: int
    refid: str
    stratum: int = 0
    precision: int = -20
    pulse: bool = False

    @property
    def name(self) -> str:
        """ntpq's ``SHM(0)``."""
        drv = DRIVERS.get(self.driver)
        return f"{drv.name if drv else 'REFCLK'}({self.unit})"

    @property
    def address(self) -> str:
        return f"127.127.{self.driver}.{self.unit}"


@dataclass(frozen=True, slots=True)
class RawSample:
    """One reading: at ``time_ns`` (cooked clock) the reference was ``offset_ns`` ahead."""

    time_ns: int
    offset_ns: int
    leap: int = 0
    precision: int | None = None
    """log2 s, when the writer says (SHM's ``precision`` field); else the driver's."""


@dataclass(frozen=True, slots=True)
class Filtered:
    """A poll's median-filtered sample."""

    time_ns: int
    offset_ns: int
    jitter_ns: int
    used: int
    of: int
    leap: int


def median_filter(samples: list[RawSample]) -> Filtered | None:
    """ntpd's refclock median: sort by offset, drop whichever end lies farther from the
    median until ``KEEP_FRACTION`` remain, average the rest. None without samples."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: s.offset_ns)
    keep = max(1, math.ceil(len(ordered) * KEEP_FRACTION))
    lo, hi = 0, len(ordered)
    while hi - lo > keep:
        mid = ordered[(lo + hi) // 2].offset_ns
        if ordered[hi - 1].offset_ns - mid > mid - ordered[lo].offset_ns:
            hi -= 1
        else:
            lo += 1
    kept = ordered[lo:hi]
    n = len(kept)
    offset = sum(s.offset_ns for s in kept) / n
    jitter = math.sqrt(sum((s.offset_ns - offset) ** 2 for s in kept) / n)
    newest = max(samples, key=lambda s: s.time_ns)
    return Filtered(
        time_ns=round(sum(s.time_ns for s in kept) / n),
        offset_ns=round(offset),
        jitter_ns=round(jitter),
        used=n,
        of=len(samples),
        leap=newest.leap,
    )


def pulse_offset(time_ns: int) -> int:
    """The offset a pulse at ``time_ns`` (our clock) says we have: the pulse marks a whole
    second, so the nearest one minus our reading, in [-0.5, 0.5) s."""
    rem = time_ns % NS_PER_S
    return -rem if rem < NS_PER_S // 2 else NS_PER_S - rem


class Refclock:
    """The samples of one reference clock between polls, and what became of them."""

    def __init__(self, config: RefclockConfig) -> None:
        self.config = config
        self.raw: list[RawSample] = []
        self.counters: Counter[str] = Counter()
        """``samples`` accepted raw; drop reasons (``bad``, ``stale``, ``torn``,
        ``far``, ``unlocked``, ``overflow``) counted by the shell and here."""
        self.last: Filtered | None = None
        self.error: str | None = None
        """Why the driver cannot be read now (shown in status); None when it can."""

    def add(self, sample: RawSample) -> bool:
        """Keep a raw sample for the next poll; False (counted) when it is absurd."""
        if abs(sample.offset_ns) > MAX_OFFSET_NS:
            self.counters["drop_far"] += 1
            return False
        if len(self.raw) >= MAX_RAW:
            self.raw.pop(0)
            self.counters["drop_overflow"] += 1
        self.raw.append(sample)
        self.counters["samples"] += 1
        return True

    def count(self, reason: str) -> None:
        """A reading the shell refused (``bad``, ``stale``, ``torn``, ``no_data``)."""
        self.counters[f"drop_{reason}"] += 1

    def apply_correction(self, at_ns: int, offset_ns: int, dfreq: float) -> None:
        """Re-express waiting samples after a clock correction, as ``SourceStats`` does."""
        self.raw = [
            RawSample(
                s.time_ns + (shift := round(offset_ns + dfreq * (s.time_ns - at_ns))),
                s.offset_ns - shift,
                s.leap,
            )
            for s in self.raw
        ]

    def take(self, locked: bool, local_precision_ns: int) -> Measurement | None:
        """The poll's sample (and the buffer emptied), or None when there is none."""
        raw, self.raw = self.raw, []
        if self.config.pulse and not locked:
            if raw:
                self.counters["drop_unlocked"] += len(raw)
            return None
        filtered = median_filter(raw)
        if filtered is None:
            return None
        self.last = filtered
        said = [s.precision for s in raw if s.precision is not None]
        precision = precision_to_ns(max(said) if said else self.config.precision)
        return Measurement(
            time_ns=filtered.time_ns,
            offset_ns=filtered.offset_ns,
            delay_ns=max(precision, local_precision_ns),
            dispersion_ns=precision + local_precision_ns + filtered.jitter_ns,
            root_delay_ns=0,
            root_dispersion_ns=0,
            stratum=self.config.stratum,
            leap=filtered.leap,
        )
