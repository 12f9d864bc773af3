"""Telling the kernel whether the system clock is synchronized -- and so whether Linux
copies it to the hardware clock (RTC) every 11 minutes (``rtcsync``).

Why here and not in the clock adapter: what to write is a policy decision (synchronized
and ``rtcsync`` on); ``SystemClock.set_sync_status`` only writes the bits it is given.

Linux's "11-minute mode": while STA_UNSYNC is clear, the kernel writes the system time to
the RTC every 11 minutes (``sync_hw_clock``), so a reboot starts close to the right time.
ntpd always clears STA_UNSYNC when synchronized with the kernel discipline; chrony only
with ``rtcsync``. ntpy reads ntpd's ntp.conf, so it does what ntpd does: ``rtcsync`` is on
by default, and ``rtcsync off`` keeps STA_UNSYNC set (the RTC is never written, and
programs that read the kernel's status, such as ``timedatectl``, see an unsynchronized
clock). Only the main process, only with the system clock and only when it disciplines
it (upstreams configured); the virtual clock (``-x``) never touches the kernel or the RTC.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ntpy.clock.base import Clock
from ntpy.clock.errors import ClockError
from ntpy.clock.system import SystemClock
from ntpy.config import Config
from ntpy.core.system import SystemState

log = logging.getLogger("ntpy")


class SyncStatusClock(Protocol):
    def set_sync_status(self, synchronised: bool, est_error_ns: int, max_error_ns: int) -> None: ...


def disciplines(config: Config) -> bool:
    """Whether ntpy steers the clock: upstream servers or reference clocks (not only the
    local clock, which follows the clock rather than steering it)."""
    return bool(config.servers) or any(not r.is_local for r in config.refclocks)


def take_over_kernel_clock(clock: Clock, config: Config) -> None:
    """Before disciplining the kernel clock, switch off the kernel PLL another daemon may
    have left running (two loops would fight). Only when ntpy disciplines: serving the
    local clock never adjusts anything, so it never touches the kernel either. Raises
    ClockError."""
    if isinstance(clock, SystemClock) and disciplines(config):
        clock.reset_kernel_discipline()


def release_kernel_clock(clock: Clock, config: Config) -> None:
    """Never leave the kernel clock slewing fast: back to the base rate, and the rest of
    the correction handed to the kernel's own 500 ppm slew (at exit)."""
    if isinstance(clock, SystemClock) and disciplines(config):
        try:
            clock.close()
        except ClockError as exc:
            log.error("could not stop the kernel clock's slew: %s", exc)


def kernel_synchronised(synced: bool, rtcsync: bool) -> bool:
    """Whether STA_UNSYNC is cleared: only while synchronized, and only with rtcsync."""
    return synced and rtcsync


def describe_rtc(*, system_clock: bool, disciplining: bool, rtcsync: bool) -> str:
    """The start-up log line about the RTC."""
    if not system_clock:
        return "RTC: never touched: virtual clock (-x), the kernel's status is left alone"
    if not disciplining:
        return "RTC: not touched: no upstreams, the kernel clock is not disciplined"
    if rtcsync:
        return (
            "RTC: kernel 11-minute mode while synchronized (rtcsync on: STA_UNSYNC cleared, "
            "Linux copies the system time to the RTC every 11 minutes)"
        )
    return "RTC: not written (rtcsync off: STA_UNSYNC stays set)"


class KernelSyncStatus:
    """Writes the kernel's sync status from the served system state (every refresh)."""

    def __init__(self, clock: SyncStatusClock, rtcsync: bool) -> None:
        self.clock = clock
        self.rtcsync = rtcsync
        self.last: bool | None = None

    def update(self, synced: bool, state: SystemState, now_ns: int) -> None:
        """Maximum error = root delay / 2 + root dispersion (ntpd's), the estimate = root
        dispersion. The kernel grows maxerror by itself and sets STA_UNSYNC at 16 s,
        so a daemon that dies stops claiming sync."""
        cleared = kernel_synchronised(synced, self.rtcsync)
        dispersion = max(0, state.root_dispersion_at(now_ns))
        max_error = max(0, state.root_delay_ns) // 2 + dispersion
        try:
            self.clock.set_sync_status(cleared, dispersion, max_error)
        except ClockError as exc:  # pragma: no cover - adjtimex refused after start-up
            log.warning("cannot set the kernel's sync status: %s", exc)
            return
        if cleared != self.last:
            log.info(
                "kernel clock status: %s",
                "synchronized (STA_UNSYNC clear; the RTC follows every 11 minutes)"
                if cleared
                else "unsynchronized (STA_UNSYNC set)",
            )
            self.last = cleared
