"""The virtual clock: a software offset + frequency register over CLOCK_REALTIME.

This is ntpy's equivalent of chrony's ``-x`` mode (``sys_null.c``): the kernel clock is
never touched; ntpy serves ``realtime + correction(realtime)`` instead, so an unprivileged
daemon (a container without CAP_SYS_TIME) still disciplines the time it hands out.

The correction is one linear segment anchored at the realtime of the last change::

    correction(rt) = offset + freq * (rt - anchor) + slew_progress(rt - anchor)

Every change (step, slew, frequency) first *folds* the correction at "now" into a new
anchor, so served time is continuous across slew and frequency changes and jumps only by
a step. Everything is exact integer arithmetic in units of 1e-12 ns ("fine" units): one
milli-ppb times one elapsed ns is exactly one fine unit, so sub-nanosecond progress is
carried across folds instead of being rounded away at each change.

Slew rate: 500 ppm by default, the rate of the kernel's ``adjtime()`` slew
(ADJ_OFFSET_SINGLESHOT) and ntpd's maximum slew, so the daemon sees the same behaviour on
either clock. chrony allows up to 83333 ppm, which corrects faster but makes the served
time's rate 8% wrong while slewing -- clients synchronised to us would see it as a large
frequency error. Any rate keeps served time monotonic as long as slew rate + maximum
frequency stays below 1e6 ppm (served time then advances at a positive rate); the
constructor enforces that.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ntpy.clock._common import notify_step_handlers, require_int_ns
from ntpy.clock.base import StepHandler
from ntpy.clock.precision import measure_precision

FINE_PER_NS = 10**12
"""Internal unit: 1e-12 ns. A frequency in milli-ppb is exactly fine units per ns."""

_MPPB_PER_PPB = 1000
_MPPB_PER_PPM = 1_000_000
_MPPB_UNITY = 10**12
"""A rate of 1 ns per ns in milli-ppb; slew + frequency must stay below it."""

DEFAULT_SLEW_RATE_PPM = 500.0
DEFAULT_MAX_FREQUENCY_PPB = 500_000.0
"""Same bound as the kernel's frequency register, so both clocks accept the same values."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One linear piece of the correction; replaced whole so readers need no lock.

    Public so that worker processes can be handed the segment in force and compute served
    time with ``served_ns`` -- the very function the clock itself uses.
    """

    anchor_rt: int
    """Realtime (ns) the segment starts at."""
    offset_fine: int
    """Correction at ``anchor_rt``, fine units."""
    freq_mppb: int
    """Frequency correction, milli-ppb (= fine units per elapsed ns)."""
    slew_fine: int
    """Signed slew still to apply at ``anchor_rt``, fine units."""


SegmentListener = Callable[[Segment, int], None]
"""Told ``(segment, slew_rate_mppb)`` after every change of the correction."""


def slew_applied_fine(seg: Segment, rate_mppb: int, rt: int) -> int:
    """Signed slew already applied at ``rt`` (fine units); none before the anchor."""
    elapsed = rt - seg.anchor_rt
    if seg.slew_fine == 0 or elapsed <= 0:
        return 0
    done = min(abs(seg.slew_fine), rate_mppb * elapsed)
    return done if seg.slew_fine > 0 else -done


def served_ns(seg: Segment, rate_mppb: int, rt: int) -> int:
    """Served time at realtime ``rt`` under ``seg``; before the anchor the frequency is
    extrapolated. Inlined (no helper calls): it runs twice per answered request."""
    elapsed = rt - seg.anchor_rt
    corr = seg.offset_fine + seg.freq_mppb * elapsed
    slew = seg.slew_fine
    if slew and elapsed > 0:
        done = rate_mppb * elapsed
        if slew > 0:
            corr += slew if done > slew else done
        else:
            corr -= -slew if done > -slew else done
    return rt + corr // FINE_PER_NS


NS_PER_S_INT = 1_000_000_000


@dataclass(slots=True)
class VirtualLeap:
    """The virtual clock's leap state: armed step, the served instant it happens at, the
    realtime that reaches it under the segment in force, and the step done (waiting)."""

    armed: int = 0
    target_ns: int = 0
    due_rt: int | None = None
    done_step: int = 0

    def realtime_for(self, seg: Segment, rate_mppb: int) -> int:
        """The realtime at which served time reaches ``target_ns``: Newton steps on a
        function whose slope is within 0.1% of 1, so three give the nanosecond."""
        rt = self.target_ns - (served_ns(seg, rate_mppb, seg.anchor_rt) - seg.anchor_rt)
        for _ in range(4):
            miss = self.target_ns - served_ns(seg, rate_mppb, rt)
            if miss == 0:
                break
            rt += miss
        while served_ns(seg, rate_mppb, rt) < self.target_ns:
            rt += 1
        return rt


def _div_toward_zero(a: int, b: int) -> int:
    """Integer a / b rounded toward zero (b > 0)."""
    return a // b if a >= 0 else -((-a) // b)


class VirtualClock:
    """Served time = realtime + a software correction; never changes the kernel clock."""

    name = "virtual"

    def __init__(
        self,
        realtime: Callable[[], int] = time.time_ns,
        *,
        slew_rate_ppm: float = DEFAULT_SLEW_RATE_PPM,
        max_frequency_ppb: float = DEFAULT_MAX_FREQUENCY_PPB,
        precision_log: int | None = None,
    ) -> None:
        """``realtime`` returns CLOCK_REALTIME in ns (injectable for tests and simulation).

        ``precision_log`` fixes the reported precision; by default it is measured on
        first use by reading this clock's ``now_ns`` (which includes ntpy's own cost).
        """
        if not (math.isfinite(slew_rate_ppm) and slew_rate_ppm > 0):
            raise ValueError(f"slew_rate_ppm must be positive, got {slew_rate_ppm!r}")
        if not (math.isfinite(max_frequency_ppb) and max_frequency_ppb >= 0):
            raise ValueError(f"max_frequency_ppb must be non-negative, got {max_frequency_ppb!r}")
        rate = round(slew_rate_ppm * _MPPB_PER_PPM)
        max_freq = round(max_frequency_ppb * _MPPB_PER_PPB)
        if rate < 1 or rate + max_freq >= _MPPB_UNITY:
            raise ValueError(
                "slew_rate_ppm + max_frequency_ppb/1000 must stay below 1e6 ppm, or served "
                f"time could run backwards (got {slew_rate_ppm} ppm + {max_frequency_ppb} ppb)"
            )
        self._realtime = realtime
        self._rate_mppb = rate
        self._max_freq_mppb = max_freq
        self._precision = precision_log
        self._handlers: list[StepHandler] = []
        self._listeners: list[SegmentListener] = []
        self._lock = threading.Lock()
        self._seg = Segment(anchor_rt=realtime(), offset_fine=0, freq_mppb=0, slew_fine=0)
        self._leap = VirtualLeap()

    # --- the correction -----------------------------------------------------------------

    def _slew_applied(self, seg: Segment, rt: int) -> int:
        """Signed slew already applied at ``rt`` (fine units); none before the anchor."""
        return slew_applied_fine(seg, self._rate_mppb, rt)

    def _correction_fine(self, seg: Segment, rt: int) -> int:
        """Correction at realtime ``rt``; before the anchor the frequency is extrapolated."""
        return seg.offset_fine + seg.freq_mppb * (rt - seg.anchor_rt) + self._slew_applied(seg, rt)

    def _served(self, seg: Segment, rt: int) -> int:
        return served_ns(seg, self._rate_mppb, rt)

    def _fold(self, rt: int) -> Segment:
        """A segment anchored at ``rt`` that gives the same correction from ``rt`` on."""
        seg = self._seg
        applied = self._slew_applied(seg, rt)
        return Segment(
            anchor_rt=rt,
            offset_fine=self._correction_fine(seg, rt),
            freq_mppb=seg.freq_mppb,
            slew_fine=seg.slew_fine - applied,
        )

    def _install(self, seg: Segment) -> None:
        """Make ``seg`` the correction in force and tell the listeners (caller holds the
        lock, so listeners see changes in the order they were made)."""
        self._seg = seg
        for listener in self._listeners:
            listener(seg, self._rate_mppb)
        if self._leap.armed and not self._leap.done_step:
            self._leap.due_rt = self._leap.realtime_for(seg, self._rate_mppb)

    def _leap_due(self, rt: int) -> None:
        """Perform the armed leap if realtime ``rt`` has reached it: a step of -1 s at
        served midnight (insert: 23:59:59 is served again) or +1 s at 23:59:59 (delete).
        Like the kernel's, the step is silent: upstream time leaps too, so no timestamp
        holder is told."""
        with self._lock:
            leap = self._leap
            if leap.due_rt is None or rt < leap.due_rt:
                return
            seg = self._fold(rt)
            step = -leap.armed * NS_PER_S_INT
            self._install(
                Segment(
                    seg.anchor_rt,
                    seg.offset_fine + step * FINE_PER_NS,
                    seg.freq_mppb,
                    seg.slew_fine,
                )
            )
            leap.done_step = leap.armed
            leap.due_rt = None

    def set_leap(self, leap: int) -> None:
        """Arm a leap second at the next UTC midnight of served time: +1 insert, -1
        delete, 0 disarm -- the kernel's STA_INS/STA_DEL, done as a step of served time.
        After the leap the clock waits (the kernel's TIME_WAIT) until disarmed, so a
        still-armed clock does not leap again the next midnight."""
        if leap not in (-1, 0, 1) or isinstance(leap, bool):
            raise ValueError(f"leap must be -1, 0 or 1, got {leap!r}")
        with self._lock:
            st = self._leap
            if leap == 0:
                st.armed, st.due_rt, st.done_step = 0, None, 0
                return
            if st.done_step or st.armed == leap:
                return  # waiting after a leap, or already armed
            rt = self._realtime()
            served = self._served(self._seg, rt)
            day = 86_400 * NS_PER_S_INT
            midnight = (served // day + 1) * day
            st.armed = leap
            st.target_ns = midnight if leap > 0 else midnight - NS_PER_S_INT
            st.due_rt = st.realtime_for(self._seg, self._rate_mppb)

    def leap_applied(self) -> bool:
        """True after the armed leap was performed (until disarmed)."""
        return self._leap.done_step != 0

    # --- Clock protocol -----------------------------------------------------------------

    def now_ns(self) -> int:
        """Served time now, Unix ns."""
        rt = self._realtime()
        if self._leap.due_rt is not None and rt >= self._leap.due_rt:
            self._leap_due(rt)
        return served_ns(self._seg, self._rate_mppb, rt)

    def from_realtime_ns(self, realtime_ns: int) -> int:
        """Map a CLOCK_REALTIME reading (e.g. a kernel RX timestamp) to served time.

        Uses the corrections in force *now*, extrapolated back (as chrony's
        ``offset_convert`` does): a reading taken before a step lands in the post-step
        timescale, so a receive stamp never exceeds a later ``now_ns()``.
        """
        if self._leap.due_rt is not None and realtime_ns >= self._leap.due_rt:
            self._leap_due(realtime_ns)
        return served_ns(self._seg, self._rate_mppb, realtime_ns)

    def precision(self) -> int:
        """log2 s of reading cost; measured on ``now_ns`` once unless given."""
        if self._precision is None:
            self._precision = measure_precision(self.now_ns)
        return self._precision

    def can_adjust(self) -> bool:
        """Always True: the register is ours to change."""
        return True

    def step(self, offset_ns: int) -> None:
        """Jump served time by ``offset_ns`` now, then tell every step handler.

        A slew in progress keeps running (as with the kernel's ADJ_SETOFFSET); call
        ``slew(0)`` to cancel it.
        """
        require_int_ns("offset_ns", offset_ns)
        with self._lock:
            seg = self._fold(self._realtime())
            self._install(
                Segment(
                    seg.anchor_rt,
                    seg.offset_fine + offset_ns * FINE_PER_NS,
                    seg.freq_mppb,
                    seg.slew_fine,
                )
            )
        notify_step_handlers(self._handlers, offset_ns)

    def slew(self, offset_ns: int) -> None:
        """Correct served time by ``offset_ns`` at the slew rate; replaces a running slew."""
        require_int_ns("offset_ns", offset_ns)
        with self._lock:
            seg = self._fold(self._realtime())
            self._install(
                Segment(seg.anchor_rt, seg.offset_fine, seg.freq_mppb, offset_ns * FINE_PER_NS)
            )

    def set_frequency_ppb(self, ppb: float) -> None:
        """Make served time run ``ppb`` faster, continuing from the current served time."""
        if isinstance(ppb, bool) or not isinstance(ppb, int | float) or not math.isfinite(ppb):
            raise ValueError(f"frequency must be a finite number of ppb, got {ppb!r}")
        mppb = round(ppb * _MPPB_PER_PPB)
        if abs(mppb) > self._max_freq_mppb:
            raise ValueError(
                f"frequency {ppb} ppb is beyond the limit of "
                f"+/-{self._max_freq_mppb / _MPPB_PER_PPB:g} ppb"
            )
        with self._lock:
            seg = self._fold(self._realtime())
            self._install(Segment(seg.anchor_rt, seg.offset_fine, mppb, seg.slew_fine))

    def frequency_ppb(self) -> float:
        """The frequency correction in force (resolution 0.001 ppb)."""
        return self._seg.freq_mppb / _MPPB_PER_PPB

    def remaining_slew_ns(self) -> int:
        """Slew still to be applied, ns, rounded toward zero."""
        seg = self._seg
        rt = self._realtime()
        return _div_toward_zero(seg.slew_fine - self._slew_applied(seg, rt), FINE_PER_NS)

    def add_step_handler(self, handler: StepHandler) -> None:
        """Register ``handler`` to be called with every step (ns)."""
        self._handlers.append(handler)

    def add_segment_listener(self, listener: SegmentListener) -> None:
        """Register ``listener(segment, slew_rate_mppb)``, called under the clock's lock
        after every step, slew or frequency change and once now with the segment in force
        (worker processes serve from a published copy of it)."""
        with self._lock:
            self._listeners.append(listener)
            listener(self._seg, self._rate_mppb)

    @property
    def segment(self) -> Segment:
        """The correction in force (immutable; see ``served_ns``)."""
        return self._seg

    @property
    def slew_rate_mppb(self) -> int:
        """The slew rate in milli-ppb (fine units per ns), as ``served_ns`` takes it."""
        return self._rate_mppb

    # --- status ---------------------------------------------------------------------------

    @property
    def slew_rate_ppm(self) -> float:
        """The rate slews proceed at."""
        return self._rate_mppb / _MPPB_PER_PPM

    def state(self) -> dict[str, int | float | str]:
        """A consistent snapshot for status pages: one realtime reading for all values.

        ``offset_ns`` is served minus realtime now; ``realtime_ns`` is that reading.
        """
        seg = self._seg
        rt = self._realtime()
        return {
            "name": self.name,
            "realtime_ns": rt,
            "offset_ns": self._served(seg, rt) - rt,
            "frequency_ppb": seg.freq_mppb / _MPPB_PER_PPB,
            "remaining_slew_ns": _div_toward_zero(
                seg.slew_fine - self._slew_applied(seg, rt), FINE_PER_NS
            ),
            "slew_rate_ppm": self.slew_rate_ppm,
        }
