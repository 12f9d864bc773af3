"""What the synchronization core asks its shell to do.

The core never touches a socket or a clock: ``SyncEngine`` returns these actions and the
shell (the daemon, or the simulator) carries them out, in order, before calling the engine
again. Clock actions are applied to the ``Clock`` at once; the engine assumes they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ClockLike(Protocol):
    """The part of ``ntpy.clock.base.Clock`` the actions need (the core imports no clock)."""

    def now_ns(self) -> int: ...
    def remaining_slew_ns(self) -> int: ...
    def step(self, offset_ns: int) -> None: ...
    def slew(self, offset_ns: int) -> None: ...
    def set_frequency_ppb(self, ppb: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``data`` to the source's ``address``, then call ``engine.mark_sent(id, t1)``
    with the clock reading taken as close to the send as possible."""

    source_id: int
    address: object
    data: bytes


@dataclass(frozen=True, slots=True)
class StepClock:
    """Jump the clock by ``offset_ns`` now (positive: forward)."""

    offset_ns: int


@dataclass(frozen=True, slots=True)
class SlewClock:
    """Correct the clock by ``offset_ns`` more, gradually.

    The engine measures against the *cooked* clock (served time plus the slew still to
    run), so this offset comes on top of any slew in progress: the shell calls
    ``clock.slew(clock.remaining_slew_ns() + offset_ns)`` (see ``apply_to_clock``).
    """

    offset_ns: int


@dataclass(frozen=True, slots=True)
class SetFrequency:
    """Set the clock's frequency correction to ``ppb`` (absolute, not a change)."""

    ppb: float


@dataclass(frozen=True, slots=True)
class Panic:
    """The offset exceeds the panic threshold: the shell must stop with ``message``."""

    offset_ns: int
    message: str


@dataclass(frozen=True, slots=True)
class ReplaceSource:
    """A pool source was dropped (unreachable, falseticker, KoD): resolve another from
    ``pool`` and add it, if one is available."""

    source_id: int
    pool: str
    reason: str


@dataclass(frozen=True, slots=True)
class LogEvent:
    """Something an admin should see in the log (step, sync gained/lost, peer change...)."""

    level: str
    """'info', 'warning' or 'error'."""
    message: str


@dataclass(frozen=True, slots=True)
class LoopStats:
    """One clock update, as ntpd's ``loopstats`` records it (also feeds metrics history)."""

    time_ns: int
    """Our clock at the update (served-time ns)."""
    offset_ns: int
    frequency_ppb: float
    jitter_ns: int
    """Clock jitter (RMS of recent offsets)."""
    wander_ppb: float
    poll: int
    """Time constant, log2 s."""


@dataclass(frozen=True, slots=True)
class PeerStats:
    """One valid sample from a source, as ntpd's ``peerstats`` records it."""

    time_ns: int
    source_id: int
    address: str
    status: int
    """The source's peer status word (``status.peer_status_word``)."""
    offset_ns: int
    delay_ns: int
    dispersion_ns: int
    jitter_ns: int


Action = (
    SendRequest
    | StepClock
    | SlewClock
    | SetFrequency
    | Panic
    | ReplaceSource
    | LogEvent
    | LoopStats
    | PeerStats
)
Record = LoopStats | PeerStats
"""Actions that only report: the shell hands them to stats files, metrics and history."""


def cooked_now(clock: ClockLike) -> int:
    """The engine's notion of "now": served time plus the slew still to run."""
    return clock.now_ns() + clock.remaining_slew_ns()


def apply_to_clock(action: Action, clock: ClockLike) -> bool:
    """Carry out a clock action on ``clock``; False if ``action`` is not a clock action."""
    if isinstance(action, StepClock):
        clock.step(action.offset_ns)
    elif isinstance(action, SlewClock):
        clock.slew(clock.remaining_slew_ns() + action.offset_ns)
    elif isinstance(action, SetFrequency):
        clock.set_frequency_ppb(action.ppb)
    else:
        return False
    return True
