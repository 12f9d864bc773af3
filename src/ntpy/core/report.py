"""What the sync engine reports: status snapshots and the reason it is (not) synchronized.

Kept apart from ``engine.py`` because none of it steers the clock: it only reads the
engine's state. The reason exists because "unsynchronised" alone left admins guessing for
hours (two upstreams 4 ms apart never formed a majority, and nothing said so): every
snapshot now carries a typed ``SyncReason`` and a sentence with the numbers behind it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ntpy.core.address import host, port
from ntpy.core.ntsauth import NtsAuth
from ntpy.core.packet import LEAP_ALARM, LEAP_NONE, refid_from_text, refid_to_text
from ntpy.core.source import Source, label
from ntpy.core.sourcestats import offset_at
from ntpy.core.status import SourceState, SourceStatus, SyncReason, SyncStatus
from ntpy.core.timestamps import NS_PER_S

if TYPE_CHECKING:
    from ntpy.core.engine import SyncEngine

__all__ = [
    "diagnose",
    "host",
    "label",
    "never_reached",
    "port",
    "source_status",
    "sync_status",
    "unreachable",
    "upstream_reason",
]

UNREACH_POLLS = 8
"""A source that never answered counts as unreachable once this many requests went
unanswered: the reach register is 8 bits, so that is when ``reach`` would read 0 anyway."""


def never_reached(src: Source) -> bool:
    """Polled ``UNREACH_POLLS`` times without one reply, ever."""
    return src.last_reply_mono is None and src.counters["requests"] >= UNREACH_POLLS


def unreachable(src: Source) -> bool:
    """Reach 0 after having answered, or never answered its first polls."""
    return src.reach == 0 and (src.last_reply_mono is not None or never_reached(src))


# ----------------------------------------------------------------- the reason


def _unselectable(sources: list[Source], maxdist_ns: int) -> str:
    """Why reachable sources are not candidates, counted by cause."""
    causes: dict[str, int] = {}
    for src in sources:
        sample = src.last_sample
        if sample is not None and (sample.leap == LEAP_ALARM or not 1 <= sample.stratum <= 15):
            cause = "unsynchronized (leap 3 or stratum 0/16)"
        elif src.loop:
            cause = "synchronized to us or to our source (timing loop)"
        elif src.config.noselect:
            cause = "noselect"
        elif src.state == SourceState.TOO_FAR:
            cause = f"root distance beyond tos maxdist {maxdist_ns / NS_PER_S:g} s"
        elif src.state == SourceState.PANIC:
            cause = "offset beyond the panic threshold (ignored)"
        else:
            continue
        causes[cause] = causes.get(cause, 0) + 1
    return ", ".join(f"{n} {cause}" for cause, n in causes.items())


def upstream_reason(eng: SyncEngine) -> tuple[SyncReason, str]:
    """Why no upstream source is being followed (ignoring whether we were synced)."""
    active = [s for s in eng.sources.values() if s.active]
    if not active:
        if eng.sources:
            return SyncReason.NO_SOURCE, "every source refused service (kiss-o'-death)"
        return SyncReason.NO_SOURCE, "no upstream source in use (none configured or resolved)"
    reachable = [s for s in active if s.reachable]
    if not reachable:
        if all(unreachable(s) for s in active):
            return (
                SyncReason.NO_REACHABLE,
                f"none of {len(active)} source(s) answered its last {UNREACH_POLLS} polls",
            )
        return SyncReason.WAITING, f"no reply yet from {len(active)} source(s)"
    out = eng.selector.outcome
    if out.failure is not None:
        return out.failure, out.detail
    if not out.candidates:
        why = _unselectable(reachable, eng.opts.maxdist_ns)
        if why:
            return SyncReason.NO_CANDIDATE, f"{len(reachable)} reachable: {why}"
        return SyncReason.WAITING, f"{len(reachable)} of {len(active)} source(s) answering"
    if eng.selector.selection is None:
        return SyncReason.WAITING, "selection has not run yet"
    return (
        SyncReason.WAITING,
        f"{len(out.candidates)} candidate(s); waiting for the first clock update "
        f"(every source's first reply, or 16 s)",
    )


def diagnose(eng: SyncEngine) -> tuple[SyncReason, str]:
    """The engine's ``SyncReason`` now, with a sentence for a human."""
    if eng.panicked:
        return (
            SyncReason.PANIC,
            f"an offset beyond the panic threshold ({eng.opts.panic_threshold_ns / NS_PER_S:g} s) "
            "was refused",
        )
    if eng.synced:
        peer = eng.sources.get(eng.system_peer) if eng.system_peer is not None else None
        if peer is not None and eng.selector.has_selection():
            return SyncReason.SYNCHRONIZED, f"following {label(peer)}"
        why, detail = upstream_reason(eng)
        return SyncReason.HOLDOVER, f"no selectable source ({why}: {detail})"
    if eng.discipline.spike_since is not None:
        return (
            SyncReason.STEP_PENDING,
            f"offset beyond the step threshold; stepping if it persists for "
            f"{eng.opts.stepout_ns // NS_PER_S} s",
        )
    return upstream_reason(eng)


