"""Turn a validated ``Config`` into the daemon's running parts.

One builder per part -- clock, drift file, sync engine, access policy and rate limiter
(``daemon/policy.py``), keys, responder, mode 6 handler, listen sockets or the worker pool,
statistics files, control socket, web status and metrics -- so that start-up and a reload
(SIGHUP) build a part with the same code, and ``daemon/app.py`` keeps only the lifecycle:
start, run, signals, stop.

Builders raise ``StartupError`` (a message for the admin) where the daemon cannot start
without the part; a reload catches the underlying error instead and keeps the old part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from ntpy.clock import choose_clock
from ntpy.clock.base import Clock
from ntpy.clock.slewplan import DEFAULT_MAX_SLEW_PPM
from ntpy.config import Config
from ntpy.core.access import AccessControl, AccessError
from ntpy.core.actions import Record
from ntpy.core.auth import MacKey
from ntpy.core.clockguard import judge_clock
from ntpy.core.engine import SyncEngine
from ntpy.core.ratelimit import RateLimiter
from ntpy.core.server import Responder
from ntpy.core.system import unsynchronized
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.control import ControlError, ControlServer, default_socket_path
from ntpy.daemon.driftfile import DriftWriter, read_drift
from ntpy.daemon.lastgood import LastGood, describe_time, lastgood_path, read_lastgood
from ntpy.daemon.local_clock import local_reference
from ntpy.daemon.loop import Loop
from ntpy.daemon.policy import build_access
from ntpy.daemon.reuseport import open_groups
from ntpy.daemon.sdsocket import Activated
from ntpy.daemon.server import ControlHandler, NtpServer
from ntpy.daemon.sync import random64
from ntpy.daemon.syncopts import sync_options
from ntpy.daemon.udp import ListenAddress, ListenError, parse_listen
from ntpy.daemon.webservice import WebService
from ntpy.daemon.workerpool import WorkerPool
from ntpy.metrics.snapshot import StatusView
from ntpy.metrics.statsfiles import StatsFiles

log = logging.getLogger("ntpy")

DEFAULT_LISTEN = (ListenAddress("0.0.0.0", 123),)
DEFAULT_LISTEN_OPTIONAL = (ListenAddress("::", 123),)

Recorders = list[Callable[[Record], None]]
"""The sync shell's record listeners (stats files, the web history)."""


class StartupError(Exception):
    """The daemon cannot start; the message is for the admin."""


# --- clock, drift, engine -------------------------------------------------------------------


def build_clock(mode: str, max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM) -> tuple[Clock, str]:
    """The clock for ``mode`` ("virtual", "system", "auto") and why it was chosen; the
    system clock slews at up to ``max_slew_ppm`` (``tinker maxslewrate``)."""
    try:
        return choose_clock(mode, max_slew_ppm=max_slew_ppm)
    except Exception as exc:
        raise StartupError(str(exc)) from exc


def load_drift(config: Config) -> tuple[DriftWriter | None, float | None]:
    """The drift file's writer and the frequency it holds (ppb), if one is configured."""
    if not config.driftfile:
        return None, None
    drift = DriftWriter(config.driftfile)
    ppm, warning = read_drift(config.driftfile)
    if warning:
        log.warning("%s", warning)
    initial_ppb: float | None = None
    if ppm is not None:
        initial_ppb = ppm * 1000.0
        log.info("drift file %s: frequency %+.3f ppm", config.driftfile, ppm)
    drift.loaded(ppm)
    return drift, initial_ppb


def check_clock(
    config: Config, clock: Clock, allow_panic_step: bool
) -> tuple[LastGood | None, bool]:
    """The clock against the last time it was known good (``DRIFT.lastgood``): a clock
    that disagrees stops the start (unless ``-g``); a recent, agreeing one is vouched for,
    so a local clock fallback may take over at once. Returns (the saver, vouched)."""
    if not config.driftfile:
        return None, False
    path = lastgood_path(config.driftfile)
    lastgood_ns, warning = read_lastgood(path)
    if warning:
        log.warning("%s", warning)
    now = clock.now_ns()
    verdict = judge_clock(now, lastgood_ns, panic_ns=int(config.tinker.panic * NS_PER_S))
    if verdict.problem is not None and lastgood_ns is not None:
        days = abs(verdict.delta_ns) / (86400 * NS_PER_S)
        what = (
            f"{days:.1f} days before the last time it was known good ({describe_time(lastgood_ns)})"
            if verdict.problem == "behind"
            else f"{days:.0f} days after the last time it was known good "
            f"({describe_time(lastgood_ns)})"
        )
        message = (
            f"the clock reads {describe_time(now)}, {what}, as saved in {path}; refusing "
            "to start, so that this clock is not served to clients as good time. If the "
            "clock is right, start once with -g (ntpd's 'accept a large first correction') "
            f"or remove {path}; else set the clock (e.g. ntpy sync SERVER) first"
        )
        if not allow_panic_step:
            raise StartupError(message)
        log.warning("-g: starting anyway: %s", message.split("; refusing")[0])
    elif verdict.vouched:
        log.info(
            "clock agrees with the last-good time %s (%s): a local clock fallback may serve",
            describe_time(lastgood_ns or 0),
            path,
        )
    return LastGood(path), verdict.vouched


