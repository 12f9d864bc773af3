"""A model of the Linux kernel clock, so the simulator grades the adapter root users run.

``KernelClock`` is a fake C library: its ``adjtimex`` takes a ``POINTER(Timex)`` and
behaves as Linux's ``kernel/time/ntp.c`` and ``timekeeping.c`` do for every field ntpy
touches, over the simulator's oscillator and true time. ``SystemClock`` is given it as its
libc and ``read_ns`` as its CLOCK_REALTIME, and runs unchanged. Written from reading the
kernel source; the parts modelled:

* The clock advances, per second of its oscillator, by ``second_length`` ns (2**-32 ns
  units): ``tick * USER_HZ`` us plus ``time_freq`` (``ntp_update_frequency``); a change of
  tick or frequency takes effect at once, keeping the current second's phase adjustment.
* Each time the clock crosses a whole second (``second_overflow``): the leap-second state
  machine, maxerror grown by 500 us and STA_UNSYNC set at 16 s, the kernel PLL's phase
  chunk (``time_offset >> (SHIFT_PLL + time_constant)``), and the ADJ_OFFSET_SINGLESHOT
  slew at 500 us per second (MAX_TICKADJ). Seconds with none of those are skipped in bulk.
* ``adjtimex`` modes: ADJ_OFFSET (the PLL/FLL, only with STA_PLL, ``ntp_update_offset``),
  ADJ_FREQUENCY (clamped to +/-500 ppm), ADJ_MAXERROR/ADJ_ESTERROR (clamped to 0..16 s),
  ADJ_STATUS (turning STA_PLL off resets status to STA_UNSYNC; read-only bits kept),
  ADJ_TIMECONST, ADJ_TAI, ADJ_SETOFFSET (a step), ADJ_MICRO/ADJ_NANO, ADJ_TICK, and
  ADJ_OFFSET_SINGLESHOT / ADJ_OFFSET_SS_READ (adjtime(), returning the old offset).
* Checks (``ntp_validate_timex``): EPERM without privilege, EINVAL for a tick beyond
  +/-10%, a set-offset fraction outside [0, 1 s), ADJ_ADJTIME without its singleshot bit,
  or a frequency that would overflow. The return value is the clock state, TIME_ERROR
  while STA_UNSYNC (or STA_CLOCKERR) is set; ``timex.time`` is the time of the call.

Not modelled: PPS, the clocksource's own mult adjustment (the kernel converges its
NTP error within a few ticks; here the rate changes exactly), and HZ rounding of the
per-tick lengths. ``strict=True`` also refuses (EINVAL) values the kernel would silently
clamp (frequency beyond 500 ppm, error bounds beyond 16 s), so tests catch an adapter that
relies on clamping.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import Any

from ntpy.clock.timex import (
    ADJ_ESTERROR,
    ADJ_FREQUENCY,
    ADJ_MAXERROR,
    ADJ_MICRO,
    ADJ_NANO,
    ADJ_OFFSET,
    ADJ_SETOFFSET,
    ADJ_STATUS,
    ADJ_TAI,
    ADJ_TICK,
    ADJ_TIMECONST,
    STA_CLOCKERR,
    STA_DEL,
    STA_FLL,
    STA_FREQHOLD,
    STA_INS,
    STA_MODE,
    STA_NANO,
    STA_PLL,
    STA_RONLY,
    STA_UNSYNC,
    TIME_DEL,
    TIME_ERROR,
    TIME_INS,
    TIME_OK,
    TIME_OOP,
    TIME_WAIT,
    Timex,
)
from ntpy.core.timestamps import NS_PER_S

SCALE = 32
"""NTP_SCALE_SHIFT: lengths are ns * 2**32."""
SHIFT_PLL = 2
SHIFT_FLL = 2
MAXTC = 10
PPM_SCALE = 1000 << (SCALE - 16)
PPM_SCALE_INV_SHIFT = 19
PPM_SCALE_INV = (1 << (PPM_SCALE_INV_SHIFT + SCALE)) // PPM_SCALE + 1
MAXPHASE = 500_000_000
MAXFREQ = 500_000
MAXFREQ_SCALED = MAXFREQ << SCALE
MINSEC = 256
MAXSEC = 2048
NTP_PHASE_LIMIT = (MAXPHASE // 1000) << 5
MAX_TICKADJ = 500
"""us of adjtime() slew per second."""
ADJ_ADJTIME = 0x8000
ADJ_OFFSET_READONLY = 0x2000
_SINGLESHOT_BIT = 0x0001
_LLONG_MAX = (1 << 63) - 1
_LLONG_MIN = -(1 << 63)


def shift_right(x: int, s: int) -> int:
    """The kernel's sign-symmetric shift."""
    return -((-x) >> s) if x < 0 else x >> s


