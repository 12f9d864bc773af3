"""The one interpreter of the engine's actions, shared by every shell.

The daemon (``daemon/sync.py``) and the simulator (``sim/world.py``) carry out the same
``Action``s the same way, so an action's meaning lives here, once: a ``SendRequest`` is sent
and then ``mark_sent`` is told its T1; a clock action is applied to the clock at once (the
engine assumes it was); a ``Panic`` stops the list. Each shell supplies only the effects
(``Effects``): how a datagram leaves, where log lines and statistics go, how a pool member
is replaced, what a panic does. A new action type is added to ``carry_out`` and to the
``Effects`` protocol, and mypy then points at every shell that lacks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, assert_never

from ntpy.core.actions import (
    Action,
    ClockLike,
    LogEvent,
    LoopStats,
    Panic,
    PeerStats,
    Record,
    ReplaceSource,
    SendRequest,
    SetFrequency,
    SlewClock,
    StepClock,
    apply_to_clock,
)

ClockAction = StepClock | SlewClock | SetFrequency


class Effects(Protocol):
    """What a shell does for the engine: the only part of an action that differs between
    the daemon and the simulator."""

    @property
    def clock(self) -> ClockLike:
        """The clock the engine disciplines."""
        ...

    def send_request(self, action: SendRequest) -> int | None:
        """Send ``action.data`` to the source; return T1 (the cooked clock read as close to
        the send as possible), or None if nothing left (the poll then goes unanswered)."""
        ...

    def clock_adjusted(self, action: ClockAction) -> None:
        """Told after a clock action was applied to ``clock`` (to log or count it)."""
        ...

    def log_event(self, event: LogEvent) -> None: ...

    def replace_source(self, action: ReplaceSource) -> None: ...

    def panic(self, action: Panic) -> None:
        """The engine refuses to go on; the actions after this one are not carried out."""
        ...

    def record(self, record: Record) -> None:
        """A LoopStats/PeerStats record for statistics files, metrics and history."""
        ...


class SentMarker(Protocol):
    """The part of the engine the runner reports sends to."""

    def mark_sent(self, source_id: int, t1_clock: int) -> None: ...


def carry_out(actions: Iterable[Action], effects: Effects, engine: SentMarker) -> bool:
    """Carry out ``actions`` in order; False if a ``Panic`` stopped them."""
    for action in actions:
        if isinstance(action, SendRequest):
            t1 = effects.send_request(action)
            if t1 is not None:
                engine.mark_sent(action.source_id, t1)
        elif isinstance(action, StepClock | SlewClock | SetFrequency):
            apply_to_clock(action, effects.clock)
            effects.clock_adjusted(action)
        elif isinstance(action, LogEvent):
            effects.log_event(action)
        elif isinstance(action, ReplaceSource):
            effects.replace_source(action)
        elif isinstance(action, Panic):
            effects.panic(action)
            return False
        elif isinstance(action, LoopStats | PeerStats):
            effects.record(action)
        else:
            assert_never(action)
    return True
