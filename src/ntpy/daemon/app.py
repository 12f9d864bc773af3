"""``ntpy serve``: assemble the daemon from a validated config and run it in the foreground.

Order matters for an admin reading the log: the config is checked before any socket is
opened, the clock choice is stated with its reason (virtual vs system), and every listen
address is reported with the port actually bound, so a test or a human can rely on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ntpy import __version__
from ntpy.clock import ClockError, SystemClock, choose_clock, measure_precision
from ntpy.clock.base import Clock
from ntpy.config import Config
from ntpy.core.access import AccessControl, AccessError, compile_rules
from ntpy.core.actions import cooked_now
from ntpy.core.auth import MacKey
from ntpy.core.engine import SyncEngine
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
from ntpy.core.server import Responder
from ntpy.core.system import SystemState, unsynchronized
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon.control import ControlError, ControlServer, default_socket_path
from ntpy.daemon.driftfile import WRITE_INTERVAL_NS, DriftWriter, read_drift
from ntpy.daemon.local_clock import describe_local, local_reference
from ntpy.daemon.logsetup import LogSetup
from ntpy.daemon.loop import Loop
from ntpy.daemon.reload import ReloadPlan, plan_reload
from ntpy.daemon.server import NtpServer
from ntpy.daemon.sync import SyncShell, random64, sync_options
from ntpy.daemon.udp import ListenAddress, ListenError, parse_listen
from ntpy.daemon.workers import WorkerPool, open_groups, resolve_workers
from ntpy.metrics.statsfiles import StatsFiles
from ntpy.metrics.web import WebService, WebSources

log = logging.getLogger("ntpy")

DEFAULT_CLIENT_TABLE = 65536
CLIENT_ENTRY_BYTES = 256
"""Budget per client-table entry used to turn ``mru maxmem`` into entries (the table itself
uses less; the rest is headroom for the address cache)."""
DEFAULT_LISTEN = (ListenAddress("0.0.0.0", 123),)
DEFAULT_LISTEN_OPTIONAL = (ListenAddress("::", 123),)


class StartupError(Exception):
    """The daemon cannot start; the message is for the admin."""


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


def listen_addresses(
    config: Config, cli: Sequence[str]
) -> tuple[list[ListenAddress], list[ListenAddress]]:
    """(required, optional) addresses: --listen, else config listen/interface, else wildcard."""
    if cli:
        return [parse_listen(x) for x in cli], []
    if config.listen:
        return [ListenAddress(str(x.address), x.port) for x in config.listen], []
    required: list[ListenAddress] = []
    v4, v6 = True, True
    for rule in config.interfaces:
        if rule.action == "listen" and rule.match == "network" and rule.network is not None:
            if rule.network.num_addresses != 1:
                log.warning(
                    "%s: 'interface listen %s' covers a network; ntpy listens on single "
                    "addresses or the wildcard, so it is ignored",
                    rule.location,
                    rule.network,
                )
                continue
            required.append(ListenAddress(str(rule.network.network_address), 123))
        elif rule.action in ("ignore", "drop") and rule.match == "ipv6":
            v6 = False
        elif rule.action in ("ignore", "drop") and rule.match == "ipv4":
            v4 = False
        elif rule.action in ("ignore", "drop") and rule.match in ("all", "wildcard"):
            v4 = v6 = False
    if required:
        return required, []
    if not (v4 or v6):
        raise StartupError("the 'interface' lines ignore every address: nothing to listen on")
    return (list(DEFAULT_LISTEN) if v4 else []), (list(DEFAULT_LISTEN_OPTIONAL) if v6 else [])


def load_mac_keys(config: Config) -> dict[int, MacKey]:
    """Trusted symmetric keys from the ``keys`` file (only ids named by ``trustedkey``)."""
    if not config.keys:
        return {}
    from ntpy.config import ConfigError
    from ntpy.config.keys import hashlib_name, load_keys

    try:
        keys = load_keys(config.keys)
    except ConfigError as exc:  # checked before start; this is a file changed since
        raise StartupError(f"keys file: {exc}") from None
    trusted: dict[int, MacKey] = {}
    for keyid, key in keys.items():
        if keyid not in config.trustedkeys:
            continue
        alg = hashlib_name(key.algorithm)
        if alg is None:
            raise StartupError(f"{key.location}: key {keyid}: {key.algorithm} is not available")
        trusted[keyid] = MacKey(keyid, alg, key.secret)
    return trusted


def resolve_rule_hosts(config: Config) -> dict[str, list[str]]:
    """Addresses of the host names used in restrict/allow/deny lines (looked up once, at
    start; a name that does not resolve leaves its rule inactive, with a warning)."""
    names = {r.host for r in config.restricts if r.host} | {a.host for a in config.access if a.host}
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            log.warning("restrict %s: cannot resolve (%s); the rule does not apply", name, exc)
            continue
        out[name] = sorted({str(info[4][0]) for info in infos})
    return out


def build_access(config: Config) -> AccessControl:
    """ntpd's restrict rules (and chrony's allow/deny) as the responder's access policy."""
    rules = compile_rules(
        config.restricts, config.access, resolved_hosts=resolve_rule_hosts(config)
    )
    return AccessControl(rules)