def _c_div(a: int, b: int) -> int:
    """C integer division (toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


class KernelClock:
    """Linux's NTP clock state over an oscillator; ``adjtimex`` is the syscall."""

    def __init__(
        self,
        osc_read: Callable[[int], int],
        true_now: Callable[[], int],
        *,
        user_hz: int = 100,
        privileged: bool = True,
        strict: bool = False,
    ) -> None:
        """``osc_read(true_ns)`` is the free-running oscillator's reading (ns) at true time
        ``true_ns``; ``true_now()`` is true time now. The clock starts at the oscillator's
        reading, nominal tick, frequency 0, unsynchronised (as after boot)."""
        self._osc = osc_read
        self._now = true_now
        self.user_hz = user_hz
        self.privileged = privileged
        self.strict = strict
        o = osc_read(true_now())
        self._o_a = o
        self._k_a = o << SCALE
        self.tick_usec = 1_000_000 // user_hz
        self.time_freq = 0
        self.time_offset = 0
        """PLL phase still to apply, ns * 2**32 (per second; the kernel keeps it per tick)."""
        self.time_constant = 2
        self.time_maxerror = NTP_PHASE_LIMIT
        self.time_esterror = NTP_PHASE_LIMIT
        self.time_status = STA_UNSYNC
        self.time_state = TIME_OK
        self.time_adjust = 0
        """adjtime() slew still to apply, us."""
        self.time_reftime = 0
        self.tai = 0
        self._base = self._second_length()
        self._len = self._base
        self.calls = 0

    # --- the clock --------------------------------------------------------------------------

    def _second_length(self) -> int:
        return ((self.tick_usec * 1000 * self.user_hz) << SCALE) + self.time_freq

    def _kernel_at(self, o: int) -> int:
        return self._k_a + (o - self._o_a) * self._len // NS_PER_S

    def _idle(self) -> bool:
        """No per-second work: no slew, no PLL phase, no leap pending."""
        return (
            self.time_adjust == 0
            and self.time_offset == 0
            and self._len == self._base
            and self.time_state == TIME_OK
            and not self.time_status & (STA_INS | STA_DEL)
        )

    def _advance(self) -> int:
        """Run the clock up to now (second overflows included); re-anchor; return it."""
        o = self._osc(self._now())
        while True:
            k_ns = self._k_a >> SCALE
            boundary = (k_ns // NS_PER_S + 1) * NS_PER_S
            k_o = self._kernel_at(o)
            if k_o < boundary << SCALE:
                break
            if self._idle():
                crossed = (k_o >> SCALE) // NS_PER_S - k_ns // NS_PER_S
                self._bump_maxerror(crossed)
                break
            need = (boundary << SCALE) - self._k_a
            o_b = self._o_a + -(-need * NS_PER_S // self._len)
            self._k_a = self._kernel_at(o_b)
            self._o_a = o_b
            leap = self._second_overflow(boundary // NS_PER_S)
            self._k_a += (leap * NS_PER_S) << SCALE
        self._k_a = self._kernel_at(o)
        self._o_a = o
        return self._k_a

    def read_ns(self) -> int:
        """CLOCK_REALTIME now, ns."""
        return self._advance() >> SCALE

    def true_ns_for(self, kernel_ns: int) -> int:
        """About how much true time the clock takes to advance ``kernel_ns`` at its current
        rate (the oscillator's own error, a few hundred ppm at most, is left out)."""
        return -(-kernel_ns * (NS_PER_S << SCALE) // self._len)

    def _bump_maxerror(self, seconds: int) -> None:
        self.time_maxerror += (MAXFREQ // 1000) * seconds
        if self.time_maxerror > NTP_PHASE_LIMIT:
            self.time_maxerror = NTP_PHASE_LIMIT
            self.time_status |= STA_UNSYNC

    def _second_overflow(self, secs: int) -> int:
        """One second passed (kernel ``second_overflow``); returns the leap (-1 inserts)."""
        leap = 0
        st = self.time_state
        if st == TIME_OK:
            if self.time_status & STA_INS:
                self.time_state = TIME_INS
            elif self.time_status & STA_DEL:
                self.time_state = TIME_DEL
        elif st == TIME_INS:
            if not self.time_status & STA_INS:
                self.time_state = TIME_OK
            elif secs % 86400 == 0:
                leap = -1
                self.time_state = TIME_OOP
        elif st == TIME_DEL:
            if not self.time_status & STA_DEL:
                self.time_state = TIME_OK
            elif (secs + 1) % 86400 == 0:
                leap = 1
                self.time_state = TIME_WAIT
        elif st == TIME_OOP:
            self.time_state = TIME_WAIT
        elif st == TIME_WAIT and not self.time_status & (STA_INS | STA_DEL):
            self.time_state = TIME_OK
        self._bump_maxerror(1)
        length = self._base
        delta = shift_right(self.time_offset, SHIFT_PLL + self.time_constant)
        self.time_offset -= delta
        length += delta
        adj = self.time_adjust
        if adj > MAX_TICKADJ:
            self.time_adjust -= MAX_TICKADJ
            length += (MAX_TICKADJ * 1000) << SCALE
        elif adj < -MAX_TICKADJ:
            self.time_adjust += MAX_TICKADJ
            length -= (MAX_TICKADJ * 1000) << SCALE
        elif adj:
            length += (adj * 1000) << SCALE
            self.time_adjust = 0
        self._len = length
        return leap

    def _update_frequency(self) -> None:
        new_base = self._second_length()
        self._len += new_base - self._base
        self._base = new_base

    # --- the syscall ----------------------------------------------------------------------

    def adjtimex(self, ptr: Any) -> int:
        """``int adjtimex(struct timex *)``: -1 with errno on failure, else the clock state."""
        self.calls += 1
        tx: Timex = ptr.contents
        err = self._validate(tx)
        if err:
            ctypes.set_errno(err)
            return -1
        modes = int(tx.modes)
        self._advance()
        if modes & ADJ_SETOFFSET and not modes & ADJ_ADJTIME:
            frac = int(tx.time.tv_usec) * (1 if modes & ADJ_NANO else 1000)
            self._k_a += (int(tx.time.tv_sec) * NS_PER_S + frac) << SCALE
        now_ns = self._k_a >> SCALE
        if modes & ADJ_ADJTIME:
            save = self.time_adjust
            if not modes & ADJ_OFFSET_READONLY:
                self.time_adjust = int(tx.offset)
                self._update_frequency()
            tx.offset = save
        else:
            if modes:
                self._process_modes(tx, modes, now_ns)
            off = shift_right(self.time_offset, SCALE)
            tx.offset = off if self.time_status & STA_NANO else _c_div(off, 1000)
        result = self.time_state
        if self.time_status & (STA_UNSYNC | STA_CLOCKERR):
            result = TIME_ERROR
        tx.freq = shift_right((self.time_freq >> PPM_SCALE_INV_SHIFT) * PPM_SCALE_INV, SCALE)
        tx.maxerror = self.time_maxerror
        tx.esterror = self.time_esterror
        tx.status = self.time_status
        tx.constant = self.time_constant
        tx.precision = 1
        tx.tolerance = MAXFREQ_SCALED // PPM_SCALE
        tx.tick = self.tick_usec
        tx.tai = self.tai
        tx.time.tv_sec, frac_ns = divmod(now_ns, NS_PER_S)
        tx.time.tv_usec = frac_ns if self.time_status & STA_NANO else frac_ns // 1000
        return result

    def _validate(self, tx: Timex) -> int:
        modes = int(tx.modes)
        if modes & ADJ_ADJTIME:
            if not modes & _SINGLESHOT_BIT:
                return errno.EINVAL
            if not modes & ADJ_OFFSET_READONLY and not self.privileged:
                return errno.EPERM
            return 0
        if modes and not self.privileged:
            return errno.EPERM
        lo, hi = 900_000 // self.user_hz, 1_100_000 // self.user_hz
        if modes & ADJ_TICK and not lo <= int(tx.tick) <= hi:
            return errno.EINVAL
        if modes & ADJ_SETOFFSET:
            limit = NS_PER_S if modes & ADJ_NANO else 1_000_000
            if not 0 <= int(tx.time.tv_usec) < limit:
                return errno.EINVAL
        if modes & ADJ_FREQUENCY:
            freq = int(tx.freq)
            if not _LLONG_MIN // PPM_SCALE <= freq <= _LLONG_MAX // PPM_SCALE:
                return errno.EINVAL
            if self.strict and abs(freq * PPM_SCALE) > MAXFREQ_SCALED:
                return errno.EINVAL
        if self.strict:
            for bit, value in ((ADJ_MAXERROR, tx.maxerror), (ADJ_ESTERROR, tx.esterror)):
                if modes & bit and not 0 <= int(value) <= NTP_PHASE_LIMIT:
                    return errno.EINVAL
        return 0

    def _process_modes(self, tx: Timex, modes: int, now_ns: int) -> None:
        """``process_adjtimex_modes``, in the kernel's order."""
        if modes & ADJ_STATUS:
            new = int(tx.status)
            if self.time_status & STA_PLL and not new & STA_PLL:
                self.time_state = TIME_OK
                self.time_status = STA_UNSYNC
            if not self.time_status & STA_PLL and new & STA_PLL:
                self.time_reftime = now_ns // NS_PER_S
            self.time_status = (self.time_status & STA_RONLY) | (new & ~STA_RONLY)
        if modes & ADJ_NANO:
            self.time_status |= STA_NANO
        if modes & ADJ_MICRO:
            self.time_status &= ~STA_NANO
        if modes & ADJ_FREQUENCY:
            freq = int(tx.freq) * PPM_SCALE
            self.time_freq = max(-MAXFREQ_SCALED, min(MAXFREQ_SCALED, freq))
        if modes & ADJ_MAXERROR:
            self.time_maxerror = max(0, min(NTP_PHASE_LIMIT, int(tx.maxerror)))
        if modes & ADJ_ESTERROR:
            self.time_esterror = max(0, min(NTP_PHASE_LIMIT, int(tx.esterror)))
        if modes & ADJ_TIMECONST:
            tc = int(tx.constant) + (0 if self.time_status & STA_NANO else 4)
            self.time_constant = max(0, min(MAXTC, tc))
        if modes & ADJ_TAI and int(tx.constant) > 0:
            self.tai = int(tx.constant)
        if modes & ADJ_OFFSET:
            self._update_offset(int(tx.offset), now_ns // NS_PER_S)
        if modes & ADJ_TICK:
            self.tick_usec = int(tx.tick)
        if modes & (ADJ_TICK | ADJ_FREQUENCY | ADJ_OFFSET):
            self._update_frequency()

    def _update_offset(self, offset: int, now_s: int) -> None:
        """``ntp_update_offset``: the kernel PLL/FLL (only with STA_PLL)."""
        if not self.time_status & STA_PLL:
            return
        if not self.time_status & STA_NANO:
            offset = max(-1_000_000, min(1_000_000, offset)) * 1000
        offset = max(-MAXPHASE, min(MAXPHASE, offset))
        secs = now_s - self.time_reftime
        if self.time_status & STA_FREQHOLD:
            secs = 0
        self.time_reftime = now_s
        self.time_status &= ~STA_MODE
        freq_adj = 0
        if secs >= MINSEC and (self.time_status & STA_FLL or secs > MAXSEC):
            self.time_status |= STA_MODE
            freq_adj = _c_div(offset << (SCALE - SHIFT_FLL), secs)
        secs = min(secs, 1 << (SHIFT_PLL + 1 + self.time_constant))
        freq_adj += (offset * secs) << (SCALE - 2 * (SHIFT_PLL + 2 + self.time_constant))
        self.time_freq = max(-MAXFREQ_SCALED, min(MAXFREQ_SCALED, freq_adj + self.time_freq))
        self.time_offset = offset << SCALE