# ----------------------------------------------------------------- snapshots


def source_status(eng: SyncEngine, src: Source, now_mono: int, now_clock: int) -> SourceStatus:
    status = _source_status(eng, src, now_mono, now_clock)
    clock = src.refclock
    if clock is None:
        return status
    last = src.stats.last()
    cfg = clock.config
    return replace(
        status,
        refid=cfg.refid,
        refid_raw=refid_from_text(cfg.refid),
        stratum=cfg.stratum,
        leap=last.leap if last is not None and src.reachable else LEAP_ALARM,
        type_char="l",
        precision=cfg.precision,
        ppoll=src.poll,
        error=clock.error,
    )


def _source_status(eng: SyncEngine, src: Source, now_mono: int, now_clock: int) -> SourceStatus:
    est = src.stats.estimate
    last = src.stats.last()
    sample = None if src.kod else src.last_sample  # a refusing server shows its kiss
    stratum = sample.stratum if sample else 16
    return SourceStatus(
        id=src.id,
        name=src.config.name,
        address=host(src.config.address),
        kind=src.config.kind,
        tally=src.tally,
        refid=refid_to_text(sample.refid, stratum) if sample else f".{src.kod or 'INIT'}.",
        stratum=stratum,
        leap=sample.leap if sample else LEAP_ALARM,
        type_char={"pool": "p", "peer": "s", "broadcast": "b"}.get(src.config.kind, "u"),
        when_s=None
        if src.last_reply_mono is None
        else max(0, (now_mono - src.last_reply_mono) // NS_PER_S),
        poll_s=1 << src.poll,
        reach=src.reach,
        delay_ns=est.min_delay_ns if est else 0,
        offset_ns=round(offset_at(est, now_clock)) if est else 0,
        jitter_ns=round(est.jitter_ns) if est else 0,
        dispersion_ns=src.dispersion_now(now_clock),
        root_delay_ns=last.root_delay_ns if last else 0,
        root_dispersion_ns=last.root_dispersion_ns if last else 0,
        samples=len(src.stats),
        state=src.state if src.active else SourceState.KOD,
        port=port(src.config.address),
        hpoll=src.poll,
        ppoll=sample.poll if sample else src.poll,
        reference_ns=sample.reference_ns if sample else None,
        received_ns=sample.t4_ns if sample else None,
        refid_raw=sample.refid if sample else 0,
        precision=sample.precision if sample else 0,
        configured=src.config.pool is None and src.polls,  # broadcast: ephemeral
        error=src.error,
        auth=src.config.auth_label,
        authentic=src.authentic,
        auth_failures=src.auth_failures,
        xleave=src.config.xleave,
        interleaved=src.interleaved,
        samples_interleaved=src.counters["samples_interleaved"],
        samples_total=src.counters["samples"],
        **_nts_fields(src),
    )


def _nts_fields(src: Source) -> dict[str, Any]:
    """The ``nts_*`` status fields of an NTS source; {} for any other."""
    if not isinstance(src.auth, NtsAuth):
        return {}
    info = src.auth.info()
    return {
        "nts_aead": info.aead_name if info.aead is not None else None,
        "nts_cookies": info.cookies,
        "nts_cookie_length": info.cookie_length,
        "nts_ke_attempts": info.ke_attempts,
        "nts_ke_failures": info.ke_failures,
        "nts_naks": info.naks,
        "nts_last_ke_ns": info.last_ke_wall_ns,
        "nts_ke_error": info.ke_error,
    }


def _local_status(eng: SyncEngine, now_clock: int) -> SourceStatus | None:
    """The LOCAL(0)/ORPHAN line, when a fallback is configured."""
    fallback = eng.sysvars.fallback()
    if fallback is None:
        return None
    local_st = fallback.state(now_clock, eng.opts.precision)
    serving = eng.fallback_active and not eng.synced
    return SourceStatus(
        id=0,
        name="LOCAL(0)" if eng.opts.local is not None else "ORPHAN",
        address="127.127.1.0",
        kind="local",
        tally="*" if serving else " ",
        refid=refid_to_text(local_st.refid, 1) if fallback.served_stratum <= 1 else ".LOCL.",
        stratum=max(0, fallback.served_stratum - 1),
        leap=LEAP_NONE,
        type_char="l",
        when_s=None,
        poll_s=64,
        reach=0o377 if eng.fallback_active else 0,
        delay_ns=0,
        offset_ns=0,
        jitter_ns=0,
        dispersion_ns=0,
        root_delay_ns=0,
        root_dispersion_ns=0,
        samples=0,
        state=SourceState.SYNC if serving else SourceState.STANDBY,
        hpoll=6,
        ppoll=6,
        refid_raw=local_st.refid,
        precision=eng.opts.precision,
    )


def sync_status(eng: SyncEngine, now_mono: int, now_clock: int) -> SyncStatus:
    """The snapshot behind ``ntpy status``/``stat``/``peers``, ntpq and the web page."""
    state = eng.system_state(now_clock)
    sources = [source_status(eng, s, now_mono, now_clock) for s in eng.sources.values()]
    local = _local_status(eng, now_clock)
    if local is not None:
        sources.append(local)
    peer = eng.sources.get(eng.system_peer) if eng.system_peer is not None else None
    synced = state.synchronized
    reason, detail = diagnose(eng)
    return SyncStatus(
        synchronized=synced,
        leap=state.leap,
        stratum=state.wire_stratum if synced else 16,
        refid=refid_to_text(state.refid, state.wire_stratum),
        system_peer=host(peer.config.address) if (peer and eng.synced) else None,
        system_peer_id=peer.id if (peer and eng.synced) else None,
        reference_ns=state.reference_ns,
        root_delay_ns=state.root_delay_ns,
        root_dispersion_ns=state.root_dispersion_at(now_clock),
        root_distance_ns=state.root_distance_at(now_clock),
        offset_ns=eng.discipline.offset_ns,
        frequency_ppb=eng.frequency_ppb,
        jitter_ns=eng.sysvars.jitter_ns,
        poll_s=(1 << peer.poll) if peer else 64,
        precision=eng.opts.precision,
        clock=eng.opts.clock_name,
        sources=tuple(sources),
        clock_jitter_ns=round(math.sqrt(eng.discipline.clock_jitter_sq)),
        clock_wander_ppb=math.sqrt(eng.discipline.clock_wander_sq),
        time_constant=peer.poll if peer else 6,
        min_time_constant=peer.minpoll if peer else 3,
        refid_raw=state.refid,
        updates=eng.updates,
        reason=reason,
        reason_detail=detail,
    )
