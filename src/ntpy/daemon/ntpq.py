"""The daemon's mode 6 hook: lets the real ``ntpq`` query ntpy over UDP port 123.

A thin shell around ``ntpy.core.control.ControlResponder``: it supplies what the sans-IO
core may not fetch itself -- the platform strings (``processor``/``system``/``release``),
the daemon's status snapshot and the clock's "now" -- and fetches the snapshot only for
requests that get past the header checks.

The serve decision (``ntpy.core.server``) sends a mode 6 datagram here when it says
``Control`` (the client is not ``noquery``/``ignore``); this handler answers it.

It depends on nothing but callables of the main process's daemon (``status``, the clock's
``now_ns`` and the access rules' ``flags``), so mode 6 requests forwarded from worker
processes are answered by the same object: ``NtpqHandler(request, client_addr) -> reply
datagrams``. That is also why the byte budgets (``ntpy.core.querylimit``) live here: one
budget sees every mode 6 request, whichever process received it.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ntpy import __version__
from ntpy.core.control import ControlInfo, ControlResponder, ControlSnapshot
from ntpy.core.querylimit import QueryBudget, answer_within_budget
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
    have already been applied by the server before a request gets here; ``flags(host,
    port)`` returns the client's restrict flags again, for ``limited kod``. Replies are kept
    within ``budget`` (None: unlimited), timed by ``monotonic_ns`` so a clock step neither
    refills nor empties a bucket.
    """

    def __init__(
        self,
        status: Callable[[], object],
        now_ns: Callable[[], int],
        info: ControlInfo | None = None,
        *,
        budget: QueryBudget | None = None,
        flags: Callable[[str, int | None], frozenset[str]] | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._status = status
        self._now_ns = now_ns
        self.responder = ControlResponder(info or platform_info())
        self.budget = budget
        self._flags = flags
        self._monotonic_ns = monotonic_ns

    @property
    def counters(self) -> Counter[str]:
        """Per-outcome counts: ``op_*`` answered, ``error_*`` error replies, ``drop_*``, and
        the budget's (``bytes_in``/``bytes_out``, ``drop_budget_*``, ``kod_*``)."""
        out = Counter(self.responder.counters)
        if self.budget is not None:
            out.update({k: v for k, v in self.budget.counters.items() if v})
        return out

    def _snapshot(self) -> ControlSnapshot:
        status = self._status()
        if not isinstance(status, SyncStatus):
            raise TypeError(f"status() returned {type(status).__name__}, not SyncStatus")
        return ControlSnapshot(status, self._now_ns())

    def __call__(self, request: bytes, client: Any) -> list[bytes]:
        budget = self.budget
        if budget is None:
            return self.responder.handle(request, self._snapshot)
        host = str(client[0])
        kod = False
        if self._flags is not None:
            flags = self._flags(host, client[1] if len(client) > 1 else None)
            kod = "kod" in flags and "limited" in flags
        return answer_within_budget(
            self.responder,
            budget,
            request,
            self._snapshot,
            client=host,
            now_ns=self._monotonic_ns(),
            kod=kod,
        )
