"""The sync engine's settings, shared by every stage of the sample pipeline.

One frozen dataclass, filled by the daemon from ``tinker``/``tos``/``tos orphan``/``local``
and the command line (or by the simulator), so each stage reads the thresholds it applies
from the same place and none of them imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S


@dataclass(frozen=True, slots=True)
class SyncOptions:
    precision: int = -20
    step_threshold_ns: int = 128_000_000
    """``tinker step``: larger offsets are stepped at once (first update) or after stepout."""
    stepout_ns: int = 300 * NS_PER_S
    panic_threshold_ns: int = 1000 * NS_PER_S
    """``tinker panic``: refuse offsets beyond this; 0 = no limit."""
    panic_exit: bool = False
    """``tinker panicexit``: beyond the panic threshold after the first update, stop (as
    ntpd) rather than ignore the sources claiming it and hold over."""
    allow_panic_step: bool = False
    """ntpd ``-g``: the first update may step any distance."""
    makestep: tuple[int, int] | None = None
    """chrony ``makestep THRESHOLD LIMIT``: step if beyond threshold in the first LIMIT
    updates (LIMIT < 0: always)."""
    maxdist_ns: int = 1_500_000_000
    mindist_ns: int = 1_000_000
    """``tos mindist``: the floor of every source's root distance (ntpd's sys_mindisp), so
    close sources with tiny distances still overlap and form a majority."""
    minsane: int = 1
    minclock: int = 3
    maxclock: int = 10
    initial_frequency_ppb: float | None = None
    local: LocalReference | None = None
    orphan_stratum: int = 16
    orphanwait_ns: int = 300 * NS_PER_S
    local_standalone: bool = True
    """No upstream is configured: the local clock is the time source, served at once (the
    admin chose it). False (the daemon, with servers configured): a local clock or orphan
    mode is a fallback and obeys the activation rule below even before any source exists
    (a pool whose names do not resolve is no reason to serve the local clock cold)."""
    fallback_cold_start: bool = False
    """``tos coldstart 1``: the fallback may take over before this clock was ever known
    good. Off by default: a fallback serves only a clock synchronized in this run, or one
    the last-good time file vouches for (``clock_vouched``)."""
    fallback_activate_ns: int | None = None
    """chrony's ``local activate D``: the fallback is armed only once the root distance
    after an update is below D (None: any synchronization arms it)."""
    clock_vouched: bool = False
    """The last-good time file says this clock was synchronized recently and the clock
    agrees with it (``core/clockguard.py``): the fallback is armed from the start."""
    clock_name: str = "virtual"
