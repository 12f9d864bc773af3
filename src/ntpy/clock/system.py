"""The system clock: CLOCK_REALTIME, adjusted through ``adjtimex`` (needs CAP_SYS_TIME).

The C library is reached with ``ctypes.CDLL(None)`` and is injectable, so tests (and the
simulator's kernel model, ``ntpy.sim.kernel``) hand in a fake instead of the host clock.

How each operation maps onto the kernel -- the fields chrony's sys_linux.c uses, because
they correct fast and leave the kernel's own discipline out of the loop:

* frequency -- ADJ_FREQUENCY, ``freq`` = ppm * 2**16 (positive: faster), with the nominal
  tick. That is ntpy's *base* rate.
* slew -- the tick length (ADJ_TICK) and ``freq`` together make the clock run faster or
  slower than the base rate by up to ``max_slew_ppm`` (chrony's 83 333 ppm by default; the
  kernel's own ADJ_OFFSET_SINGLESHOT slews at a fixed 500 ppm, so 0.1 s took 200 s). The
  rate and its (tick, freq) pair come from ``ntpy.clock.slewplan``. This class keeps the
  slew's books itself: when it started (the kernel reports the time of each change in
  ``timex.time``), at what exact gain, how much is left. It must put the base rate back
  when the slew is done, so it has a timer: ``timer_due_in_ns()`` says when it next wants
  ``on_timer()`` called, and the owner (the daemon's sync shell, the simulator's world)
  calls it then. Calling late costs nothing in served time (the books follow the kernel
  clock exactly until the rate is changed back, and any overshoot is slewed back); it only
  lets the kernel clock itself run past its target for that long.
* served time is *cooked*: the kernel clock plus the correction it still has to slew, so
  clients never see the half-slewed clock. ``now_ns``/``from_realtime_ns`` map through a
  ``Segment`` (the virtual clock's type and ``served_ns``), which worker processes are
  handed too. ``remaining_slew_ns()`` is therefore 0 (see ``ntpy.clock.base``); the
  kernel's part is ``kernel_slew_ns()``.
* step -- ADJ_SETOFFSET | ADJ_NANO, ``time`` = the signed offset as (s, ns) with the ns
  part in [0, 1e9). The kernel adds it atomically; a slew in progress carries on.
* kernel PLL/FLL -- off. The status word is written whole (STA_PLL and STA_FLL clear), so
  ntpy keeps its own copy (leap bits included), as chrony does. ADJ_OFFSET would hand the
  offset to the kernel PLL, a second loop fighting ntpy's.
* sync status -- ADJ_STATUS | ADJ_MAXERROR | ADJ_ESTERROR with STA_UNSYNC cleared when
  synchronised: what ``ntptime``/``adjtimex -p``/``timedatectl`` and the kernel's 11-minute
  RTC update read.
* ``hand_off_slew`` -- ADJ_OFFSET_SINGLESHOT, for one-shot tools (``ntpy sync``) that exit
  at once: the kernel finishes that slew (at 500 ppm) by itself. ``close()`` does the same
  with a slew still pending when the daemon stops, after restoring the base rate, so the
  clock is never left running fast.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ntpy.clock._common import notify_step_handlers, require_int_ns
from ntpy.clock.base import StepHandler
from ntpy.clock.capability import has_cap_sys_time
from ntpy.clock.errors import ClockError
from ntpy.clock.precision import measure_precision
from ntpy.clock.slewplan import (
    DEFAULT_MAX_SLEW_PPM,
    FINE_PER_NS,
    MAX_SLEW_LIMIT_PPM,
    USER_HZ,
    KernelRate,
    base_rate,
    gain_mppb,
    nominal_tick,
    rate_for,
    slew_units,
)
from ntpy.clock.timex import (
    ADJ_ESTERROR,
    ADJ_FREQUENCY,
    ADJ_MAXERROR,
    ADJ_NANO,
    ADJ_OFFSET,
    ADJ_OFFSET_SINGLESHOT,
    ADJ_OFFSET_SS_READ,
    ADJ_SETOFFSET,
    ADJ_STATUS,
    ADJ_TICK,
    KERNEL_MAX_FREQ_PPB,
    KERNEL_SLEW_RATE_PPM,
    NTP_PHASE_LIMIT_US,
    STA_DEL,
    STA_INS,
    STA_NANO,
    STA_PLL,
    STA_UNSYNC,
    TIME_ERROR,
    TIME_OOP,
    TIME_WAIT,
    Timex,
    ns_to_setoffset_time,
    ppb_to_timex_freq,
    timex_freq_to_ppb,
)
from ntpy.clock.virtual import Segment, SegmentListener, served_ns
from ntpy.core.timestamps import NS_PER_S

MAX_SLEW_NS = 2145 * NS_PER_S
"""Largest slew accepted; glibc's adjtime() uses the same bound (fits in int32 us)."""

