"""What monitoring reads of a running daemon: snapshots behind a small interface.

The page, its JSON API, ``/metrics`` and the history read only this -- the current
``SyncStatus``, the counters by name, the served time and a few static facts -- never the
daemon's objects. So ``ntpy.metrics`` imports nothing from ``ntpy.daemon`` (the daemon
hands it a ``StatusView``), and tests feed the pages fixed snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ntpy.core.status import SyncStatus


class StatusView(Protocol):
    """The read-only view monitoring gets; every call returns the state of that moment."""

    def status(self) -> SyncStatus:
        """The sync status (system variables and sources)."""
        ...

    def counters(self) -> Mapping[str, int]:
        """Every counter by name (``Reason`` values, shell counters, ``ratelimit_*``)."""
        ...

    def now_ns(self) -> int:
        """Served time, integer ns."""
        ...

    @property
    def info(self) -> Mapping[str, str]:
        """Static facts for the page header and the metrics' info metric (version, clock)."""
        ...


@dataclass(frozen=True)
class WebSources:
    """A ``StatusView`` made of functions, so every request is current."""

    status: Callable[[], SyncStatus]
    counters: Callable[[], Mapping[str, int]]
    now_ns: Callable[[], int]
    info: Mapping[str, str]


def current_status(view: StatusView) -> SyncStatus:
    """``view.status()``, checked: a wrong type is a wiring bug, caught at the first page."""
    st: object = view.status()
    if not isinstance(st, SyncStatus):
        raise TypeError(f"status() returned {type(st).__name__}, not SyncStatus")
    return st
