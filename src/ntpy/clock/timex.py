"""``struct timex`` from <sys/timex.h> as a ctypes structure, plus its mode and status bits.

Layout (glibc and musl, Linux): every field except ``modes``, ``status``, ``shift`` and
``tai`` is a C ``long``, ``time`` is a ``struct timeval`` of two longs, and the struct ends
with eleven reserved ints. On LP64 (x86_64, aarch64) that is 208 bytes; ctypes inserts the
same alignment padding the C compiler does (after ``modes``, ``status``, ``shift``), and
the tests compare every offset with a compiled C program. On 32-bit targets the
all-``long`` layout is the classic ABI of the ``adjtimex`` symbol (not the 64-bit-time
``__adjtimex64`` variant), so it still matches the function we call.

The constants are Linux's values, copied as facts from the header so this module needs no
compiler at run time.
"""

from __future__ import annotations

import ctypes
import math

from ntpy.core.timestamps import NS_PER_S

# --- modes (what to set) ---------------------------------------------------------------
ADJ_OFFSET = 0x0001
"""Feed ``offset`` to the kernel PLL/FLL (not used by ntpy; see SystemClock.slew)."""
ADJ_FREQUENCY = 0x0002
ADJ_MAXERROR = 0x0004
ADJ_ESTERROR = 0x0008
ADJ_STATUS = 0x0010
ADJ_TIMECONST = 0x0020
ADJ_TAI = 0x0080
ADJ_SETOFFSET = 0x0100
"""Add ``time`` to the clock at once (a step)."""
ADJ_MICRO = 0x1000
ADJ_NANO = 0x2000
"""``time.tv_usec`` (and PLL ``offset``) are nanoseconds, not microseconds."""
ADJ_TICK = 0x4000
ADJ_OFFSET_SINGLESHOT = 0x8001
"""Old ``adjtime()`` semantics: slew by ``offset`` microseconds at a fixed 500 ppm."""
ADJ_OFFSET_SS_READ = 0xA001
"""Read the remaining ``adjtime()`` slew without changing it (no privilege needed)."""

# --- status bits ------------------------------------------------------------------------
STA_PLL = 0x0001
STA_PPSFREQ = 0x0002
STA_PPSTIME = 0x0004
STA_FLL = 0x0008
STA_INS = 0x0010
STA_DEL = 0x0020
STA_UNSYNC = 0x0040
STA_FREQHOLD = 0x0080
STA_PPSSIGNAL = 0x0100
STA_PPSJITTER = 0x0200
STA_PPSWANDER = 0x0400
STA_PPSERROR = 0x0800
STA_CLOCKERR = 0x1000
STA_NANO = 0x2000
STA_MODE = 0x4000
STA_CLK = 0x8000
STA_RONLY = 0xFF00
"""Bits the kernel owns; writing ADJ_STATUS leaves them alone."""

# --- clock states (adjtimex return value) ----------------------------------------------
TIME_OK = 0
TIME_INS = 1
TIME_DEL = 2
TIME_OOP = 3
TIME_WAIT = 4
TIME_ERROR = 5

FREQ_SCALE = 1 << 16
"""``timex.freq`` is in ppm scaled by 2**16 (units of 2**-16 ppm ~ 0.0153 ppb)."""

KERNEL_MAX_FREQ_PPB = 500_000
"""The kernel clamps ``freq`` to +/-500 ppm (MAXFREQ); larger requests are refused here."""

KERNEL_SLEW_RATE_PPM = 500
"""ADJ_OFFSET_SINGLESHOT slews at 500 us per second (kernel MAX_TICKADJ)."""

NTP_PHASE_LIMIT_US = 16_000_000
"""maxerror at/above 16 s means unsynchronised; the kernel sets STA_UNSYNC there."""


class Timeval(ctypes.Structure):
    """``struct timeval`` inside ``struct timex``; ``tv_usec`` holds ns under ADJ_NANO."""

    _fields_ = (
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
    )


class Timex(ctypes.Structure):
    """``struct timex`` (see module docstring for the layout argument)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


def ppb_to_timex_freq(ppb: float) -> int:
    """Encode a frequency correction in ppb as ``timex.freq`` (ppm * 2**16), rounded.

    Positive means the clock runs faster (the kernel lengthens each tick).
    """
    if not math.isfinite(ppb):
        raise ValueError(f"frequency must be a finite number of ppb, got {ppb!r}")
    return round(ppb * FREQ_SCALE / 1000)


def timex_freq_to_ppb(freq: int) -> float:
    """Decode ``timex.freq`` (ppm * 2**16) to ppb."""
    return freq * 1000 / FREQ_SCALE


def ns_to_setoffset_time(offset_ns: int) -> tuple[int, int]:
    """Split a signed step into (tv_sec, tv_nsec) with 0 <= tv_nsec < 1e9, as ADJ_SETOFFSET
    with ADJ_NANO requires (the kernel rejects a negative or oversize fraction with EINVAL).

    -1 ns therefore becomes (-1, 999_999_999).
    """
    return divmod(offset_ns, NS_PER_S)
