"""``ntpy serve``: the daemon's lifecycle -- start, run, signals, reload (SIGHUP), stop.

The parts are built by ``daemon/assemble.py`` from the validated config, with the same
builders at start-up and on reload. Order matters for an admin reading the log: the config
is checked before any socket is opened, the clock choice is stated with its reason (virtual
vs system), and every listen address is reported with the port actually bound, so a test or
a human can rely on it.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ntpy import __version__
from ntpy.clock import ClockError, SystemClock, measure_precision
from ntpy.clock.base import Clock
from ntpy.config import Config
from ntpy.core.access import AccessError
from ntpy.core.actions import cooked_now
from ntpy.core.status import SyncStatus
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon import bclient, ipc, xdp_load
from ntpy.daemon.announce import announce
from ntpy.daemon.assemble import (
    StartupError,
    build_clock,
    build_engine,
    build_mode6,
    build_responder,
    check_clock,
    close_stats,
    listen_addresses,
    load_drift,
    open_control,
    open_pool,
    open_server,
    open_stats,
    open_web,
    set_limiter,
    start_access,
)
from ntpy.daemon.broadcaster import Broadcaster, start_broadcast
from ntpy.daemon.control import ControlServer
from ntpy.daemon.driftfile import WRITE_INTERVAL_NS
from ntpy.daemon.fastpath import XdpFastPath, start_fastpath
from ntpy.daemon.kernelsync import (
    KernelSyncStatus,
    disciplines,
    release_kernel_clock,
    take_over_kernel_clock,
)
from ntpy.daemon.leapkeeper import LeapKeeper, build_smear
from ntpy.daemon.logsetup import LogSetup
from ntpy.daemon.loop import Loop
from ntpy.daemon.nts_service import NtsService, NtsStartError
from ntpy.daemon.policy import build_access, build_limiter, limits_changed
from ntpy.daemon.privdrop import PrivilegeError, capabilities_to_keep
from ntpy.daemon.refclocks import RefclockShell
from ntpy.daemon.reload import ReloadPlan, plan_reload
from ntpy.daemon.runas import RunAs, identity_for
from ntpy.daemon.seccomp import Confinement, SeccompError
from ntpy.daemon.server import ControlHandler, NtpServer
from ntpy.daemon.sync import SyncShell
from ntpy.daemon.systemd import Systemd
from ntpy.daemon.webservice import WebService
from ntpy.daemon.workerpool import WorkerPool, resolve_workers
from ntpy.metrics.snapshot import WebSources
from ntpy.metrics.statsfiles import StatsFiles

log = logging.getLogger("ntpy")


@dataclass
class ServeOptions:
    listen: Sequence[str] = ()
    clock_mode: str | None = None
    """"virtual", "system", "auto" or None (use the config's ``clock`` directive)."""
    selector: str = "default"
    log_level: str = "info"
    allow_panic_step: bool = False
    """ntpd -g: let the first adjustment be of any size."""
    control_socket: str | None = None
    """Path of the control socket; None = the default; "none" = no control socket."""
    workers: int | None = None
    """Serving processes (``--workers``); None = the config's ``workers`` (default auto)."""
    extra: dict[str, str] = field(default_factory=dict)
    config_path: str | None = None
    """The file the config came from (re-read on SIGHUP); None = the built-in config."""
    config_origin: str = ""
    """Where the config came from, for the start-up log (default: ``config_path``)."""
    user: str | None = None
    """``-u USER[:GROUP]``: drop root after start-up (wins over the ``user`` directive)."""
    seccomp: int | None = None
    """``-F LEVEL``: the system-call filter (wins over the ``seccomp`` directive)."""


class Daemon:
    """The running server: clock, sync engine, responder, sockets, control socket, loop."""

    def __init__(self, config: Config, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        self.clock: Clock
        self.clock, self.clock_reason = build_clock(
            options.clock_mode or config.clock, config.tinker.maxslewrate
        )
        self.precision = measure_precision()
        self.exit_code = 0
        self.drift, initial_ppb = load_drift(config)
        self.lastgood, vouched = check_clock(config, self.clock, options.allow_panic_step)
        self.engine = build_engine(
            config,
            precision=self.precision,
            clock_name=self.clock.name,
            initial_ppb=initial_ppb,
            allow_panic_step=options.allow_panic_step,
            clock_vouched=vouched,
        )
        self.access = start_access(config)
        self.kernel_status = (
            KernelSyncStatus(self.clock, config.rtcsync)
            if isinstance(self.clock, SystemClock) and disciplines(config)
            else None
        )
        """STA_UNSYNC and the RTC's 11-minute mode (``daemon/kernelsync.py``)."""
        self.systemd = Systemd.from_environment(self.status)
        """Passed sockets and notifications (``daemon/systemd.py``); inert outside systemd."""
        self.workers = self.systemd.limit_workers(
            resolve_workers(config.workers, options.workers, self.clock)
        )
        self.nts: NtsService | None = None
        """With ``nts enable``: the NTS server (KE in the main; NTS served where NTP is)."""
        if config.nts.enabled:
            try:
                self.nts = NtsService(config)
            except NtsStartError as exc:
                raise StartupError(str(exc)) from None
        self.fastpath: XdpFastPath | None = None
        """With ``fastpath xdp``, when the kernel can run it: the XDP program's owner."""
        self.pool: WorkerPool | None = None
        """With workers > 1: the serving processes (the main then answers no NTP itself)."""
        self.limiter = build_limiter(config, self.workers)
        self.responder = build_responder(config, self.precision, self.access, self.limiter)
        self.smeared = build_smear(config, self.clock)
        if self.smeared is not None and self.workers > 1:
            log.warning("leapsmear: serving from one process (worker processes do not smear)")
            self.workers = 1
        self.server = NtpServer(self.smeared or self.clock, self.responder)
        self.control_handler: ControlHandler | None = build_mode6(
            self.status, self.clock, lambda host, port: self.access.flags(host, port)
        )
        """Answers mode 6; worker processes forward their mode 6 requests to it too."""
        self.server.control = self.control_handler
        self.loop = Loop(options.selector)
        self.sync = SyncShell(
            self.engine,
            self.clock,
            self.loop,
            self._set_state,
            self._panic,
            keys=self.responder.keys,
        )
        self.refclocks = RefclockShell(self.engine, self.clock, self.loop)
        """The reference clocks' drivers (SHM, SOCK, NMEA, PPS); the engine polls them."""
        self.leap = LeapKeeper(
            self.engine,
            self.clock,
            self.loop,
            lambda: cooked_now(self.clock),
            self.refresh_state,
            self.smeared,
        )
        self.leap.load(config.leapfile)
        self.broadcaster: Broadcaster | None = None  # `broadcast ADDR` lines (start)
        self.sync.on_sources = self._sources_changed  # `restrict source` follows them
        self.sync.rtcsync = config.rtcsync
        self.sync.nts.configure(config.nts_ca, config.driftfile)
        sink = bclient.attach_broadcast_client(
            config, self.engine, self.responder, self.sync, self.clock
        )
        self.server.broadcast = self.bclient = sink  # mode 5 (broadcastclient); workers: start
        self.control: ControlServer | None = None
        self.stats: StatsFiles | None = None
        self.logs: LogSetup | None = None
        """The log handlers (set by ``serve``); SIGHUP reopens the log file through it."""
        self.web: WebService | None = None
        self.run_as: RunAs | None = None
        """With ``-u``/``user``: the drop, checked before anything binds."""
        self.confinement: Confinement | None = None
        """``-F``/``seccomp``: the system-call filter (``daemon/seccomp.py``)."""

    def _set_state(self, state: SystemState) -> None:
        state = self.leap.served(state)
        self.leap.update()
        if state != self.responder.state:
            self.responder.set_state(state)
            if self.fastpath is not None:
                self.fastpath.set_state(state)
            if self.pool is not None:
                self.pool.shared.publish_state(state)
            self.systemd.update()

    def _sources_changed(self, addresses: list[str]) -> None:
        self.access.update_sources(addresses)
        if self.pool is not None:
            self.pool.broadcast(ipc.Sources(tuple(addresses)))

    def _panic(self, message: str) -> None:
        log.error("exiting: %s", message)
        self.exit_code = 1
        self.loop.stop()

    def refresh_state(self) -> None:
        """Re-read the system state (root dispersion ages, the local clock's reference time)."""
        now = cooked_now(self.clock)
        self._set_state(self.engine.system_state(now))
        if self.lastgood is not None:
            self.lastgood.first_sync(self.engine.synced, now)
        if self.kernel_status is not None:
            self.kernel_status.update(self.engine.synced, self.responder.state, now)

    def status(self) -> SyncStatus:
        return self.engine.status(time.monotonic_ns(), cooked_now(self.clock))

    def counters(self, *, fresh: bool = True) -> dict[str, int]:
        """All counters; with workers, ``fresh`` asks them now (up to 1 s) instead of using
        what they pushed within the last second."""
        if self.pool is not None:  # the workers' totals, mirrored for server.summary()
            served, limited = self.pool.counters(fresh=fresh)
            self.server.counters.clear()
            self.server.counters.update(served)
            out = {str(k): v for k, v in served.items()}
            out.update({f"ratelimit_{k}": v for k, v in limited.items()})
            out["worker_restarts"] = self.pool.restarts
            if self.nts is not None:  # the KE's and the key store's (the main's own)
                for k, v in self.nts.counters().items():
                    out[k] = out.get(k, 0) + v
            return self._with_mode6(out)
        out = {str(k): v for k, v in self.server.counters.items()}
        out.update({f"ratelimit_{k}": v for k, v in self.limiter.counters.items()})
        if self.nts is not None:
            out.update(self.nts.counters())
        return self._with_mode6(out)

    def _with_xdp(self, out: dict[str, int]) -> dict[str, int]:
        if self.fastpath is not None:  # plus what the workers decided on the kernel's word
            for k, v in self.fastpath.counters().items():
                out[k] = out.get(k, 0) + v
        return out

    def _with_mode6(self, out: dict[str, int]) -> dict[str, int]:
        """Add the ntpq handler's own tallies (ops served, errors, malformed requests), and
        the kernel fast path's counters."""
        self._with_xdp(out)
        handler = self.control_handler
        tallies = getattr(handler, "counters", None)
        if tallies:
            out.update({f"mode6_{k}": int(v) for k, v in tallies.items()})
        return out

    def _summary(self) -> str:
        """The one-line counter summary (over all workers)."""
        if self.pool is not None:
            self.counters()
        line = self.server.summary() + (self.broadcaster.summary() if self.broadcaster else "")
        line += bclient.summary(self.engine)
        if self.nts is not None:
            line += "".join(f" {k}={v}" for k, v in sorted(self.nts.counters().items()) if v)
        return line

    def clients(self) -> dict[str, object]:
        out = self._python_clients()
        if self.fastpath is not None:  # what the kernel answered never reached the above
            out["kernel_clients"] = self.fastpath.clients(50)
            out["kernel_answered"] = self.fastpath.counters()["xdp_answered"]
        return out

    def _python_clients(self) -> dict[str, object]:
        if self.pool is not None:
            return self.pool.clients(50)
        now = self.clock.now_ns()  # the limiter keeps served time
        rows = []
        for c in self.limiter.clients(50):
            row = dataclasses.asdict(c)
            row["last_seen_ago_s"] = max(0, (now - c.last_seen_ns) // NS)
            rows.append(row)
        return {"clients": rows, "table_entries": self.limiter.config.max_clients}

    def _write_drift(self) -> None:
        if self.lastgood is not None:
            self.lastgood.save(self.engine.synced, cooked_now(self.clock))
        if self.drift is not None and self.engine.ever_synced:
            self.drift.write(self.engine.frequency_ppb / 1000.0, time.monotonic_ns())

    def _take_over_kernel_clock(self) -> None:
        try:
            take_over_kernel_clock(self.clock, self.config)
        except ClockError as exc:
            raise StartupError(str(exc)) from exc

    def _prepare_drop(self) -> None:
        """``-u``/``user``: resolve the account and check, before anything binds, that it
        can write what the daemon writes later (``daemon/runas.py``)."""
        try:
            ident = identity_for(self.config, self.options.user)
            if ident is not None:
                self.run_as = RunAs(ident, self.config, self.options.config_path)
        except PrivilegeError as exc:
            raise StartupError(str(exc)) from None
        level = self.options.seccomp
        try:
            self.confinement = Confinement(self.config.seccomp if level is None else level)
        except SeccompError as exc:
            raise StartupError(str(exc)) from None

    def _drop(self) -> None:
        """The main's drop, at the end of start-up: CAP_SYS_TIME only with the system clock."""
        if self.run_as is None:
            return
        keep = capabilities_to_keep(system_clock=isinstance(self.clock, SystemClock))
        path = self.control.path if self.control is not None else None
        try:
            self.run_as.main(keep, path)
        except PrivilegeError as exc:
            raise StartupError(str(exc)) from None

    def start(self) -> None:
        self._prepare_drop()
        self._take_over_kernel_clock()
        required, optional = listen_addresses(self.config, self.options.listen)
        if self.workers > 1:
            self.pool = open_pool(
                required,
                optional,
                self.workers,
                clock=self.clock,
                responder=self.responder,
                limiter=self.limiter,
                access=self.access,
                control=lambda: self.control_handler,
                loop=self.loop,
                precision=self.precision,
                selector=self.options.selector,
            )
            if self.run_as is not None:
                self.pool.after_fork = self.run_as.worker()
            self.pool.broadcast_sink = self.bclient
            if self.confinement is not None and self.confinement.level:
                self.pool.confine_worker = self.confinement.worker
        else:
            open_server(self.server, self.loop, required, optional, self.systemd.activated)
        self._start_nts()
        listener = self.nts.listener if self.nts is not None else None
        self.systemd.check_sockets([*required, *optional], listener.bound if listener else [])
        announce(self)
        if self.pool is not None:
            if self.config.fastpath is not None:
                xdp_load.preload()  # the workers read the kernel's buckets with it
            self.pool.start()  # after the log lines above; before any other socket opens
        self.stats = open_stats(self.config, self.clock, self.sync.recorders)
        hosts = [a.host for a in [*required, *optional]]
        self.sync.set_listen_addresses(hosts)
        self.broadcaster = start_broadcast(
            self.config,
            self.clock,
            lambda: self.responder.state,
            self.responder.keys,
            self.loop,
            hosts,
        )
        self.sync.add_configured(self.config.servers)
        self.refclocks.add_configured(self.config.refclocks)
        self.sync.start()
        self.loop.call_every(16 * NS, self.refresh_state)
        if self.drift is not None:
            self.loop.call_every(WRITE_INTERVAL_NS, self._write_drift)
        self.control = open_control(
            self.options.control_socket,
            self.loop,
            {
                "status": self.status,
                "peers": self.status,
                "counters": self.counters,
                "clients": self.clients,
            },
        )
        # Pages and scrapes use the counters the workers push every second: a scrape must
        # not stall the main loop waiting for them.
        view = WebSources(
            self.status,
            lambda: self.counters(fresh=False),
            self.clock.now_ns,
            {"version": __version__, "clock": self.clock.name},
        )
        self.web = open_web(self.config, self.loop, view, self.sync.recorders)
        self.loop.add_signal_handler(signal.SIGTERM, self._on_stop)
        self.loop.add_signal_handler(signal.SIGINT, self._on_stop)
        self.loop.add_signal_handler(
            signal.SIGUSR1, lambda s: log.info("counters: %s", self._summary())
        )
        self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        self.refresh_state()
        if self.config.fastpath is not None:  # after the fork: only the main holds the link
            eps = self.pool.endpoints if self.pool is not None else self.server.endpoints
            self.fastpath = start_fastpath(
                self.config,
                self.clock,
                self.responder,
                self.limiter,
                eps,
                self.loop,
            )
            if self.fastpath is not None and self.pool is not None:
                self.pool.share_kernel_buckets(self.fastpath.clients_fd)
        self._drop()
        if self.confinement is not None:  # last: everything is bound, opened and imported
            try:
                self.confinement.main()
            except SeccompError as exc:
                raise StartupError(str(exc)) from None

    def _start_nts(self) -> None:
        """The KE listener, and NTS on the responder (the workers get its ring at fork)."""
        if self.nts is None:
            return
        pool = self.pool
        endpoints = pool.endpoints if pool is not None else self.server.endpoints
        try:
            self.nts.start(
                self.loop,
                self.responder,
                [ep.bound for ep in endpoints],
                publish=pool.publish_cookie_keys if pool is not None else None,
                adopt=self.systemd.activated.take_tcp,
            )
        except NtsStartError as exc:
            raise StartupError(str(exc)) from None

    def _on_hup(self, signum: int) -> None:
        self.systemd.reloading()
        try:
            self.reload()
        finally:
            self.systemd.reloaded()

    def reload(self) -> ReloadPlan | None:
        """SIGHUP: reopen the log file (logrotate), re-read the config file and apply what
        can change live (see ``daemon/reload.py``). A file that does not parse changes
        nothing. Returns the plan carried out, or None if nothing was read."""
        if self.logs is not None:
            self.logs.reopen()
        if self.pool is not None:
            self.pool.broadcast(ipc.ReopenLogs())  # workers share the log file
        path = self.options.config_path
        if path is None:
            log.info("SIGHUP: log file reopened; running the built-in config, nothing to reload")
            return None
        from ntpy.config import ConfigError, all_errors, load

        try:
            result = load(path, check_paths=True)
        except ConfigError as exc:
            first, *more = all_errors(exc)
            log.error(
                "config reload failed, the running configuration stays: %s%s",
                first,
                f" (and {len(more)} more error(s) below)" if more else "",
            )
            for error in more:
                log.error("config reload: %s", error)
            return None
        except OSError as exc:
            log.error("config reload failed: cannot read %s: %s", path, exc.strerror)
            return None
        for warning in result.warnings:
            log.warning("%s", warning)
        new = result.config
        plan = plan_reload(self.config, new)
        if plan.logfile_changed and self.logs is not None:
            self.logs.configure(self.options.log_level, new.logfile)
        self.leap.load(new.leapfile)  # always: the file may be new under the same name
        self.refresh_state()
        if plan.access_changed:
            self._reload_access(new)
        if plan.servers_changed:
            self.sync.apply_servers(new.servers)
        if plan.stats_changed:
            self._reload_stats(new)
        if self.nts is not None:
            self.nts.reload(new)  # certificate renewals; rotate 0 re-reads the cookie keys
        # What needs a restart keeps running as before, so the next reload compares with it.
        self.config = dataclasses.replace(
            new, **{name: getattr(self.config, name) for name in plan.restart_needed}
        )
        log.info("configuration reloaded from %s: %s", path, plan.summary())
        return plan

    def _reload_access(self, config: Config) -> None:
        """New access rules (and rate limiter, if its lines changed), built as at start."""
        try:
            access = build_access(config)
        except AccessError as exc:
            log.error("reload: restrict rules: %s; the old rules stay", exc)
            return
        upstreams = [str(u.address[0]) for u in self.sync.upstreams.values()]
        access.update_sources(upstreams)
        self.access = access
        self.responder.access = access
        if limits_changed(self.config, config):
            self.limiter = build_limiter(config, self.workers)
            set_limiter(self.responder, self.limiter)
        if self.fastpath is not None:
            self.fastpath.reload(self.responder, self.limiter)
        if self.pool is not None and self.options.config_path is not None:
            # A worker forked later (a restart) inherits these objects directly.
            self.pool.limiter = self.limiter
            self.pool.access_update = access.update_sources
            self.pool.broadcast(ipc.Reload(self.options.config_path))
            self.pool.broadcast(ipc.Sources(tuple(upstreams)))

    def _reload_stats(self, config: Config) -> None:
        close_stats(self.stats, self.sync.recorders)
        self.stats = open_stats(config, self.clock, self.sync.recorders)

    def _on_stop(self, signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.loop.stop()

    def run(self) -> int:
        if self.pool is not None:
            self.pool.release()  # the workers answer from now on, with the state start() set
        log.info(
            "ready: answering on %d address(es) in %d process(es); SIGHUP reloads the config",
            len(self.server.endpoints) or len(self.pool.endpoints if self.pool else []),
            self.workers if self.pool is not None else 1,
        )
        self.systemd.ready(self.loop)
        try:
            self.loop.run()
        finally:
            self.systemd.stopping()
            if self.pool is not None:
                self.pool.stop()
            log.info("counters: %s", self._summary())
            if self.drift is not None and self.engine.ever_synced:
                self.drift.write_at_exit(self.engine.frequency_ppb / 1000.0)
            if self.lastgood is not None:
                self.lastgood.save(self.engine.synced, cooked_now(self.clock))
            if self.control is not None:
                self.control.close()
            self.sync.close()
            if self.broadcaster is not None:
                self.broadcaster.close()
            if self.fastpath is not None:
                self.fastpath.close()
            self.refclocks.close()
            release_kernel_clock(self.clock, self.config)
            if self.stats is not None:
                self.stats.close()
            if self.web is not None:
                self.web.close()
            if self.nts is not None:
                self.nts.close()
            self.server.close()
            self.loop.close()
        return self.exit_code


def serve(config: Config, options: ServeOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the process exit status."""
    # A SIGHUP during start-up (logrotate) must not kill the daemon: ignore it until the
    # loop installs the reload handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs = LogSetup()
    try:
        logs.configure(options.log_level, config.logfile)
    except ValueError as exc:
        print(f"ntpy: {exc}", file=sys.stderr)
        return 2
    try:
        daemon = Daemon(config, options)
        daemon.logs = logs
        daemon.start()
    except (StartupError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return daemon.run()