def build_engine(
    config: Config,
    *,
    precision: int,
    clock_name: str,
    initial_ppb: float | None,
    allow_panic_step: bool,
    clock_vouched: bool = False,
) -> SyncEngine:
    return SyncEngine(
        sync_options(
            config,
            precision=precision,
            clock_name=clock_name,
            local=local_reference(config),
            initial_frequency_ppb=initial_ppb,
            allow_panic_step=allow_panic_step,
            clock_vouched=clock_vouched,
        ),
        random64,
    )


# --- what the responder answers with ----------------------------------------------------------


def start_access(config: Config) -> AccessControl:
    """``build_access`` at start-up: a rule that does not compile stops the start."""
    try:
        access = build_access(config)
    except AccessError as exc:
        raise StartupError(f"restrict rules: {exc}") from exc
    for name in access.rules.unresolved:
        log.warning("restrict %s: host not resolved; the rule does not apply", name)
    return access


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


def build_responder(
    config: Config, precision: int, access: AccessControl, limiter: RateLimiter
) -> Responder:
    """The request handler, unsynchronized until the engine publishes a state."""
    return Responder(
        unsynchronized(precision),
        load_mac_keys(config),
        access=access,
        limiter=limiter,
        kod_min_poll=limiter.config.average_log2,
    )


def set_limiter(responder: Responder, limiter: RateLimiter) -> None:
    """Make ``limiter`` the responder's (a reload with new rate limits)."""
    responder.limiter = limiter
    responder.kod_min_poll = limiter.config.average_log2


def build_mode6(
    status: Callable[[], object],
    clock: Clock,
    flags: Callable[[str, int | None], frozenset[str]],
) -> ControlHandler:
    """The mode 6 (ntpq) handler; worker processes forward their requests to it too.
    ``flags`` looks up a client's restrict flags in the rules current at the time (a
    reload replaces them)."""
    from ntpy.core.querylimit import QueryBudget
    from ntpy.daemon.ntpq import NtpqHandler

    return NtpqHandler(status, clock.now_ns, budget=QueryBudget(), flags=flags)


# --- sockets ----------------------------------------------------------------------------------


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


def open_server(
    server: NtpServer,
    loop: Loop,
    required: Sequence[ListenAddress],
    optional: Sequence[ListenAddress],
    activated: Activated | None = None,
) -> None:
    """One process: bind every address (or take systemd's socket for it) and answer from
    ``loop``."""
    try:
        server.open(required, optional=optional, activated=activated)
    except ListenError as exc:
        server.close()
        raise StartupError(str(exc)) from exc
    if not server.endpoints:
        raise StartupError("no address could be opened for listening")
    server.attach(loop)


def open_pool(
    required: Sequence[ListenAddress],
    optional: Sequence[ListenAddress],
    workers: int,
    *,
    clock: Clock,
    responder: Responder,
    limiter: RateLimiter,
    access: AccessControl,
    control: Callable[[], ControlHandler | None],
    loop: Loop,
    precision: int,
    selector: str,
) -> WorkerPool:
    """N processes: bind every address once per worker (SO_REUSEPORT) and set up the pool;
    its ``start()`` forks them, ``release()`` lets them answer. The main then publishes
    clock and state changes to them and answers no NTP itself."""
    try:
        groups = open_groups(required, optional, workers, limiter.config.ipv6_prefix)
    except ListenError as exc:
        raise StartupError(str(exc)) from exc
    if not groups:
        raise StartupError("no address could be opened for listening")
    return WorkerPool(
        len(groups[0].endpoints),
        groups,
        WorkerPool.publish(clock, responder.state),
        responder=responder,
        limiter=limiter,
        access_update=access.update_sources,
        control=control,
        loop=loop,
        clock_name=clock.name,
        precision=precision,
        selector=selector,
    )


def open_control(
    option: str | None, loop: Loop, commands: Mapping[str, Callable[[], object]]
) -> ControlServer | None:
    """The control socket (``option``: a path, None for the default, "none" for none); one
    that cannot be opened is a warning, not a failed start."""
    if option == "none":
        return None
    try:
        control = ControlServer(option or default_socket_path(), loop, dict(commands))
        control.start()
    except (OSError, ControlError) as exc:
        log.warning("no control socket: %s", exc)
        return None
    return control


# --- monitoring -------------------------------------------------------------------------------


def open_stats(config: Config, clock: Clock, recorders: Recorders) -> StatsFiles | None:
    """The statistics files, announced and recording (start-up and reload)."""
    stats = StatsFiles.from_config(config)
    if stats is not None:
        stats.announce(clock.now_ns())
        recorders.append(stats.record)
    return stats


def close_stats(stats: StatsFiles | None, recorders: Recorders) -> None:
    if stats is not None:
        if stats.record in recorders:
            recorders.remove(stats.record)
        stats.close()


def open_web(
    config: Config, loop: Loop, view: StatusView, recorders: Recorders
) -> WebService | None:
    """The status page (``webstatus``) and ``/metrics`` (``metrics``), if configured.

    A configured endpoint that cannot be bound stops the start: the admin asked for it.
    """
    if config.webstatus is None and config.metrics is None:
        return None
    web = WebService(loop, view, webstatus=config.webstatus, metrics=config.metrics)
    try:
        web.start()
    except OSError as exc:
        raise StartupError(str(exc)) from exc
    if web.history is not None:
        recorders.append(web.history.record)
        loop.call_every(web.history.interval_ns, web.sample)
    return web
