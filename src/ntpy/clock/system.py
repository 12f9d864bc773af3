"""The system clock: CLOCK_REALTIME, adjusted through ``adjtimex`` (needs CAP_SYS_TIME).

The C library is reached with ``ctypes.CDLL(None)`` and is injectable, so tests hand in a
fake that records and decodes each ``struct timex`` instead of touching the host clock.

How each operation maps onto the kernel (the same fields chrony's sys_timex.c/sys_linux.c
and ntpd use):

* step -- ADJ_SETOFFSET | ADJ_NANO, ``time`` = the signed offset as (s, ns) with the ns
  part in [0, 1e9). The kernel adds it to the clock atomically, so no read-modify-write
  race as with ``clock_settime``.
* slew -- ADJ_OFFSET_SINGLESHOT (old ``adjtime()`` semantics): the kernel slews the whole
  offset linearly at 500 ppm and a new call replaces the remaining one, which is exactly
  the ``Clock.slew`` contract and matches the virtual clock's default rate. The
  alternative, ADJ_OFFSET with STA_PLL, hands the offset to the kernel PLL, which decays
  it exponentially and also changes the frequency by itself -- a second discipline loop
  fighting ntpy's own. The singleshot offset is in microseconds (ADJ_NANO does not apply).
* frequency -- ADJ_FREQUENCY, ``freq`` = ppm * 2**16, positive = clock runs faster.
* sync status -- ADJ_STATUS | ADJ_MAXERROR | ADJ_ESTERROR with STA_UNSYNC cleared when
  synchronised: what ``ntptime``/``adjtimex -p`` and other programs read as "synced".
  The status word is written whole, so ntpy keeps its own copy (leap bits included), as
  chrony does, and turns the kernel PLL off by writing it.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ntpy.clock._common import notify_step_handlers, require_int_ns
from ntpy.clock.base import StepHandler
from ntpy.clock.capability import has_cap_sys_time
from ntpy.clock.errors import ClockError
from ntpy.clock.precision import measure_precision
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
    KERNEL_MAX_FREQ_PPB,
    KERNEL_SLEW_RATE_PPM,
    NTP_PHASE_LIMIT_US,
    STA_DEL,
    STA_INS,
    STA_NANO,
    STA_PLL,
    STA_UNSYNC,
    TIME_ERROR,
    Timex,
    ns_to_setoffset_time,
    ppb_to_timex_freq,
    timex_freq_to_ppb,
)
from ntpy.core.timestamps import NS_PER_S

MAX_SLEW_NS = 2145 * NS_PER_S
"""Largest singleshot slew accepted; glibc's adjtime() uses the same bound (fits in int32 us)."""

_NS_PER_US = 1000


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
    """CLOCK_REALTIME read directly and adjusted via ``adjtimex``."""

    name = "system"

    def __init__(self, libc: LibcLike | None = None, *, adjustable: bool | None = None) -> None:
        """``libc`` defaults to the process's C library; tests pass a fake.

        ``adjustable`` answers ``can_adjust()``; by default it is whether this process
        holds CAP_SYS_TIME now.
        """
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
        self._handlers: list[StepHandler] = []
        self._status = STA_UNSYNC
        self._precision: int | None = None

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

    # --- Clock protocol -----------------------------------------------------------------

    def now_ns(self) -> int:
        """CLOCK_REALTIME now, ns."""
        return time.clock_gettime_ns(time.CLOCK_REALTIME)

    def from_realtime_ns(self, realtime_ns: int) -> int:
        """Served time is realtime here."""
        return realtime_ns

    def precision(self) -> int:
        """Measured once (chrony-style read delay) and cached."""
        if self._precision is None:
            self._precision = measure_precision(self.now_ns)
        return self._precision

    def can_adjust(self) -> bool:
        """Whether adjustments can succeed (CAP_SYS_TIME at construction, or as given)."""
        return self._adjustable

    def step(self, offset_ns: int) -> None:
        """Add ``offset_ns`` to the kernel clock at once (ADJ_SETOFFSET), then notify."""
        require_int_ns("offset_ns", offset_ns)
        tx = Timex()
        tx.modes = ADJ_SETOFFSET | ADJ_NANO
        tx.time.tv_sec, tx.time.tv_usec = ns_to_setoffset_time(offset_ns)
        self._call(tx)
        notify_step_handlers(self._handlers, offset_ns)

    def slew(self, offset_ns: int) -> None:
        """Slew by ``offset_ns`` (rounded to us) at the kernel's 500 ppm; replaces a slew."""
        require_int_ns("offset_ns", offset_ns)
        if abs(offset_ns) > MAX_SLEW_NS:
            raise ValueError(f"slew of {offset_ns} ns is beyond +/-{MAX_SLEW_NS} ns; step instead")
        tx = Timex()
        tx.modes = ADJ_OFFSET_SINGLESHOT
        tx.offset = _us_round(offset_ns)
        self._call(tx)

    def set_frequency_ppb(self, ppb: float) -> None:
        """Set the kernel frequency register (ppm * 2**16); positive runs faster."""
        if isinstance(ppb, bool) or not isinstance(ppb, int | float) or not math.isfinite(ppb):
            raise ValueError(f"frequency must be a finite number of ppb, got {ppb!r}")
        if abs(ppb) > KERNEL_MAX_FREQ_PPB:
            raise ValueError(
                f"frequency {ppb} ppb is beyond the kernel's limit of +/-{KERNEL_MAX_FREQ_PPB}"
            )
        tx = Timex()
        tx.modes = ADJ_FREQUENCY
        tx.freq = ppb_to_timex_freq(ppb)
        self._call(tx)

    def frequency_ppb(self) -> float:
        """Read the kernel frequency register (read-only adjtimex)."""
        return timex_freq_to_ppb(self._read()[1].freq)

    def remaining_slew_ns(self) -> int:
        """The singleshot slew left (ADJ_OFFSET_SS_READ, read-only, us resolution)."""
        tx = Timex()
        tx.modes = ADJ_OFFSET_SS_READ
        self._call(tx)
        return int(tx.offset) * _NS_PER_US

    def add_step_handler(self, handler: StepHandler) -> None:
        """Register ``handler`` to be called with every step (ns)."""
        self._handlers.append(handler)

    # --- kernel synchronisation status ------------------------------------------------

    @property
    def slew_rate_ppm(self) -> float:
        """The kernel's fixed singleshot slew rate."""
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

    def reset_kernel_discipline(self) -> None:
        """Take the clock over from any previous NTP daemon: clear the kernel PLL's pending
        offset and turn the PLL off, leaving the clock marked unsynchronised (what chrony
        does at start). Call once before the first adjustment."""
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

    def state(self) -> dict[str, int | float | str | bool]:
        """Snapshot for status pages, like VirtualClock.state (read-only calls only)."""
        st = self.status()
        return {
            "name": self.name,
            "frequency_ppb": st.frequency_ppb,
            "remaining_slew_ns": self.remaining_slew_ns(),
            "slew_rate_ppm": self.slew_rate_ppm,
            "synchronised": st.synchronised,
            "maxerror_ns": st.maxerror_ns,
            "esterror_ns": st.esterror_ns,
        }
