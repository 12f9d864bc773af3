"""What a configuration reload (SIGHUP) can change in a running daemon, and what not.

ntpd has no reload and chronyd reloads only its sources; admins still send SIGHUP after
editing ntp.conf (and logrotate sends it to reopen the log). ntpy re-reads the file, and
if it parses, applies what is safe to change live -- sources, access rules and rate
limits, statistics files, the log file -- and names each setting that only a restart
applies, so nothing changes silently and nothing is silently ignored. A file that does not
parse changes nothing: the error (file:line) is logged and the running config stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ntpy.config import Config

LIVE_ACCESS_FIELDS = ("restricts", "access", "discard", "ratelimit", "mru")
"""Rebuilt in place: the responder's access policy and the rate limiter."""
LIVE_STATS_FIELDS = ("statsdir", "statistics", "filegens")
RESTART_FIELDS = (
    "listen",
    "interfaces",
    "clock",
    "workers",
    "driftfile",
    "keys",
    "trustedkeys",
    "requestkey",
    "controlkey",
    "refclocks",
    "local",
    "tos",
    "tinker",
    "makestep",
    "flags",
    "metrics",
    "webstatus",
    "pidfile",
    "leapsmear",
    "nts",
    "nts_ca",
    "user",
    "fastpath",
    "seccomp",
    "rtcsync",
    "broadcasts",
    "broadcastdelay",
)
"""Settings the engine, sockets or listeners were built from: a restart applies them.
(``leapfile`` is not here: every SIGHUP re-reads the leap file, changed or not.)"""


@dataclass
class ReloadPlan:
    """The differences between the running config and the new one, by how they apply."""

    servers_changed: bool = False
    access_changed: list[str] = field(default_factory=list)
    stats_changed: list[str] = field(default_factory=list)
    logfile_changed: bool = False
    restart_needed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.servers_changed
            or self.access_changed
            or self.stats_changed
            or self.logfile_changed
            or self.restart_needed
        )

    def summary(self) -> str:
        """One log line's worth: what changed live and what waits for a restart."""
        live: list[str] = []
        if self.servers_changed:
            live.append("sources")
        live += self.access_changed + self.stats_changed
        if self.logfile_changed:
            live.append("logfile")
        parts = [f"applied: {', '.join(live)}" if live else "no live changes"]
        if self.restart_needed:
            parts.append(f"restart ntpy to apply: {', '.join(self.restart_needed)}")
        return "; ".join(parts)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare two configs field by field (source locations do not count as changes)."""
    plan = ReloadPlan()
    plan.servers_changed = old.servers != new.servers
    plan.access_changed = [f for f in LIVE_ACCESS_FIELDS if getattr(old, f) != getattr(new, f)]
    if _peers(old) != _peers(new):  # nopeer exempts them: the access policy knows them
        plan.access_changed.append("peer lines")
    plan.stats_changed = [f for f in LIVE_STATS_FIELDS if getattr(old, f) != getattr(new, f)]
    plan.logfile_changed = old.logfile != new.logfile
    plan.restart_needed = [f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)]
    return plan


def _peers(config: Config) -> list[str]:
    return sorted(s.address for s in config.servers if s.kind == "peer")
