"""Pool member replacement: when the engine asks the shell for a fresh ``pool`` address.

Why apart from the engine: a ``pool`` line is a supply of interchangeable servers, so a
member that stops answering, never answered, refused us (DENY/RSTR) or keeps lying is not
worth waiting for -- ntpd drops such preemptible associations too. The shell carries out
``ReplaceSource`` (resolve again, add one new source, remove the old one); configured
``server`` lines are never replaced. These rules read the source's poll and selection
state; they never touch the clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from ntpy.core.actions import Action, LogEvent, ReplaceSource
from ntpy.core.select import Selection
from ntpy.core.source import Source, label
from ntpy.core.status import SourceState

FALSETICKER_REPLACE = 4
"""Selections in a row a pool member may be a falseticker before it is replaced."""
POOL_SILENT_POLLS = 4
"""Polls a pool member may leave unanswered, having never answered, before it is replaced."""


def after_poll(src: Source, was_reachable: bool, actions: list[Action]) -> None:
    """After ``src`` was polled: replace a pool member that just became unreachable, or one
    that has never answered ``POOL_SILENT_POLLS`` polls."""
    pool = src.config.pool
    if was_reachable and not src.reachable:
        if pool is not None:
            src.replace_requested = True
            actions.append(ReplaceSource(src.id, pool, "unreachable"))
    elif (
        pool is not None
        and not src.reachable
        and src.polls_unanswered >= POOL_SILENT_POLLS
        and not src.replace_requested
    ):
        src.replace_requested = True
        src.state = SourceState.UNREACHABLE
        actions.append(ReplaceSource(src.id, pool, "never answered"))


def after_refusal(src: Source, reason: str, actions: list[Action]) -> None:
    """A pool member that refused service for good (DENY/RSTR) is replaced at once."""
    if src.kod is not None and src.config.pool is not None:
        actions.append(ReplaceSource(src.id, src.config.pool, reason))


def replace_falsetickers(
    sources: Iterable[Source], sel: Selection | None, actions: list[Action]
) -> None:
    """Count each source's falseticker run; replace a pool member whose run reaches
    ``FALSETICKER_REPLACE`` (a liar among a few sources weakens every later vote)."""
    false_ids = set(sel.falsetickers) if sel is not None else set()
    for src in sources:
        if src.id in false_ids:
            src.falseticker_count += 1
        else:
            src.falseticker_count = 0
        if src.config.pool is not None and src.falseticker_count >= FALSETICKER_REPLACE:
            src.falseticker_count = 0
            actions.append(
                LogEvent("warning", f"pool source {label(src)} is a falseticker: replacing it")
            )
            actions.append(ReplaceSource(src.id, src.config.pool, "falseticker"))