_NS_PER_US = 1000
_UNBOUNDED_FINE = 10**30
"""A slew amount no kernel slew reaches before it is changed back (~3e5 years at 10%):
while the kernel slews, served time follows it without a clamp."""


class LibcLike(Protocol):
    """What SystemClock needs from the C library: ``adjtimex(struct timex *) -> int``.

    On failure it returns -1 and leaves the error in ctypes' errno copy
    (``ctypes.get_errno()``), as a ``CDLL(..., use_errno=True)`` function does.
    """

    @property
    def adjtimex(self) -> Callable[[Any], int]:
        """The C function (or a stand-in) taking a ``POINTER(Timex)``."""
        ...


@dataclass(frozen=True, slots=True)
class KernelClockStatus:
    """The kernel's view of clock synchronisation (a read-only adjtimex)."""

    state: int
    """adjtimex return value: TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR."""
    status: int
    """STA_* bits."""
    synchronised: bool
    """STA_UNSYNC clear and state not TIME_ERROR."""
    maxerror_ns: int
    esterror_ns: int
    frequency_ppb: float
    """The kernel's ``freq`` register (during a slew it includes part of the slew)."""
    tick: int
    """The kernel's tick, us per 1/USER_HZ s (nominal 10 000; off nominal during a slew)."""
    pll_offset_ns: int
    """The kernel PLL's remaining offset (0 unless another program used STA_PLL)."""
    tai_offset_s: int


