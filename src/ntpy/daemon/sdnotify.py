"""systemd's service notification protocol, without libsystemd.

Under ``Type=notify`` systemd waits for ``READY=1`` before it counts the service as started
(so units ordered ``After=ntpy.service`` see sockets bound and the config loaded), shows the
last ``STATUS=`` line in ``systemctl status``, and with ``WatchdogSec=`` kills and restarts a
service that stops sending ``WATCHDOG=1``. The protocol is one datagram of ``KEY=VALUE``
lines to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace), so a few lines of socket code replace the C library.

What is sent, and when:
- ``READY=1`` once start-up is done (every socket bound, the config loaded);
- ``STATUS=...`` when the sync state changes (synchronised to what, at which stratum, or why
  not) -- never per packet or per poll;
- ``RELOADING=1`` with ``MONOTONIC_USEC`` before a SIGHUP reload and ``READY=1`` after it
  (systemd 253's ``Type=notify-reload`` requires both; older ones show "reloading");
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, from the event loop, so a wedged loop is
  noticed -- only when ``$WATCHDOG_PID`` is unset or names this process;
- ``STOPPING=1`` on shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from ntpy.core.status import SyncStatus

log = logging.getLogger("ntpy")

NS_PER_US = 1000


def notify_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``: a path, or ``@name`` -> abstract
    namespace (a leading NUL byte). None if unusable (systemd also allows ``vsock:``; ntpy
    runs on the host, so only ``AF_UNIX`` is supported)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_ns(env: Mapping[str, str], pid: int) -> int | None:
    """Half of ``$WATCHDOG_USEC`` in ns (systemd's advice: ping twice per timeout), or None
    when no watchdog is asked of this process (unset, zero, garbage, another PID)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return max(1, int(usec) * NS_PER_US // 2)


def status_text(status: SyncStatus) -> str:
    """One line for ``systemctl status`` that changes only when the sync state does."""
    if status.synchronized:
        peer = status.system_peer or status.refid or "?"
        return f"synchronised to {peer} at stratum {status.stratum}"
    reason = str(status.reason) if status.reason is not None else "unsynchronised"
    return f"unsynchronised: {reason}"


class Notifier:
    """Sends notifications to systemd; every method does nothing when not under it."""

    def __init__(self, address: str | bytes | None, watchdog_ns: int | None = None) -> None:
        self.address = address
        self.watchdog_ns = watchdog_ns
        self._sock: socket.socket | None = None
        self.last_status: str | None = None
        self.sent: list[str] = []
        """Every message sent (tests and the debug log read it)."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET`` and the watchdog variables, then remove them from
        ``os.environ`` so no child (a worker, a resolver helper) notifies in our name.
        Passing ``env`` leaves ``os.environ`` alone (tests)."""
        source = os.environ if env is None else env
        raw = source.get("NOTIFY_SOCKET", "")
        address = notify_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX socket; not notifying systemd", raw)
        watchdog = watchdog_interval_ns(source, os.getpid()) if address is not None else None
        if env is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """One datagram; a failure is logged once at debug level and never fatal."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str | None = None) -> None:
        if status is not None:
            self.last_status = status
        self.send("READY=1" + (f"\nSTATUS={status}" if status is not None else ""))

    def status(self, text: str) -> None:
        """Send ``STATUS=`` only if the text changed since the last one sent."""
        if text != self.last_status:
            self.last_status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // NS_PER_US
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=shutting down")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def systemd_hint(env: Mapping[str, str], notifier: Notifier, activated: bool) -> str | None:
    """A hint when systemd runs ntpy from a unit that is not ours: a service started by
    systemd has ``$INVOCATION_ID``; ours is ``Type=notify`` (so ``$NOTIFY_SOCKET`` is set).
    Without it systemd counts the daemon ready before its sockets are bound, shows no sync
    state and cannot watch it."""
    if not env.get("INVOCATION_ID") or notifier.enabled:
        return None
    how = " (socket-activated)" if activated else ""
    return (
        f"running under systemd{how} without NOTIFY_SOCKET: the unit is not Type=notify, so "
        "systemd cannot tell when ntpy is ready and 'systemctl status' shows no sync state; "
        "use the shipped unit (ntpy.service: Type=notify, ExecReload, WatchdogSec, "
        "hardening), see 'man ntpy' / README 'Running it under systemd'"
    )


class SystemdHooks:
    """What the daemon's lifecycle tells systemd: ``attach`` after start-up, ``update``
    when the state may have changed, ``reloading``/``reloaded`` around SIGHUP."""

    def __init__(self, notifier: Notifier, status: Callable[[], SyncStatus]) -> None:
        self.notifier = notifier
        self.get_status = status

    def attach(self, call_every: Callable[[int, Callable[[], None]], object]) -> None:
        """Start-up is done: READY=1 with the first STATUS, and the watchdog timer."""
        n = self.notifier
        if not n.enabled:
            return
        n.ready(self._text())
        if n.watchdog_ns is not None:
            n.watchdog()
            call_every(n.watchdog_ns, n.watchdog)
            log.info("systemd watchdog: pinging every %.3f s", n.watchdog_ns / 1e9)

    def _text(self) -> str:
        return status_text(self.get_status())

    def update(self) -> None:
        if self.notifier.enabled:
            self.notifier.status(self._text())

    def reloading(self) -> None:
        self.notifier.reloading()

    def reloaded(self) -> None:
        if self.notifier.enabled:
            text = self._text()
            self.notifier.ready(text)

    def stopping(self) -> None:
        self.notifier.stopping()
        self.notifier.close()
