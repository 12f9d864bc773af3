"""``core.runner.carry_out``: the one interpreter of the engine's actions, with a recording
stand-in for the shell's effects."""

from __future__ import annotations

from ntpy.clock.virtual import VirtualClock
from ntpy.core.actions import (
    Action,
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
)
from ntpy.core.runner import ClockAction, carry_out

NS = 1_000_000_000


class Shell:
    def __init__(self, *, refuse_sends: bool = False) -> None:
        self.clock = VirtualClock(realtime=lambda: 1_700_000_000 * NS, precision_log=-20)
        self.refuse_sends = refuse_sends
        self.seen: list[str] = []
        self.marked: list[tuple[int, int]] = []

    def send_request(self, action: SendRequest) -> int | None:
        self.seen.append(f"send {action.source_id}")
        return None if self.refuse_sends else 1000 + action.source_id

    def clock_adjusted(self, action: ClockAction) -> None:
        self.seen.append(type(action).__name__)

    def log_event(self, event: LogEvent) -> None:
        self.seen.append(f"log {event.message}")

    def replace_source(self, action: ReplaceSource) -> None:
        self.seen.append(f"replace {action.source_id}")

    def panic(self, action: Panic) -> None:
        self.seen.append(f"panic {action.message}")

    def record(self, record: Record) -> None:
        self.seen.append(type(record).__name__)

    def mark_sent(self, source_id: int, t1_clock: int) -> None:
        self.marked.append((source_id, t1_clock))


def test_every_action_in_order_and_t1_reported_after_the_send() -> None:
    shell = Shell()
    actions: list[Action] = [
        SendRequest(7, ("192.0.2.1", 123), b"x"),
        StepClock(2 * NS),
        SlewClock(1_000),
        SetFrequency(12.5),
        LogEvent("info", "hello"),
        ReplaceSource(3, "pool", "unreachable"),
        LoopStats(0, 0, 0.0, 0, 0.0, 6),
        PeerStats(0, 7, "192.0.2.1", 0, 0, 0, 0, 0),
    ]
    assert carry_out(actions, shell, shell) is True
    assert shell.seen == [
        "send 7",
        "StepClock",
        "SlewClock",
        "SetFrequency",
        "log hello",
        "replace 3",
        "LoopStats",
        "PeerStats",
    ]
    assert shell.marked == [(7, 1007)]
    assert shell.clock.now_ns() == 1_700_000_002 * NS  # stepped at once
    assert shell.clock.remaining_slew_ns() == 1_000
    assert shell.clock.frequency_ppb() == 12.5


def test_an_unsent_request_is_not_marked_and_a_panic_stops_the_list() -> None:
    shell = Shell(refuse_sends=True)
    actions: list[Action] = [
        SendRequest(1, None, b""),
        Panic(5000 * NS, "too far"),
        LogEvent("info", "never"),
    ]
    assert carry_out(actions, shell, shell) is False
    assert shell.seen == ["send 1", "panic too far"] and shell.marked == []
