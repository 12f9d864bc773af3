"""How fast to slew the kernel clock, and which ``tick``/``freq`` pair gives that rate.

Pure integer arithmetic, separate from the syscall wrapper so it can be tested alone.

The kernel clock advances, per second of its oscillator, by
``tick * USER_HZ`` microseconds plus ``freq`` (``timex.freq``: ppm * 2**16). Measured in
``timex.freq`` units (2**-16 ppm) that rate is ``tick * USER_HZ * 2**16 + freq``, and
nominal (one second per second) is 10**6 * 2**16 = ``UNITY``. The kernel accepts a tick
within 10% of nominal (EINVAL outside) and clamps ``freq`` to +/-500 ppm, so any rate in
about +/-10% is reachable: the tick in steps of ``USER_HZ`` ppm, the rest in ``freq`` at
2**-16 ppm resolution. ntpy's own frequency correction (the *base* rate) stays in ``freq``
with the nominal tick; a slew adds its rate on top and is taken off again when it ends.

Slew rate: an offset is corrected over at least ``MIN_SLEW_NS`` (1 s), faster only when
that would exceed ``max_slew_ppm`` (chrony's default 83 333 ppm: 0.1 s in 1.2 s). Taking at
least a second keeps the kernel clock's rate error small for the small corrections of
every poll, and makes the daemon's timer lateness at the end of the slew matter little.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core.timestamps import NS_PER_S

FREQ_UNITS_PER_PPM = 1 << 16
"""``timex.freq`` units per ppm."""
UNITY = 1_000_000 * FREQ_UNITS_PER_PPM
"""One second per second in ``timex.freq`` units."""
KERNEL_MAX_FREQ_UNITS = 500 * FREQ_UNITS_PER_PPM
"""The kernel clamps ``freq`` to +/-500 ppm (MAXFREQ)."""
USER_HZ = 100
"""``tick`` is in microseconds per 1/USER_HZ s; USER_HZ is 100 on every Linux port ntpy runs on."""
DEFAULT_MAX_SLEW_PPM = 83_333.333
"""chrony's default ``maxslewrate``: also the highest value it accepts (1/12)."""
MAX_SLEW_LIMIT_PPM = 83_333.333
"""Largest allowed max slew rate: with +/-500 ppm of base frequency it keeps the tick
well inside the kernel's +/-10%."""
MIN_SLEW_NS = NS_PER_S
"""Shortest slew: offsets are corrected over at least one second."""
FINE_PER_NS = 10**12
"""Bookkeeping unit, as the virtual clock's: 1e-12 ns."""


def nominal_tick(user_hz: int = USER_HZ) -> int:
    """The tick (us per 1/USER_HZ s) that makes one second per second."""
    return 1_000_000 // user_hz


def tick_limits(user_hz: int = USER_HZ) -> tuple[int, int]:
    """The tick range the kernel accepts (``ntp_validate_timex``): +/-10%."""
    return 900_000 // user_hz, 1_100_000 // user_hz


@dataclass(frozen=True, slots=True)
class KernelRate:
    """A (tick, freq) pair as written to the kernel, and the rate it gives."""

    tick: int
    freq: int
    """``timex.freq`` units (ppm * 2**16), within +/-500 ppm."""
    user_hz: int = USER_HZ

    @property
    def units(self) -> int:
        """Clock rate in ``timex.freq`` units; ``UNITY`` is nominal."""
        return self.tick * self.user_hz * FREQ_UNITS_PER_PPM + self.freq


def base_rate(freq_units: int, user_hz: int = USER_HZ) -> KernelRate:
    """The rate with no slew: nominal tick, ntpy's frequency in ``freq``."""
    if abs(freq_units) > KERNEL_MAX_FREQ_UNITS:
        raise ValueError(f"frequency {freq_units} (2**-16 ppm) is beyond the kernel's 500 ppm")
    return KernelRate(nominal_tick(user_hz), freq_units, user_hz)


def rate_for(units: int, user_hz: int = USER_HZ) -> KernelRate:
    """The (tick, freq) pair for a total rate of ``units``: the nominal tick while the rest
    fits in ``freq`` (+/-500 ppm), else the nearest tick and the rest (at most 50 ppm) in
    ``freq``. ValueError beyond the kernel's tick range."""
    step = user_hz * FREQ_UNITS_PER_PPM
    tick = nominal_tick(user_hz)
    if abs(units - tick * step) > KERNEL_MAX_FREQ_UNITS:
        tick = (units + step // 2) // step
    lo, hi = tick_limits(user_hz)
    if not lo <= tick <= hi:
        raise ValueError(f"clock rate {units / UNITY:.6f} is beyond the kernel's tick range")
    return KernelRate(tick, units - tick * step, user_hz)


def slew_units(pending_ns: int, max_slew_ppm: float) -> int:
    """Signed slew rate (``timex.freq`` units) for ``pending_ns``: spread over
    ``MIN_SLEW_NS``, capped at ``max_slew_ppm``; 0 when it is too small to express."""
    # |pending| ns over 1 s is |pending| ppb = |pending| * 2**16 / 1000 units.
    want = abs(pending_ns) * FREQ_UNITS_PER_PPM * NS_PER_S // (1000 * MIN_SLEW_NS)
    cap = int(max_slew_ppm * FREQ_UNITS_PER_PPM)
    rate = min(want, cap)
    return rate if pending_ns > 0 else -rate


def gain_mppb(base: KernelRate, slewing: KernelRate) -> int:
    """How much of each elapsed ns of the kernel clock is slew, in 1e-12 (milli-ppb):
    the clock runs at ``slewing.units`` where it would have run at ``base.units``, so per
    ns it reads it gains (s - b) / s. Signed, rounded to nearest."""
    s, b = slewing.units, base.units
    num = (s - b) * FINE_PER_NS
    return (2 * num + s) // (2 * s)
