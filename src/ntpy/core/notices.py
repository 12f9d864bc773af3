"""Log lines about the engine's state that fire once per change, never once per poll.

Why a separate object: an admin reads the log to learn what changed. Before this, "system
peer is now X" repeated for the same peer whenever selection briefly came up empty, a source
that never answered was never called unreachable, falsetickers were never named, and the
reason the clock was not synchronized was in no log line at all. Each notice here remembers
what it last said and speaks again only when that changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ntpy.core.actions import Action, LogEvent
from ntpy.core.report import diagnose
from ntpy.core.select import Selection
from ntpy.core.source import Source, label
from ntpy.core.status import SyncReason

if TYPE_CHECKING:
    from ntpy.core.engine import SyncEngine


class Notices:
    """What was last logged about the system peer, the reason, and each source."""

    def __init__(self) -> None:
        self.reason: SyncReason | None = None
        self.peer: int | None = None
        self.falsetickers: set[int] = set()
        self.unreachable: set[int] = set()
        self.auth_errors: dict[int, str] = {}

    def forget(self, source_id: int) -> None:
        """A removed source: a new one with its address starts with a clean slate."""
        self.falsetickers.discard(source_id)
        self.unreachable.discard(source_id)
        self.auth_errors.pop(source_id, None)
        if self.peer == source_id:
            self.peer = None

    def system_peer(self, src: Source, actions: list[Action]) -> None:
        if src.id != self.peer:
            self.peer = src.id
            actions.append(LogEvent("info", f"system peer is now {label(src)}"))

    def source_unreachable(self, src: Source, actions: list[Action]) -> None:
        if src.id in self.unreachable:
            return
        self.unreachable.add(src.id)
        why = " (it never answered)" if src.last_reply_mono is None else ""
        actions.append(LogEvent("warning", f"source {label(src)} is unreachable{why}"))

    def source_replied(self, src: Source, actions: list[Action]) -> None:
        if src.reachable and src.id in self.unreachable:
            self.unreachable.discard(src.id)
            actions.append(LogEvent("info", f"source {label(src)} is reachable again"))

    def authentication(self, src: Source, actions: list[Action]) -> None:
        """A reply refused by the source's authenticator, said once per kind of failure
        (a server with the wrong key fails the same way at every poll), and the return of
        authentic replies after failures."""
        error = src.auth_error
        if error is not None:
            if self.auth_errors.get(src.id) != error:
                self.auth_errors[src.id] = error
                actions.append(
                    LogEvent(
                        "warning",
                        f"source {label(src)}: reply not used: {error} "
                        f"({src.auth_failures} refused so far)",
                    )
                )
        elif src.authentic and self.auth_errors.pop(src.id, None) is not None:
            actions.append(LogEvent("info", f"source {label(src)}: authentic replies again"))

    def selected(self, eng: SyncEngine, sel: Selection | None, actions: list[Action]) -> None:
        """Name sources that became (or stopped being) falsetickers. Only a real selection
        says who is false: with no majority at all, the reason line names every candidate."""
        if sel is None:
            return
        now = set(sel.falsetickers)
        for sid in sorted(now - self.falsetickers):
            src = eng.sources[sid]
            actions.append(
                LogEvent(
                    "warning",
                    f"source {label(src)} is a falseticker: outside the majority's intersection",
                )
            )
        for sid in sorted(self.falsetickers - now):
            if sid in eng.sources:
                src = eng.sources[sid]
                actions.append(LogEvent("info", f"source {label(src)} is no longer a falseticker"))
        self.falsetickers = now

    def reason_changed(self, eng: SyncEngine, actions: list[Action]) -> None:
        """One line whenever the reason changes. Becoming synchronized has its own line
        ("synchronized to ..."), so only the way back from holdover is said here."""
        reason, detail = diagnose(eng)
        previous, self.reason = self.reason, reason
        if reason is previous or (not eng.sources and reason is SyncReason.NO_SOURCE):
            return
        if reason is SyncReason.SYNCHRONIZED:
            if previous is SyncReason.HOLDOVER:
                actions.append(LogEvent("info", f"holdover over: {detail}"))
            return
        if reason is SyncReason.HOLDOVER:
            actions.append(LogEvent("warning", f"holding over: {detail}"))
            return
        level = "info" if reason is SyncReason.WAITING else "warning"
        actions.append(LogEvent(level, f"not synchronized: {reason}: {detail}"))
