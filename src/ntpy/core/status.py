"""Read-only snapshots of the synchronization state, for ``ntpy status``/``ntpy peers``,
the control socket, metrics and the simulator's reports.

Plain frozen dataclasses of ints, floats and strings, so they serialize to JSON with
``dataclasses.asdict`` and can cross a process boundary without dragging core objects along.
"""

from __future__ import annotations

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
    state: str
    """A short word: 'sync', 'candidate', 'outlier', 'falseticker', 'unreachable', 'kod', ..."""


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
