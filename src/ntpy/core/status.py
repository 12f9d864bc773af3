"""Read-only snapshots of the synchronization state, for ``ntpy status``/``ntpy peers``,
the control socket, metrics and the simulator's reports.

Plain frozen dataclasses of ints, floats and strings, so they serialize to JSON with
``dataclasses.asdict`` and can cross a process boundary without dragging core objects along.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TALLY_SYSPEER = "*"
"""The system peer: the source the clock follows."""
TALLY_CANDIDATE = "+"
"""A truechimer that is combined with the system peer."""
TALLY_OUTLIER = "-"
"""A truechimer discarded by the clustering algorithm."""
TALLY_FALSETICKER = "x"
"""A falseticker: its interval does not overlap the majority."""
TALLY_EXCESS = "#"
"""A good source beyond the number that are combined (``tos maxclock``)."""
TALLY_NONE = " "
"""Not selectable (unreachable, unsynchronized, too far, ``noselect``)."""


class SyncReason(enum.StrEnum):
    """Why the clock is, or is not, following an upstream source (one value at a time).

    A ``StrEnum`` so the JSON reply carries the plain words and clients may compare against
    them; the value is what ``ntpy stat``/``ntpy peers`` and the log print.
    """

    SYNCHRONIZED = "synchronized"
    """Following a system peer."""
    HOLDOVER = "holdover"
    """Synchronized earlier, no selectable source now: coasting until the root distance
    passes ``maxdist``."""
    NO_SOURCE = "no source"
    """No upstream source in use (none configured, all refused us, or names unresolved)."""
    WAITING = "waiting for samples"
    """Sources are being polled but too few replies have come in to decide."""
    NO_REACHABLE = "no reachable source"
    """Every source has missed its last 8 polls (or has never answered 8 of them)."""
    NO_CANDIDATE = "no selectable source"
    """Sources answer, but none may be selected (unsynchronized, beyond maxdist, noselect)."""
    NO_MAJORITY = "no majority"
    """No offset lies within a majority of the candidates' intervals: all are falsetickers."""
    TOO_FEW = "too few truechimers"
    """Fewer truechimers than ``tos minsane``."""
    STEP_PENDING = "step pending"
    """The offset exceeds the step threshold; stepping only if it persists for stepout."""
    PANIC = "panic"
    """An offset beyond the panic threshold was refused."""


