"""What the daemon says at start-up: one place for the lines an admin reads first
(``journalctl -u ntpy``), kept out of the lifecycle code in ``app.py``."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ntpy import __version__
from ntpy.clock import SystemClock
from ntpy.daemon.kernelsync import describe_rtc, disciplines
from ntpy.daemon.local_clock import describe_local

if TYPE_CHECKING:
    from ntpy.daemon.app import Daemon

log = logging.getLogger("ntpy")


def announce(daemon: Daemon) -> None:
    """The start-up log lines: version, config, clock, RTC, sources, sockets."""
    log.info("ntpy %s starting (pid %d)", __version__, os.getpid())
    options = daemon.options
    log.info(
        "configuration: %s",
        options.config_origin or options.config_path or "built-in default config",
    )
    log.info("clock: %s; precision 2^%d s", daemon.clock_reason, daemon.precision)
    system = isinstance(daemon.clock, SystemClock)
    log.info(
        describe_rtc(
            system_clock=system,
            disciplining=disciplines(daemon.config),
            rtcsync=daemon.config.rtcsync,
        )
    )
    refclocks = sum(1 for r in daemon.config.refclocks if not r.is_local)
    n = len(daemon.config.servers) + refclocks
    local = daemon.engine.opts.local
    if daemon.config.servers:
        log.info("%d upstream server/pool line(s) configured", len(daemon.config.servers))
    if refclocks:
        log.info("%d reference clock(s) configured", refclocks)
    if daemon.engine.broadcast is not None:
        n += 1
        auth = "signed with a trusted key" if daemon.config.flags.auth else "signed or not"
        log.info("broadcast client: mode 5 packets %s become sources", auth)
    if local is not None:
        log.info(
            "%s (%s)",
            describe_local(daemon.config, local.served_stratum),
            "fallback when the upstreams are lost" if n else "the time source",
        )
    if not n and local is None:
        log.info(
            "no time source configured: serving as unsynchronized (leap alarm, stratum 0) "
            "so clients will not use this server"
        )
    if daemon.pool is not None:
        for ep in daemon.pool.endpoints:
            log.info(
                "listening on %s (%s loop, %d workers)",
                ep.bound,
                daemon.loop.selector_name,
                daemon.workers,
            )
    for ep in daemon.server.endpoints:
        log.info("listening on %s (%s loop)", ep.bound, daemon.loop.selector_name)
