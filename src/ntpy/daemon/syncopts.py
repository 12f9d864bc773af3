"""ntp.conf's tinker/tos/makestep/local lines as the engine's ``SyncOptions``: the one
translation from the admin's units (seconds, ntpd's names) to the core's (ns)."""

from __future__ import annotations

from ntpy.config import Config
from ntpy.core.engine import SyncOptions
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S as NS


def sync_options(
    config: Config,
    *,
    precision: int,
    clock_name: str,
    local: LocalReference | None,
    initial_frequency_ppb: float | None,
    allow_panic_step: bool,
    clock_vouched: bool = False,
) -> SyncOptions:
    """Translate ntp.conf's tinker/tos/makestep lines into engine options."""
    t, tos = config.tinker, config.tos
    makestep = None
    if config.makestep is not None:
        makestep = (int(config.makestep.threshold * NS), config.makestep.limit)
    return SyncOptions(
        precision=precision,
        step_threshold_ns=int(t.step * NS),
        stepout_ns=int(t.stepout * NS),
        panic_threshold_ns=int(t.panic * NS),
        panic_exit=t.panicexit,
        allow_panic_step=allow_panic_step,
        makestep=makestep,
        maxdist_ns=int(tos.maxdist * NS),
        mindist_ns=int(tos.mindist * NS),
        minsane=tos.minsane,
        minclock=tos.minclock,
        maxclock=tos.maxclock,
        initial_frequency_ppb=initial_frequency_ppb,
        local=local,
        orphan_stratum=tos.orphan,
        orphanwait_ns=int(tos.orphanwait * NS),
        local_standalone=not config.servers and all(r.is_local for r in config.refclocks),
        fallback_cold_start=tos.coldstart,
        fallback_activate_ns=local_activate_ns(config),
        clock_vouched=clock_vouched,
        clock_name=clock_name,
    )


def local_activate_ns(config: Config) -> int | None:
    """chrony's ``local activate D`` in ns; ``activate 0`` (chrony's "off") and no option
    mean any synchronization arms the fallback."""
    if config.local is None or not config.local.activate:
        return None
    return int(config.local.activate * NS)