class SourceState(enum.StrEnum):
    """What the engine last concluded about one source: the word ``ntpy peers``, the JSON
    status, ntpq's ``state`` and the metrics label show.

    A ``StrEnum`` so those outputs carry the plain words unchanged. Set by the pipeline
    stage that decides it: the poll (INIT, UNREACHABLE, UNSYNCHRONIZED, KOD), selection
    (TOO_FAR, FALSETICKER, OUTLIER, EXCESS, CANDIDATE, SELECTED, SYNC and, when selection
    fails for all, NO_MAJORITY/TOO_FEW), the discipline (PANIC) and the local fallback
    (STANDBY).
    """

    INIT = "init"
    """Not yet heard from."""
    UNREACHABLE = "unreachable"
    UNSYNCHRONIZED = "unsynchronized"
    """Its last reply carried leap 3 or stratum 0/16."""
    KOD = "kod"
    """It refused service (DENY/RSTR): no longer polled."""
    LOOP = "loop"
    """It is synchronized to us (or, a peer, to the source we follow): never selected."""
    TOO_FAR = "too far"
    """Its root distance exceeds ``tos maxdist``."""
    FALSETICKER = "falseticker"
    OUTLIER = "outlier"
    EXCESS = "excess"
    CANDIDATE = "candidate"
    SELECTED = "selected"
    """Chosen as system peer, but the clock does not follow it (yet)."""
    SYNC = "sync"
    """The system peer the clock follows (or the local clock serving)."""
    NO_MAJORITY = "no majority"
    """Selection failed for every candidate: each is marked with the ``SyncReason`` word
    (NO_MAJORITY or TOO_FEW, the same words)."""
    TOO_FEW = "too few truechimers"
    PANIC = "panic"
    """Its offset is beyond the panic threshold: ignored while the clock holds over."""
    STANDBY = "standby"
    """The local/orphan fallback while an upstream is followed."""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One upstream source, as ``ntpq -p`` shows it (plus what it does not)."""

    id: int
    name: str
    """As configured (host name or address)."""
    address: str
    """The address in use."""
    kind: str
    """'server', 'pool', 'peer' or 'local'."""
    tally: str
    """One of the TALLY_* characters."""
    refid: str
    stratum: int
    leap: int
    type_char: str
    """ntpq's 't' column: 'u' unicast, 'l' local, 'p' pool."""
    when_s: int | None
    """Seconds since the last valid reply, None if never."""
    poll_s: int
    reach: int
    """8-bit reachability register (ntpq shows it in octal)."""
    delay_ns: int
    offset_ns: int
    """Source time minus ours (positive: we are behind)."""
    jitter_ns: int
    dispersion_ns: int
    root_delay_ns: int
    root_dispersion_ns: int
    samples: int
    state: SourceState
    """A short word (a ``SourceState``): 'sync', 'candidate', 'falseticker', 'kod', ..."""
    port: int = 123
    """The source's UDP port (ntpq's ``srcport``)."""
    hpoll: int = 6
    """Our poll interval to it, log2 s (ntpq's ``hpoll``)."""
    ppoll: int = 6
    """The poll exponent the source put in its last reply (ntpq's ``ppoll``)."""
    reference_ns: int | None = None
    """The source's reference time from its last reply, served-time ns (``reftime``)."""
    received_ns: int | None = None
    """Our clock when the last valid reply arrived, served-time ns (``rec``)."""
    refid_raw: int = 0
    """The refid as the 32-bit wire value (for ``ntpq``'s own formatting)."""
    precision: int = -20
    """The source's advertised precision, log2 s."""
    configured: bool = True
    """From a ``server``/``peer`` line (False: mobilized from a ``pool``)."""
    error: str | None = None
    """Why requests cannot go out (e.g. the socket could not be opened), or None."""
    auth: str = "none"
    """How its exchanges are authenticated: ``nts``, ``key N`` or ``none``."""
    authentic: bool = False
    """Its last reply passed authentication (ntpq's ``authentic`` status bit)."""
    auth_failures: int = 0
    """Replies refused by authentication (bad or missing MAC, crypto-NAK): never used."""
    xleave: bool = False
    """Configured with ``xleave``: asks for interleaved mode."""
    interleaved: bool = False
    """Its last sample came from an interleaved reply (chrony's ``Interleaved : Yes``)."""
    samples_interleaved: int = 0
    """Samples from interleaved replies (of ``samples_total``)."""
    samples_total: int = 0
    """Samples taken since the source was added (synchronized, sane replies)."""
    nts_aead: str | None = None
    """NTS sources (``auth`` "nts"): the AEAD agreed, None before the first key exchange."""
    nts_cookies: int = 0
    """Cookies held now (at most 8)."""
    nts_cookie_length: int = 0
    nts_ke_attempts: int = 0
    """Key exchanges started (the first, re-keys on NAK, no cookies, schedule, retries)."""
    nts_ke_failures: int = 0
    nts_naks: int = 0
    """NTS NAKs received (each one sends us back to the key exchange)."""
    nts_last_ke_ns: int | None = None
    """Wall-clock time of the last successful key exchange (Unix ns)."""
    nts_ke_error: str | None = None
    """Why the last key exchange failed, until one succeeds."""


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """The system as ``ntpstat`` and ``ntpq -c rv`` describe it."""

    synchronized: bool
    leap: int
    stratum: int
    refid: str
    system_peer: str | None
    """Address of the system peer, or None."""
    system_peer_id: int | None
    reference_ns: int | None
    root_delay_ns: int
    root_dispersion_ns: int
    root_distance_ns: int
    """What ``ntpstat`` calls 'time correct to within'."""
    offset_ns: int
    """Last offset correction applied (clock minus reference)."""
    frequency_ppb: float
    jitter_ns: int
    poll_s: int
    precision: int
    clock: str
    """'system' or 'virtual' (or 'sim')."""
    sources: tuple[SourceStatus, ...]
    clock_jitter_ns: int = 0
    """RMS of recent clock offsets corrected (ntpq's ``clk_jitter``)."""
    clock_wander_ppb: float = 0.0
    """RMS of recent frequency changes (ntpq's ``clk_wander``, shown in ppm)."""
    time_constant: int = 6
    """The discipline's time constant, log2 s (ntpq's ``tc``)."""
    min_time_constant: int = 3
    """Its lower bound (ntpq's ``mintc``)."""
    refid_raw: int = 0
    """The served refid as the 32-bit wire value."""
    updates: int = 0
    """Clock updates made since start."""
    reason: SyncReason | None = None
    """Why the clock does (not) follow an upstream source (the engine always sets it; None
    only in snapshots built by hand)."""
    reason_detail: str = ""
    """The reason in a sentence for a human: counts, addresses, thresholds."""


SELECT_CODES = {
    TALLY_NONE: 0,
    TALLY_FALSETICKER: 1,
    TALLY_OUTLIER: 3,
    TALLY_CANDIDATE: 4,
    TALLY_EXCESS: 5,
    TALLY_SYSPEER: 6,
}
"""ntpd's peer selection codes (``CTL_PST_SEL_*``): ntpq derives the tally from these."""

PEER_EVENT_UNREACH = 3
PEER_EVENT_REACH = 4
PEER_EVENT_RATE = 7
PEER_EVENT_NEWPEER = 10


def peer_status_word(src: SourceStatus) -> int:
    """The 16-bit peer status word ntpd reports for a source (``ntpq -c as``, peerstats).

    High byte: status bits (configured 0x80, authentication enabled 0x40 for a source with
    a key, authentic 0x20 when its last reply was authenticated, reachable 0x10) and the
    selection code;
    low byte: event count and last event. ntpy keeps no per-peer event log, so the event is
    the one that explains the present state: new system peer, reachable, rate/KoD or
    unreachable, counted once.
    """
    bits = 0x80 if src.configured or src.kind == "local" else 0
    if src.auth != "none":
        bits |= 0x40
    if src.authentic:
        bits |= 0x20
    if src.reach:
        bits |= 0x10
    select = SELECT_CODES.get(src.tally, 0)
    if src.tally == TALLY_SYSPEER:
        event = PEER_EVENT_NEWPEER
    elif src.state == SourceState.KOD:
        event = PEER_EVENT_RATE
    elif src.reach:
        event = PEER_EVENT_REACH
    else:
        event = PEER_EVENT_UNREACH
    return (bits << 8) | (select << 8) | (1 << 4) | event
