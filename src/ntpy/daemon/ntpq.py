"""The daemon's mode 6 hook: lets the real ``ntpq`` query ntpy over UDP port 123.

A thin shell around ``ntpy.core.control.ControlResponder``: it supplies what the sans-IO
core may not fetch itself -- the platform strings (``processor``/``system``/``release``),
the daemon's status snapshot and the clock's "now" -- and fetches the snapshot only for
requests that get past the header checks.

It depends on nothing but two callables of the main process's daemon (``status`` and the
clock's ``now_ns``), so mode 6 requests forwarded from worker processes can be answered by
the same object: ``NtpqHandler(request, client_addr) -> reply datagrams``.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Callable
from typing import Any

from ntpy import __version__
from ntpy.core.control import ControlInfo, ControlResponder, ControlSnapshot
from ntpy.core.status import SyncStatus


def platform_info() -> ControlInfo:
    """ntpd's uname-derived variables, read once at start-up."""
    uname = platform.uname()
    return ControlInfo(
        version=f"ntpy {__version__}",
        processor=uname.machine or "unknown",
        system=uname.system or "unknown",
        release=uname.release or "unknown",
    )


class NtpqHandler:
    """``NtpServer.control`` for ntpy: answers READSTAT/READVAR, refuses writes.

    ``status`` returns the daemon's ``SyncStatus`` (``Daemon.status``); ``now_ns`` returns
    served time in Unix ns (``Clock.now_ns``). The access rules (``noquery``/``ignore``)
    have already been applied by the server before a request gets here.
    """

    def __init__(
        self,
        status: Callable[[], object],
        now_ns: Callable[[], int],
        info: ControlInfo | None = None,
    ) -> None:
        self._status = status
        self._now_ns = now_ns
        self.responder = ControlResponder(info or platform_info())

    @property
    def counters(self) -> Counter[str]:
        """Per-outcome counts: ``op_*`` answered, ``error_*`` error replies, ``drop_*``."""
        return self.responder.counters

    def _snapshot(self) -> ControlSnapshot:
        status = self._status()
        if not isinstance(status, SyncStatus):
            raise TypeError(f"status() returned {type(status).__name__}, not SyncStatus")
        return ControlSnapshot(status, self._now_ns())

    def __call__(self, request: bytes, client: Any) -> list[bytes]:
        return self.responder.handle(request, self._snapshot)