def _us_ceil(ns: int) -> int:
    """ns to us, rounded up: error bounds must never be understated."""
    return -((-ns) // _NS_PER_US)


def _us_round(ns: int) -> int:
    """ns to us, rounded half away from zero."""
    q = (abs(ns) + _NS_PER_US // 2) // _NS_PER_US
    return q if ns >= 0 else -q


FORBID_ENV = "NTPY_FORBID_CLOCK_CHANGES"
"""Set (to anything) to make every real clock-changing adjtimex fail: the test suite sets it,
so no code path under test can move the shared machine's clock, whatever its privileges."""


class SystemClock:
    """CLOCK_REALTIME adjusted via ``adjtimex``; serves the cooked time (see module doc)."""

    name = "system"

    def __init__(
        self,
        libc: LibcLike | None = None,
        *,
        adjustable: bool | None = None,
        realtime: Callable[[], int] | None = None,
        max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM,
        precision_log: int | None = None,
        user_hz: int = USER_HZ,
    ) -> None:
        """``libc`` defaults to the process's C library; tests pass a fake, and then
        ``realtime`` (CLOCK_REALTIME in ns) must read the same fake kernel.

        ``adjustable`` answers ``can_adjust()``; by default it is whether this process
        holds CAP_SYS_TIME now. ``max_slew_ppm`` caps the slew rate (``tinker maxslewrate``).
        """
        if not (math.isfinite(max_slew_ppm) and 0 < max_slew_ppm <= MAX_SLEW_LIMIT_PPM):
            raise ValueError(
                f"max slew rate must be above 0 and at most {MAX_SLEW_LIMIT_PPM} ppm, "
                f"got {max_slew_ppm!r}"
            )
        self._real_libc = libc is None
        if libc is None:
            libc = cast(LibcLike, ctypes.CDLL(None, use_errno=True))
        try:
            fn = libc.adjtimex
        except AttributeError as exc:
            raise ClockError("the C library has no adjtimex(); cannot drive the clock") from exc
        if hasattr(fn, "argtypes"):  # a real ctypes function: declare its C signature
            cfn: Any = fn
            cfn.argtypes = (ctypes.POINTER(Timex),)
            cfn.restype = ctypes.c_int
        self._adjtimex = fn
        if adjustable is None:
            adjustable = has_cap_sys_time()
        self._adjustable = adjustable
        self._realtime = realtime or _clock_realtime
        self._max_slew_ppm = max_slew_ppm
        self._user_hz = user_hz
        self._handlers: list[StepHandler] = []
        self._listeners: list[SegmentListener] = []
        self._lock = threading.RLock()
        self._status = STA_UNSYNC
        self._precision = precision_log
        self._base_freq: int | None = None
        """ntpy's frequency in timex units; None until first read from the kernel."""
        self._rate: KernelRate | None = None
        """What ntpy last wrote (None: nothing yet -- the kernel's tick is not ours)."""
        self._view: tuple[Segment, int] = (Segment(0, 0, 0, 0), 0)
        """(segment, gain in milli-ppb): served time = ``served_ns(*view, realtime)``."""
        self._end_rt: int | None = None
        """Kernel time at which the slew in progress is done."""

    # --- the one syscall ---------------------------------------------------------------

    def _call(self, tx: Timex) -> int:
        """Run adjtimex on ``tx`` (updated in place); a failure becomes ClockError."""
        if (
            self._real_libc
            and tx.modes not in (0, ADJ_OFFSET_SS_READ)
            and os.environ.get(FORBID_ENV)
        ):
            raise ClockError(
                f"adjtimex(modes={tx.modes:#x}) refused: {FORBID_ENV} is set (a test or "
                "benchmark environment where the real clock must never change)"
            )
        ret = int(self._adjtimex(ctypes.pointer(tx)))
        if ret < 0:
            err = ctypes.get_errno()
            what = f"adjtimex(modes={tx.modes:#x}) failed: {os.strerror(err) if err else '?'}"
            if err == errno.EPERM:
                what += (
                    " -- changing the system clock needs CAP_SYS_TIME (run as root or grant"
                    " cap_sys_time), or use the virtual clock"
                )
            raise ClockError(what, err or None)
        return ret

    def _read(self) -> tuple[int, Timex]:
        tx = Timex()
        tx.modes = 0
        return self._call(tx), tx

    # --- slew bookkeeping (callers hold the lock) -----------------------------------------

    def _base(self) -> KernelRate:
        if self._base_freq is None:
            self._base_freq = int(self._read()[1].freq)
        return base_rate(self._base_freq, self._user_hz)

    def _pending_fine(self, rt: int) -> int:
        """Correction the kernel clock still has to slew at kernel time ``rt`` (fine)."""
        seg, gain = self._view
        return seg.offset_fine - _applied(seg, gain, rt)

    def _program(self, rate: KernelRate) -> int:
        """Write ``rate`` (tick + freq, ns units for the reported time); return the kernel
        time of the change, which the kernel reports in ``timex.time``."""
        tx = Timex()
        tx.modes = ADJ_TICK | ADJ_FREQUENCY | ADJ_NANO
        tx.tick = rate.tick
        tx.freq = rate.freq
        self._call(tx)
        self._rate = rate
        return int(tx.time.tv_sec) * NS_PER_S + int(tx.time.tv_usec)

    def _restart(self, extra_fine: int = 0) -> None:
        """Fold the slew so far into the books and start slewing what is left plus
        ``extra_fine`` from the base rate in force (or stop, if nothing is left)."""
        base = self._base()
        rt = self._realtime()
        target = self._pending_fine(rt) + extra_fine
        units = slew_units(_div_toward_zero(target, FINE_PER_NS), self._max_slew_ppm)
        rate = base if units == 0 else rate_for(base.units + units, self._user_hz)
        old_view = self._view
        t_change = self._program(rate)
        # The kernel changed the rate at t_change: what the old rate slewed until then.
        seg, gain = old_view
        pending = seg.offset_fine - _applied(seg, gain, t_change) + extra_fine
        if rate == base or pending == 0 or (pending > 0) != (units > 0):
            # Nothing left worth slewing, or the rate chosen points the wrong way now
            # (only if the kernel is far off our reading): keep the books, no slew.
            if rate != base:
                t_change = self._program(base)
            self._install(Segment(t_change, pending, 0, 0), 0, None)
            return
        g = abs(gain_mppb(base, rate))
        sign = 1 if pending > 0 else -1
        end = t_change + -(-abs(pending) // g)
        self._install(Segment(t_change, pending, 0, -sign * _UNBOUNDED_FINE), g, end)

    def _install(self, seg: Segment, gain: int, end_rt: int | None) -> None:
        self._view = (seg, gain)
        self._end_rt = end_rt
        for listener in self._listeners:
            listener(seg, gain)

    # --- Clock protocol -----------------------------------------------------------------

    def now_ns(self) -> int:
        """Served (cooked) time now: the kernel clock plus the slew it still has to do."""
        seg, gain = self._view
        return served_ns(seg, gain, self._realtime())

    def from_realtime_ns(self, realtime_ns: int) -> int:
        """Map a CLOCK_REALTIME reading (e.g. a kernel RX timestamp) to served time; a
        reading from before the slew began gets the correction without the slew's
        progress, as the kernel clock had made none then."""
        seg, gain = self._view
        return served_ns(seg, gain, realtime_ns)

    def precision(self) -> int:
        """Measured once (chrony-style read delay) and cached."""
        if self._precision is None:
            self._precision = measure_precision(self.now_ns)
        return self._precision

    def can_adjust(self) -> bool:
        """Whether adjustments can succeed (CAP_SYS_TIME at construction, or as given)."""
        return self._adjustable

    def step(self, offset_ns: int) -> None:
        """Add ``offset_ns`` to the kernel clock at once (ADJ_SETOFFSET), then notify.

        A slew in progress keeps going: its books move with the clock."""
        require_int_ns("offset_ns", offset_ns)
        with self._lock:
            tx = Timex()
            tx.modes = ADJ_SETOFFSET | ADJ_NANO
            tx.time.tv_sec, tx.time.tv_usec = ns_to_setoffset_time(offset_ns)
            self._call(tx)
            seg, gain = self._view
            end = self._end_rt
            self._install(
                Segment(seg.anchor_rt + offset_ns, seg.offset_fine, 0, seg.slew_fine),
                gain,
                None if end is None else end + offset_ns,
            )
        notify_step_handlers(self._handlers, offset_ns)

    def slew(self, offset_ns: int) -> None:
        """Correct by ``offset_ns`` more: served (cooked) time moves at once, the kernel
        clock follows at up to ``max_slew_ppm``. ``remaining_slew_ns()`` is always 0 here,
        so the ``Clock`` contract's "replace the unserved slew" is "add"."""
        require_int_ns("offset_ns", offset_ns)
        if abs(offset_ns) > MAX_SLEW_NS:
            raise ValueError(f"slew of {offset_ns} ns is beyond +/-{MAX_SLEW_NS} ns; step instead")
        with self._lock:
            self._restart(offset_ns * FINE_PER_NS)

    def set_frequency_ppb(self, ppb: float) -> None:
        """Set ntpy's frequency (ppm * 2**16 in ``freq``, nominal tick); positive runs
        faster. A slew in progress continues on top of the new base rate."""
        if isinstance(ppb, bool) or not isinstance(ppb, int | float) or not math.isfinite(ppb):
            raise ValueError(f"frequency must be a finite number of ppb, got {ppb!r}")
        if abs(ppb) > KERNEL_MAX_FREQ_PPB:
            raise ValueError(
                f"frequency {ppb} ppb is beyond the kernel's limit of +/-{KERNEL_MAX_FREQ_PPB}"
            )
        with self._lock:
            self._base_freq = ppb_to_timex_freq(ppb)
            self._restart()

    def frequency_ppb(self) -> float:
        """ntpy's frequency correction (the base rate, without any slew)."""
        with self._lock:
            return timex_freq_to_ppb(self._base().freq)

    def remaining_slew_ns(self) -> int:
        """0: served time already includes every correction (see ``kernel_slew_ns``)."""
        return 0

    def add_step_handler(self, handler: StepHandler) -> None:
        """Register ``handler`` to be called with every step (ns)."""
        self._handlers.append(handler)

    # --- the slew timer ---------------------------------------------------------------------

    def timer_due_in_ns(self) -> int | None:
        """Kernel-clock ns until ``on_timer()`` should run (0: now), None if no slew runs.

        CLOCK_MONOTONIC runs at the kernel clock's rate, so the daemon can wait this long
        on its monotonic timers."""
        end = self._end_rt
        if end is None:
            return None
        return max(0, end - self._realtime())

    def on_timer(self) -> None:
        """End a slew whose time has come: back to the base rate, and slew again whatever
        the timer's lateness over- (or under-)corrected. Harmless at any other time."""
        with self._lock:
            end = self._end_rt
            if end is not None and self._realtime() >= end:
                self._restart()

    def kernel_slew_ns(self) -> int:
        """Correction the kernel clock has yet to slew (served minus kernel time)."""
        with self._lock:
            return _div_toward_zero(self._pending_fine(self._realtime()), FINE_PER_NS)

    def add_segment_listener(self, listener: SegmentListener) -> None:
        """Register ``listener(segment, gain_mppb)``: told the served-time mapping after
        every change and once now (worker processes serve from a copy, via ``served_ns``)."""
        with self._lock:
            self._listeners.append(listener)
            listener(*self._view)

    def hand_off_slew(self, offset_ns: int) -> None:
        """Slew by ``offset_ns`` through ADJ_OFFSET_SINGLESHOT (500 ppm, us resolution):
        the kernel finishes it alone, so a program may exit at once (``ntpy sync``)."""
        require_int_ns("offset_ns", offset_ns)
        if abs(offset_ns) > MAX_SLEW_NS:
            raise ValueError(f"slew of {offset_ns} ns is beyond +/-{MAX_SLEW_NS} ns; step instead")
        tx = Timex()
        tx.modes = ADJ_OFFSET_SINGLESHOT
        tx.offset = _us_round(offset_ns)
        self._call(tx)

    def close(self) -> None:
        """Stop slewing before the daemon exits: the base rate back, and the correction
        still pending handed to the kernel's own slew, so the clock is never left fast."""
        with self._lock:
            if self._end_rt is None and self._rate is None:
                return
            base = self._base()
            rest = self._pending_fine(self._realtime()) // FINE_PER_NS
            t_change = self._program(base)
            self._install(Segment(t_change, 0, 0, 0), 0, None)
            if abs(rest) >= _NS_PER_US:
                self.hand_off_slew(max(-MAX_SLEW_NS, min(MAX_SLEW_NS, rest)))

    # --- kernel synchronisation status ------------------------------------------------

    @property
    def slew_rate_ppm(self) -> float:
        """The fastest slew."""
        return self._max_slew_ppm

    @property
    def singleshot_slew_rate_ppm(self) -> float:
        """The kernel's fixed ADJ_OFFSET_SINGLESHOT rate (``hand_off_slew``)."""
        return float(KERNEL_SLEW_RATE_PPM)

    def status(self) -> KernelClockStatus:
        """The kernel's synchronisation state (read-only adjtimex)."""
        state, tx = self._read()
        pll = int(tx.offset) if tx.status & STA_NANO else int(tx.offset) * _NS_PER_US
        return KernelClockStatus(
            state=state,
            status=int(tx.status),
            synchronised=not (tx.status & STA_UNSYNC) and state != TIME_ERROR,
            maxerror_ns=int(tx.maxerror) * _NS_PER_US,
            esterror_ns=int(tx.esterror) * _NS_PER_US,
            frequency_ppb=timex_freq_to_ppb(tx.freq),
            tick=int(tx.tick),
            pll_offset_ns=pll,
            tai_offset_s=int(tx.tai),
        )

    def set_sync_status(self, synchronised: bool, est_error_ns: int, max_error_ns: int) -> None:
        """Tell the kernel whether the clock is synchronised and how well.

        Like chrony: errors are capped at 16 s (NTP_PHASE_LIMIT); a maximum error at that
        cap means "not synchronised"; unsynchronised sets both errors to the cap. The
        kernel then grows maxerror by 500 us/s on its own and sets STA_UNSYNC when it
        reaches 16 s, so a dead daemon stops claiming sync. Note that with STA_UNSYNC clear
        Linux also copies the system time to the RTC every 11 minutes.
        """
        require_int_ns("est_error_ns", est_error_ns)
        require_int_ns("max_error_ns", max_error_ns)
        if est_error_ns < 0 or max_error_ns < 0:
            raise ValueError("error bounds must be non-negative")
        est_us = min(_us_ceil(est_error_ns), NTP_PHASE_LIMIT_US)
        max_us = _us_ceil(max_error_ns)
        if max_us >= NTP_PHASE_LIMIT_US:
            max_us = NTP_PHASE_LIMIT_US
            synchronised = False
        if not synchronised:
            est_us = max_us = NTP_PHASE_LIMIT_US
        status = self._status & ~STA_UNSYNC if synchronised else self._status | STA_UNSYNC
        tx = Timex()
        tx.modes = ADJ_STATUS | ADJ_ESTERROR | ADJ_MAXERROR
        tx.status = status
        tx.esterror = est_us
        tx.maxerror = max_us
        self._call(tx)
        self._status = status

    def set_leap(self, leap: int) -> None:
        """Arm the kernel for a leap second at the end of the UTC day: +1 insert, -1 delete,
        0 none (STA_INS/STA_DEL). The kernel itself performs it at midnight."""
        if leap not in (-1, 0, 1) or isinstance(leap, bool):
            raise ValueError(f"leap must be -1, 0 or 1, got {leap!r}")
        status = self._status & ~(STA_INS | STA_DEL)
        if leap > 0:
            status |= STA_INS
        elif leap < 0:
            status |= STA_DEL
        tx = Timex()
        tx.modes = ADJ_STATUS
        tx.status = status
        self._call(tx)
        self._status = status

    def leap_applied(self) -> bool:
        """The kernel has performed the armed leap (TIME_OOP, TIME_WAIT): what tells the
        two passes through an inserted second apart. An unsynchronised kernel answers
        TIME_ERROR instead, and this says False."""
        return self._read()[0] in (TIME_OOP, TIME_WAIT)

    def reset_kernel_discipline(self) -> None:
        """Take the clock over from any previous NTP daemon (what chrony does at start):
        clear the kernel PLL's pending offset and turn the PLL off, cancel an adjtime()
        slew, put the tick back to nominal (keeping the frequency), and leave the clock
        marked unsynchronised. Call once before the first adjustment."""
        with self._lock:
            tx = Timex()
            tx.modes = ADJ_OFFSET | ADJ_STATUS
            tx.status = STA_PLL | STA_UNSYNC
            tx.offset = 0
            self._call(tx)
            tx = Timex()
            tx.modes = ADJ_STATUS
            tx.status = STA_UNSYNC
            self._call(tx)
            self._status = STA_UNSYNC
            self.hand_off_slew(0)
            self._base_freq = None
            base = self._base()
            if self._read()[1].tick != nominal_tick(self._user_hz) or self._rate is None:
                t_change = self._program(base)
                self._install(Segment(t_change, 0, 0, 0), 0, None)

    def state(self) -> dict[str, int | float | str | bool]:
        """Snapshot for status pages, like VirtualClock.state (read-only calls only)."""
        st = self.status()
        return {
            "name": self.name,
            "frequency_ppb": self.frequency_ppb(),
            "remaining_slew_ns": self.remaining_slew_ns(),
            "kernel_slew_ns": self.kernel_slew_ns(),
            "tick": st.tick,
            "slew_rate_ppm": self.slew_rate_ppm,
            "synchronised": st.synchronised,
            "maxerror_ns": st.maxerror_ns,
            "esterror_ns": st.esterror_ns,
        }


def _clock_realtime() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def _applied(seg: Segment, gain: int, rt: int) -> int:
    """Signed slew the kernel clock made between the segment's anchor and ``rt`` (fine)."""
    elapsed = rt - seg.anchor_rt
    if not seg.slew_fine or elapsed <= 0:
        return 0
    done = gain * elapsed
    return done if seg.slew_fine < 0 else -done


def _div_toward_zero(a: int, b: int) -> int:
    return a // b if a >= 0 else -((-a) // b)
