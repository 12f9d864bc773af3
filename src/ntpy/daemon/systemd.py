"""The daemon's one handle on systemd: passed sockets, readiness, status, watchdog, hints.

``daemon/app.py`` calls it at a few points of the lifecycle and knows nothing of the
protocols: ``daemon/sdsocket.py`` owns socket activation, ``daemon/sdnotify.py`` the
notifications. Outside systemd every call does nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from ntpy.core.status import SyncStatus
from ntpy.daemon.assemble import StartupError
from ntpy.daemon.loop import Loop
from ntpy.daemon.sdnotify import Notifier, SystemdHooks, systemd_hint
from ntpy.daemon.sdsocket import Activated, ActivationError, from_environment
from ntpy.daemon.udp import ListenAddress

log = logging.getLogger("ntpy")


class Systemd:
    def __init__(
        self,
        activated: Activated,
        notifier: Notifier,
        hint: str | None,
        status: Callable[[], SyncStatus],
    ) -> None:
        self.activated = activated
        self.hooks = SystemdHooks(notifier, status)
        self.hint = hint
        self.is_ready = False

    @classmethod
    def from_environment(cls, status: Callable[[], SyncStatus]) -> Systemd:
        """Read (and clear) systemd's variables; a bad set of passed sockets is a
        :class:`StartupError` before anything is bound."""
        env = dict(os.environ)
        try:
            activated = from_environment()
        except ActivationError as exc:
            raise StartupError(str(exc)) from None
        notifier = Notifier.from_environment()
        return cls(activated, notifier, systemd_hint(env, notifier, bool(activated)), status)

    def limit_workers(self, workers: int) -> int:
        """Passed NTP sockets are served by one process (the workers' reuseport groups are
        bound by ntpy itself); say so rather than silently serving with fewer."""
        if workers > 1 and self.activated.has_udp:
            log.warning(
                "socket activation: the NTP sockets systemd passed are served by one process, "
                "not %d workers (remove ntpy.socket to let ntpy bind its own worker sockets)",
                workers,
            )
            return 1
        return workers

    def check_sockets(self, ntp: Sequence[ListenAddress], ke: Sequence[ListenAddress]) -> None:
        """After every listener is open: each passed socket must have been taken."""
        if not self.activated:
            return
        for p in self.activated.sockets:
            if p.used:
                log.info("socket activation: serving on %s", p.describe())
            elif p.kind == "tcp" and not ke:
                # ntpy.socket passes TCP 4460 too: harmless where NTS is not enabled.
                log.warning(
                    "socket activation: %s is for NTS-KE, which is not configured here "
                    "('nts enable' with 'nts cert'/'nts key'); closing it (remove the "
                    "ListenStream= lines with 'systemctl edit ntpy.socket')",
                    p.describe(),
                )
                p.used = True
                p.sock.close()
        try:
            self.activated.check_all_used(list(ntp), list(ke))
        except ActivationError as exc:
            self.activated.close_unused()
            raise StartupError(str(exc)) from None

    def ready(self, loop: Loop) -> None:
        """Start-up is done (sockets bound, config loaded): READY=1, STATUS=, watchdog."""
        if self.hint is not None:
            log.warning("%s", self.hint)
        self.hooks.attach(loop.call_every)
        self.is_ready = True

    def update(self) -> None:
        """The state may have changed: STATUS= if its line did (not before READY=1)."""
        if self.is_ready:
            self.hooks.update()

    def reloading(self) -> None:
        self.hooks.reloading()

    def reloaded(self) -> None:
        self.hooks.reloaded()

    def stopping(self) -> None:
        self.hooks.stopping()