def build_limiter(config: Config, workers: int = 1) -> RateLimiter:
    """The fixed-size client table behind ``limited``: ``discard`` sets the rates, ``mru
    maxdepth``/``maxmem`` the size (default 65536 clients). With N workers each gets 1/N of
    the table: a client always reaches the same worker, so the total stays the budget."""
    entries = DEFAULT_CLIENT_TABLE
    if config.mru.maxdepth is not None:
        entries = config.mru.maxdepth
    if config.mru.maxmem is not None:
        entries = min(entries, max(1, config.mru.maxmem * 1024 // CLIENT_ENTRY_BYTES))
    rl = config.ratelimit
    cfg = RateLimitConfig(
        average_log2=config.discard.average if rl.interval is None else rl.interval,
        minimum_s=config.discard.minimum,
        burst=rl.burst,
        leak_log2=rl.leak,
        max_clients=max(1, entries // workers),
        ipv6_prefix=rl.ipv6prefix,
    )
    return RateLimiter(cfg, lambda: secrets.randbits(32))


class Daemon:
    """The running server: clock, sync engine, responder, sockets, control socket, loop."""

    def __init__(self, config: Config, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        mode = options.clock_mode or config.clock
        try:
            clock, why = choose_clock(mode)
        except Exception as exc:
            raise StartupError(str(exc)) from exc
        self.clock: Clock = clock
        self.clock_reason = why
        self.precision = measure_precision()
        self.exit_code = 0
        self.drift = DriftWriter(config.driftfile) if config.driftfile else None
        initial_ppb: float | None = None
        if config.driftfile:
            ppm, warning = read_drift(config.driftfile)
            if warning:
                log.warning("%s", warning)
            if ppm is not None:
                initial_ppb = ppm * 1000.0
                log.info("drift file %s: frequency %+.3f ppm", config.driftfile, ppm)
            assert self.drift is not None
            self.drift.loaded(ppm)
        self.engine = SyncEngine(
            sync_options(
                config,
                precision=self.precision,
                clock_name=self.clock.name,
                local=local_reference(config),
                initial_frequency_ppb=initial_ppb,
                allow_panic_step=options.allow_panic_step,
            ),
            random64,
        )
        try:
            self.access = build_access(config)
        except AccessError as exc:
            raise StartupError(f"restrict rules: {exc}") from exc
        for name in self.access.rules.unresolved:
            log.warning("restrict %s: host not resolved; the rule does not apply", name)
        self.workers = resolve_workers(config.workers, options.workers, self.clock)
        self.pool: WorkerPool | None = None
        """With workers > 1: the serving processes (the main then answers no NTP itself)."""
        self.limiter = build_limiter(config, self.workers)
        self.responder = Responder(
            unsynchronized(self.precision),
            load_mac_keys(config),
            access=self.access,
            limiter=self.limiter,
            kod_min_poll=self.limiter.config.average_log2,
        )
        self.server = NtpServer(self.clock, self.responder)
        from ntpy.core.querylimit import QueryBudget
        from ntpy.daemon.ntpq import NtpqHandler  # mode 6: the real ntpq (one local hook)
        from ntpy.daemon.server import ControlHandler

        self.control_handler: ControlHandler | None = NtpqHandler(
            self.status,
            self.clock.now_ns,
            budget=QueryBudget(),
            flags=lambda host, port: self.access.flags(host, port),
        )
        """Answers mode 6; worker processes forward their mode 6 requests to it too."""
        self.server.control = self.control_handler
        self.loop = Loop(options.selector)
        self.sync = SyncShell(self.engine, self.clock, self.loop, self._set_state, self._panic)
        self.sync.on_sources = self._sources_changed  # `restrict source` follows them
        self.control: ControlServer | None = None
        self.stats: StatsFiles | None = None
        self.logs: LogSetup | None = None
        """The log handlers (set by ``serve``); SIGHUP reopens the log file through it."""
        self.web: WebService | None = None

    def _set_state(self, state: SystemState) -> None:
        if state != self.responder.state:
            self.responder.set_state(state)
            if self.pool is not None:
                self.pool.shared.publish_state(state)

    def _sources_changed(self, addresses: list[str]) -> None:
        self.access.update_sources(addresses)
        if self.pool is not None:
            self.pool.broadcast("sources", {"addresses": addresses})

    def _panic(self, message: str) -> None:
        log.error("exiting: %s", message)
        self.exit_code = 1
        self.loop.stop()

    def refresh_state(self) -> None:
        """Re-read the system state (root dispersion ages, the local clock's reference time)."""
        self._set_state(self.engine.system_state(cooked_now(self.clock)))

    def status(self) -> object:
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
            return self._with_mode6(out)
        out = {str(k): v for k, v in self.server.counters.items()}
        out.update({f"ratelimit_{k}": v for k, v in self.limiter.counters.items()})
        return self._with_mode6(out)

    def _with_mode6(self, out: dict[str, int]) -> dict[str, int]:
        """Add the ntpq handler's own tallies (ops served, errors, malformed requests)."""
        handler = self.control_handler
        tallies = getattr(handler, "counters", None)
        if tallies:
            out.update({f"mode6_{k}": int(v) for k, v in tallies.items()})
        return out

    def _summary(self) -> str:
        """The one-line counter summary (over all workers)."""
        if self.pool is not None:
            self.counters()
        return self.server.summary()

    def clients(self) -> dict[str, object]:
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
        if self.drift is not None and self.engine.ever_synced:
            self.drift.write(self.engine.frequency_ppb / 1000.0, time.monotonic_ns())

    def _take_over_kernel_clock(self) -> None:
        """Before disciplining the kernel clock, switch off the kernel PLL another daemon may
        have left running (two loops would fight). Only with upstreams: serving the local
        clock never adjusts anything, so it never touches the kernel either."""
        if isinstance(self.clock, SystemClock) and self.config.servers:
            try:
                self.clock.reset_kernel_discipline()
            except ClockError as exc:
                raise StartupError(str(exc)) from exc

    def start(self) -> None:
        self._take_over_kernel_clock()
        required, optional = listen_addresses(self.config, self.options.listen)
        if self.workers > 1:
            self._open_workers(required, optional)
        else:
            try:
                self.server.open(required, optional=optional)
            except ListenError as exc:
                self.server.close()
                raise StartupError(str(exc)) from exc
            if not self.server.endpoints:
                raise StartupError("no address could be opened for listening")
            self.server.attach(self.loop)
        self._announce()
        if self.pool is not None:
            self.pool.start()  # after the log lines above; before any other socket opens
        self.stats = StatsFiles.from_config(self.config)
        if self.stats is not None:
            self.stats.announce(self.clock.now_ns())
            self.sync.recorders.append(self.stats.record)
        self.sync.add_configured(self.config.servers)
        self.sync.start()
        self.loop.call_every(16 * NS, self.refresh_state)
        if self.drift is not None:
            self.loop.call_every(WRITE_INTERVAL_NS, self._write_drift)
        if self.options.control_socket != "none":
            path = self.options.control_socket or default_socket_path()
            try:
                self.control = ControlServer(
                    path,
                    self.loop,
                    {
                        "status": self.status,
                        "peers": self.status,
                        "counters": self.counters,
                        "clients": self.clients,
                    },
                )
                self.control.start()
            except (OSError, ControlError) as exc:
                log.warning("no control socket: %s", exc)
                self.control = None
        self._start_web()
        self.loop.add_signal_handler(signal.SIGTERM, self._on_stop)
        self.loop.add_signal_handler(signal.SIGINT, self._on_stop)
        self.loop.add_signal_handler(
            signal.SIGUSR1, lambda s: log.info("counters: %s", self._summary())
        )
        self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        self.refresh_state()

    def _on_hup(self, signum: int) -> None:
        self.reload()

    def reload(self) -> ReloadPlan | None:
        """SIGHUP: reopen the log file (logrotate), re-read the config file and apply what
        can change live (see ``daemon/reload.py``). A file that does not parse changes
        nothing. Returns the plan carried out, or None if nothing was read."""
        if self.logs is not None:
            self.logs.reopen()
        if self.pool is not None:
            self.pool.broadcast("reopen-logs", {})  # workers share the log file
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
        if plan.access_changed:
            self._reload_access(new)
        if plan.servers_changed:
            self.sync.apply_servers(new.servers)
        if plan.stats_changed:
            self._reload_stats(new)
        # What needs a restart keeps running as before, so the next reload compares with it.
        self.config = dataclasses.replace(
            new, **{name: getattr(self.config, name) for name in plan.restart_needed}
        )
        log.info("configuration reloaded from %s: %s", path, plan.summary())
        return plan

    def _reload_access(self, config: Config) -> None:
        try:
            access = build_access(config)
        except AccessError as exc:
            log.error("reload: restrict rules: %s; the old rules stay", exc)
            return
        upstreams = [str(u.address[0]) for u in self.sync.upstreams.values()]
        access.update_sources(upstreams)
        self.access = access
        self.responder.access = access
        limits = ("discard", "ratelimit", "mru")
        if any(getattr(self.config, f) != getattr(config, f) for f in limits):
            self.limiter = build_limiter(config, self.workers)
            self.responder.limiter = self.limiter
            self.responder.kod_min_poll = self.limiter.config.average_log2
        if self.pool is not None and self.options.config_path is not None:
            # A worker forked later (a restart) inherits these objects directly.
            self.pool.limiter = self.limiter
            self.pool.access_update = access.update_sources
            self.pool.broadcast("reload", {"path": self.options.config_path})
            self.pool.broadcast("sources", {"addresses": upstreams})

    def _reload_stats(self, config: Config) -> None:
        if self.stats is not None:
            if self.stats.record in self.sync.recorders:
                self.sync.recorders.remove(self.stats.record)
            self.stats.close()
        self.stats = StatsFiles.from_config(config)
        if self.stats is not None:
            self.stats.announce(self.clock.now_ns())
            self.sync.recorders.append(self.stats.record)

    def _start_web(self) -> None:
        """The status page (``webstatus``) and ``/metrics`` (``metrics``), if configured.

        A configured endpoint that cannot be bound stops the start: the admin asked for it.
        """
        if self.config.webstatus is None and self.config.metrics is None:
            return
        info = {"version": __version__, "clock": self.clock.name}
        # Pages and scrapes use the counters the workers push every second: a scrape must
        # not stall the main loop waiting for them.
        sources = WebSources(
            self.status, lambda: self.counters(fresh=False), self.clock.now_ns, info
        )
        self.web = WebService(
            self.loop, sources, webstatus=self.config.webstatus, metrics=self.config.metrics
        )
        try:
            self.web.start()
        except OSError as exc:
            self.web = None
            raise StartupError(str(exc)) from exc
        if self.web.history is not None:
            self.sync.recorders.append(self.web.history.record)
            self.loop.call_every(self.web.history.interval_ns, self.web.sample)

    def _open_workers(
        self, required: Sequence[ListenAddress], optional: Sequence[ListenAddress]
    ) -> None:
        """Bind every address once per worker (SO_REUSEPORT) and set up the pool; start()
        forks the workers, run() lets them answer. The main then publishes clock and state
        changes to them and answers no NTP itself."""
        try:
            groups = open_groups(required, optional, self.workers, self.limiter.config.ipv6_prefix)
        except ListenError as exc:
            raise StartupError(str(exc)) from exc
        if not groups:
            raise StartupError("no address could be opened for listening")
        self.pool = WorkerPool.for_daemon(self, groups)

    def _announce(self) -> None:
        log.info("ntpy %s starting (pid %d)", __version__, os.getpid())
        options = self.options
        log.info(
            "configuration: %s",
            options.config_origin or options.config_path or "built-in default config",
        )
        log.info("clock: %s; precision 2^%d s", self.clock_reason, self.precision)
        n = len(self.config.servers)
        local = self.engine.opts.local
        if n:
            log.info("%d upstream server/pool line(s) configured", n)
        if local is not None:
            log.info(
                "%s (%s)",
                describe_local(self.config, local.served_stratum),
                "fallback when the upstreams are lost" if n else "the time source",
            )
        if not n and local is None:
            log.info(
                "no time source configured: serving as unsynchronized (leap alarm, stratum 0) "
                "so clients will not use this server"
            )
        if self.pool is not None:
            for ep in self.pool.endpoints:
                log.info(
                    "listening on %s (%s loop, %d workers)",
                    ep.bound,
                    self.loop.selector_name,
                    self.workers,
                )
        for ep in self.server.endpoints:
            log.info("listening on %s (%s loop)", ep.bound, self.loop.selector_name)

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
        try:
            self.loop.run()
        finally:
            if self.pool is not None:
                self.pool.stop()
            log.info("counters: %s", self._summary())
            if self.drift is not None and self.engine.ever_synced:
                self.drift.write_at_exit(self.engine.frequency_ppb / 1000.0)
            if self.control is not None:
                self.control.close()
            self.sync.close()
            if self.stats is not None:
                self.stats.close()
            if self.web is not None:
                self.web.close()
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
