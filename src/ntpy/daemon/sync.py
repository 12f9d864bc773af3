"""The synchronization shell: carries the engine's actions out on real sockets and the Clock.

Each upstream gets its own connected UDP socket on a random local port (as chrony does by
default): a reply can only come from the address we asked, an off-path attacker must guess
the port as well as the 64-bit cookie, and routing a reply to its source is the socket.
Receive timestamps come from the kernel (SO_TIMESTAMPNS) and, like every time handed to the
engine, are "cooked": mapped through the Clock plus the slew still to run.

Name resolution (``server name``, ``pool name``) is blocking getaddrinfo, done at start and
when the engine asks for a replacement pool member; a name that does not resolve is retried
rather than failing the daemon, because DNS is often not up when ntpd starts: after a minute,
then twice as long each time up to an hour, logged on the first failure and when the error
changes or the name resolves (not on every retry). A source whose socket cannot be opened
stays a source, unreachable, with the error in its status; the socket is retried at each poll.
An ``xleave`` source's socket also asks the kernel for the TX timestamp of each request
(``daemon/client_tx.py``): read before the reply, it becomes the request's T1.
"""

from __future__ import annotations

import functools
import logging
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from ntpy.clock.base import Clock, TimedClock
from ntpy.clock.errors import ClockError
from ntpy.clock.system import SystemClock
from ntpy.config import ServerSpec
from ntpy.core.actions import (
    Action,
    LogEvent,
    Panic,
    Record,
    ReplaceSource,
    SendRequest,
    SlewClock,
    cooked_now,
)
from ntpy.core.auth import MacKey
from ntpy.core.engine import SourceConfig, SyncEngine
from ntpy.core.exchange import NO_AUTH, ClientAuth
from ntpy.core.runner import ClockAction, carry_out
from ntpy.core.symkey import SymmetricKeyAuth
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon.client_socket import open_client_socket, recv_reply
from ntpy.daemon.client_tx import ClientTxStamps
from ntpy.daemon.kernelsync import kernel_synchronised
from ntpy.daemon.loop import Loop
from ntpy.daemon.ntssources import NtsClients, NtsPeer
from ntpy.daemon.peering import peer_bind, refids, sock_refids, specific

log = logging.getLogger("ntpy.sync")

RESOLVE_RETRY_NS = 60 * NS
RESOLVE_RETRY_MAX_NS = 3600 * NS
SLEW_LOG_THRESHOLD_NS = 10_000_000
"""Slews of 10 ms or more are logged at info: beyond normal network noise, below a step."""
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass
class Upstream:
    """One resolved source and its socket."""

    source_id: int
    spec: ServerSpec
    address: tuple[object, ...]
    sock: socket.socket | None
    """None while the socket cannot be opened (``error`` says why)."""
    error: str | None = None
    tx: ClientTxStamps | None = None
    """``xleave``: the kernel TX timestamps of its requests (None: not asked, or refused)."""


class SyncShell:
    """Owns the engine, the per-source sockets and the engine's timer."""

    def __init__(
        self,
        engine: SyncEngine,
        clock: Clock,
        loop: Loop,
        on_state: Callable[[SystemState], None],
        on_panic: Callable[[str], None],
        keys: Mapping[int, MacKey] | None = None,
    ) -> None:
        self.engine = engine
        self.keys: Mapping[int, MacKey] = keys or {}
        """The trusted keys (``keys`` + ``trustedkey``) that ``server HOST key N`` signs with."""
        self.clock = clock
        self.loop = loop
        self.on_state = on_state
        self.on_panic = on_panic
        self.upstreams: dict[int, Upstream] = {}
        self.unresolved: list[ServerSpec] = []
        self.pools: dict[str, ServerSpec] = {}
        self.rejected: dict[str, set[tuple[object, ...]]] = {}
        """Pool members dropped (unreachable, falseticker, KoD), per pool name."""
        self.on_sources: Callable[[list[str]], None] | None = None
        """Told the upstream addresses whenever they change (for ``restrict source``)."""
        self.recorders: list[Callable[[Record], None]] = []
        """Told every LoopStats/PeerStats record (stats files, metrics history)."""
        self._timer_gen = 0
        self._timer_due: int | None = None
        self._clock_timer_gen = 0
        self._clock_timer_due: int | None = None
        self._adjusted = False
        self._kernel_told: tuple[bool, int] | None = None
        self.rtcsync = True
        """``rtcsync``: clear STA_UNSYNC while synchronized (``daemon/kernelsync.py``)."""
        self.resolve_errors: dict[str, str] = {}
        """The last resolver error per name: logged again only when it changes."""
        self.retry_delay_ns = RESOLVE_RETRY_NS
        self._retry_gen = 0
        self._retry_armed = False
        self.tx_counters: Counter[str] = Counter()
        """Kernel TX timestamps of the ``xleave`` sources' requests (``client_tx``)."""
        self._tx_warned = False
        self.listen_hosts: list[str] = []  # where we serve (specific addresses only)
        self.nts = NtsClients(engine, loop, self._move, self.reschedule)
        """The ``nts`` sources' key exchanges and saved cookies (``configure`` it first)."""

    # ----------------------------------------------------------------- sources

    def add_configured(self, servers: tuple[ServerSpec, ...]) -> None:
        now = time.monotonic_ns()
        for spec in servers:
            if self._auth(spec) is None:
                continue  # its key is not loaded: logged, never polled unauthenticated
            if spec.kind == "pool":
                self.pools[spec.address] = spec
                self._fill_pool(spec, now)
            elif not self._add_resolved(spec, now):
                self.unresolved.append(spec)
        if self.unresolved:
            self._schedule_retry(reset=True)

    def apply_servers(self, servers: tuple[ServerSpec, ...]) -> tuple[int, int]:
        """Bring the sources in line with a reloaded config: drop the sources whose line is
        gone (or changed), add the new lines; untouched lines keep their statistics.
        Returns (lines added, lines removed)."""
        wanted = set(servers)
        current = {u.spec for u in self.upstreams.values()} | set(self.unresolved)
        current |= set(self.pools.values())
        removed = current - wanted
        added = tuple(s for s in servers if s not in current)
        for sid, up in list(self.upstreams.items()):
            if up.spec in removed:
                log.info("source %s (%s) removed by reload", up.spec.address, up.address[0])
                self._remove(sid)
        self.unresolved = [s for s in self.unresolved if s not in removed]
        for spec in removed:
            if spec.kind == "pool":
                self.pools.pop(spec.address, None)
                self.rejected.pop(spec.address, None)
        if added:
            self.add_configured(added)
        self.reschedule()
        return len(added), len(removed)

    def _resolve(self, spec: ServerSpec) -> list[tuple[object, ...]]:
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(spec.family or 0, 0)
        try:
            infos = socket.getaddrinfo(spec.address, spec.port, family, socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            error = str(exc)
            if self.resolve_errors.get(spec.address) != error:
                log.warning(
                    "cannot resolve %s: %s; retrying with back-off up to %d min "
                    "(logged again only if this changes)",
                    spec.address,
                    error,
                    RESOLVE_RETRY_MAX_NS // NS // 60,
                )
            else:
                log.debug("still cannot resolve %s: %s", spec.address, error)
            self.resolve_errors[spec.address] = error
            return []
        if self.resolve_errors.pop(spec.address, None) is not None:
            log.info("%s resolves again", spec.address)
        seen: list[tuple[object, ...]] = []
        for info in infos:
            addr = tuple(info[4])
            if addr not in seen:
                seen.append(addr)
        return seen

    def _open(self, addr: tuple[object, ...], bind: str | None = None) -> socket.socket:
        fam = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
        return open_client_socket(addr, fam, blocking=False, bind=bind)

    def _auth(self, spec: ServerSpec) -> ClientAuth | None:
        """The source's authenticator, or None if its key is not loaded. The config checks
        make that impossible at start; a reload that adds a key needs a restart to load it,
        and a source must never fall back to unauthenticated requests."""
        if spec.key is None:
            return NO_AUTH
        key = self.keys.get(spec.key)
        if key is None:
            log.error(
                "source %s: key %d is not loaded (keys and trustedkey changes need a "
                "restart of ntpy); the source is not used until then",
                spec.address,
                spec.key,
            )
            return None
        return SymmetricKeyAuth(key)

    def _add(self, spec: ServerSpec, addr: tuple[object, ...], now_mono: int) -> None:
        auth = self._auth(spec)
        if auth is None:  # add_configured let no such spec in
            return
        peer: NtsPeer | None = None
        if spec.nts:
            peer = self.nts.new_peer(spec, addr)
            auth = peer.auth
        cfg = SourceConfig(
            name=spec.address,
            address=addr,
            kind=spec.kind,
            iburst=spec.iburst,
            burst=spec.burst,
            prefer=spec.prefer,
            noselect=spec.noselect,
            minpoll=spec.minpoll,
            maxpoll=spec.maxpoll,
            version=spec.version,
            pool=spec.address if spec.kind == "pool" else None,
            key=spec.key,
            nts=spec.nts,
            xleave=spec.xleave,
        )
        sid = self.engine.add_source(cfg, now_mono, auth)
        if peer is not None:
            moved = self.nts.register(sid, peer)
            if moved is not None:  # a saved session names another NTP server or port
                addr = moved
                src = self.engine.sources[sid]
                src.config = replace(src.config, address=moved)
        up = Upstream(sid, spec, addr, None)
        self.upstreams[sid] = up
        self._sources_changed()
        log.info("source %s (%s port %s) added", spec.address, addr[0], addr[1])
        self._connect(up)

    def _connect(self, up: Upstream) -> bool:
        """Open the source's socket; on failure keep the source (reach 0, error in its
        status) so that it does not vanish from ``peers``/ntpq. Logged on change only."""
        try:
            sock = self._open(up.address, peer_bind(self.listen_hosts, up.spec.kind, up.address))
        except OSError as exc:
            error = f"cannot open a socket: {exc.strerror or exc}"
            if error != up.error:
                log.warning(
                    "source %s (%s): %s; retrying at each poll",
                    up.spec.address,
                    up.address[0],
                    error,
                )
            up.error = error
            src = self.engine.sources.get(up.source_id)
            if src is not None:
                src.error = error
            return False
        if up.error is not None:
            log.info("source %s (%s): socket opened", up.spec.address, up.address[0])
        up.sock, up.error = sock, None
        up.tx = self._tx_stamps(up) if up.spec.xleave else None
        src = self.engine.sources.get(up.source_id)
        if src is not None:
            src.error = None
        self.loop.add_reader(sock, functools.partial(self._on_readable, up.source_id))
        self.engine.local_refids |= sock_refids(sock)  # our address toward it: loop check
        return True

    def _tx_stamps(self, up: Upstream) -> ClientTxStamps | None:
        """Kernel TX timestamps for an ``xleave`` source's socket; without them (an old
        kernel) interleaved mode still works, with T1 read before the send."""
        assert up.sock is not None
        try:
            return ClientTxStamps(up.sock, self.tx_counters)
        except OSError as exc:
            if not self._tx_warned:
                self._tx_warned = True
                log.warning(
                    "source %s: kernel TX timestamps unavailable (%s); interleaved mode "
                    "uses the clock read before each send",
                    up.spec.address,
                    exc.strerror or exc,
                )
            return None

    def set_listen_addresses(self, hosts: Iterable[str]) -> None:
        """Where we serve: a peer's packets leave from there (``peer_bind``); loop check."""
        self.listen_hosts = specific(hosts)
        self.engine.local_refids |= refids(self.listen_hosts)

    def _add_resolved(self, spec: ServerSpec, now_mono: int) -> bool:
        addrs = self._resolve(spec)
        if not addrs:
            return False
        self._add(spec, addrs[0], now_mono)
        return True

    def _fill_pool(self, spec: ServerSpec, now_mono: int) -> int:
        """Add pool members up to ``maxsources``; returns how many were added."""
        in_use = {u.address for u in self.upstreams.values()}
        in_use |= self.rejected.get(spec.address, set())
        have = sum(
            1
            for u in self.upstreams.values()
            if u.spec.kind == "pool" and u.spec.address == spec.address
        )
        added = 0
        for addr in self._resolve(spec):
            if have + added >= spec.maxsources:
                break
            if addr in in_use:
                continue
            self._add(spec, addr, now_mono)
            added += 1
        if have + added == 0 and spec not in self.unresolved:
            self.unresolved.append(spec)
        return added

    def _schedule_retry(self, *, reset: bool = False) -> None:
        """One retry timer for every unresolved name: a minute after a new name fails, then
        doubling up to an hour while they keep failing (DNS down costs a line, not a flood)."""
        if reset:
            self.retry_delay_ns = RESOLVE_RETRY_NS
        elif self._retry_armed:
            return
        self._retry_gen += 1
        self._retry_armed = True
        gen = self._retry_gen
        self.loop.call_later(self.retry_delay_ns, lambda: self._on_retry_timer(gen))

    def _on_retry_timer(self, gen: int) -> None:
        if gen == self._retry_gen:  # else superseded by a newer schedule
            self._retry_armed = False
            self._retry_unresolved()

    def _retry_unresolved(self) -> None:
        now = time.monotonic_ns()
        pending, self.unresolved = self.unresolved, []
        for spec in pending:
            if spec.kind == "pool":
                self._fill_pool(spec, now)
            elif not self._add_resolved(spec, now):
                self.unresolved.append(spec)
        if self.unresolved:
            self.retry_delay_ns = min(2 * self.retry_delay_ns, RESOLVE_RETRY_MAX_NS)
            self._schedule_retry()
        self.reschedule()

    def _move(self, source_id: int, addr: tuple[object, ...]) -> None:
        """A key exchange named another NTP server or port: talk to it from now on."""
        up = self.upstreams.get(source_id)
        if up is None:
            return
        if up.sock is not None:
            self.loop.remove_reader(up.sock)
            up.sock.close()
            up.sock, up.tx = None, None
        up.address = addr
        self._sources_changed()
        self._connect(up)

    def _remove(self, source_id: int) -> None:
        self.nts.removed(source_id)
        up = self.upstreams.pop(source_id, None)
        self.engine.remove_source(source_id)
        if up is not None:
            if up.sock is not None:
                self.loop.remove_reader(up.sock)
                up.sock.close()
            self._sources_changed()

    def _sources_changed(self) -> None:
        if self.on_sources is not None:
            self.on_sources([str(u.address[0]) for u in self.upstreams.values()])

    # ----------------------------------------------------------------- engine I/O

    def start(self) -> None:
        self.run_actions(self.engine.start(time.monotonic_ns(), cooked_now(self.clock)))
        self.reschedule()

    def _on_readable(self, source_id: int) -> None:
        up = self.upstreams.get(source_id)
        if up is None or up.sock is None:
            return
        if up.tx is not None:  # before the reply: its T1 is the kernel's
            clock = self.clock
            for cookie, stamp in up.tx.collect():
                t1 = clock.from_realtime_ns(stamp) + clock.remaining_slew_ns()
                self.engine.tx_stamped(source_id, cookie, t1)
        for _ in range(8):
            try:
                data, rx = recv_reply(up.sock)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP port unreachable and friends: just no sample
                log.debug("source %s: %s", up.spec.address, exc)
                break
            t4 = (
                self.clock.from_realtime_ns(rx) + self.clock.remaining_slew_ns()
                if rx is not None
                else cooked_now(self.clock)
            )
            self.run_actions(self.engine.handle_packet(source_id, data, t4, time.monotonic_ns()))
        self.reschedule()

    def _on_timer(self, gen: int) -> None:
        if gen != self._timer_gen:
            return  # superseded by an earlier deadline
        self._timer_due = None
        self.run_actions(self.engine.handle_timer(time.monotonic_ns(), cooked_now(self.clock)))
        self.reschedule()

    def reschedule(self) -> None:
        self._arm_clock_timer()
        self.nts.tick()  # key exchanges for the NTS sources that need one
        due = self.engine.next_wakeup()
        if due is None or (self._timer_due is not None and self._timer_due <= due):
            return
        self._timer_gen += 1
        gen = self._timer_gen
        self._timer_due = due
        self.loop.call_at(due, lambda: self._on_timer(gen))

    def _arm_clock_timer(self) -> None:
        """The system clock ends its slews on its own timer (``TimedClock``): wake it when
        it asks. Monotonic time runs at the kernel clock's rate, so its wait is ours."""
        clock = self.clock
        if not isinstance(clock, TimedClock):
            return
        wait = clock.timer_due_in_ns()
        if wait is None:
            return
        due = time.monotonic_ns() + wait
        if self._clock_timer_due is not None and self._clock_timer_due <= due:
            return
        self._clock_timer_gen += 1
        gen = self._clock_timer_gen
        self._clock_timer_due = due
        self.loop.call_at(due, lambda: self._on_clock_timer(gen, clock))

    def _on_clock_timer(self, gen: int, clock: TimedClock) -> None:
        if gen != self._clock_timer_gen:
            return  # superseded by an earlier deadline
        self._clock_timer_due = None
        try:
            clock.on_timer()
        except Exception:  # a failed adjtimex must not stop time keeping; log it and retry
            log.exception("ending a clock slew failed")
        self._arm_clock_timer()

    def run_actions(self, actions: list[Action]) -> None:
        """Carry the engine's actions out (``core.runner``), then publish the new state
        unless a panic stopped them."""
        self._adjusted = False
        if carry_out(actions, self, self.engine):
            state = self.engine.system_state(cooked_now(self.clock))
            self._tell_kernel(state)
            self.on_state(state)

    def _tell_kernel(self, state: SystemState) -> None:
        """Keep the kernel's STA_UNSYNC, maxerror, esterror and leap bits true (what
        ``adjtimex -p``, ``timedatectl`` and the 11-minute RTC update read): after every
        clock update, and whenever synchronisation or the leap warning changes. The error
        bounds are the root distance (max) and root dispersion (estimate). The leap bits
        are ``daemon/leapkeeper.py``'s: armed on the last day before the leap only."""
        clock = self.clock
        if not isinstance(clock, SystemClock) or not clock.can_adjust():
            return
        told = (state.synchronized, state.leap)
        if not self._adjusted and told == self._kernel_told:
            return
        now = cooked_now(clock)
        try:
            clock.set_sync_status(
                kernel_synchronised(state.synchronized, self.rtcsync),
                state.root_dispersion_at(now),
                state.root_distance_at(now),
            )
        except ClockError as exc:
            log.warning("could not tell the kernel the synchronisation status: %s", exc)
        self._kernel_told = told

    # ----------------------------------------------------------------- effects (core.runner)

    def send_request(self, action: SendRequest) -> int | None:
        up = self.upstreams.get(action.source_id)
        if up is None or (up.sock is None and not self._connect(up)):
            return None  # no socket: the poll counts as unanswered (reach 0)
        assert up.sock is not None
        t1 = cooked_now(self.clock)
        try:
            if up.tx is not None:
                up.tx.send(action.data, time.time_ns())
            else:
                up.sock.send(action.data)
        except OSError as exc:
            log.debug("send to %s failed: %s", up.spec.address, exc)
            return None
        return t1

    def clock_adjusted(self, action: ClockAction) -> None:
        self._adjusted = True
        if isinstance(action, SlewClock):
            self._log_slew(action.offset_ns)

    def log_event(self, event: LogEvent) -> None:
        log.log(LOG_LEVELS.get(event.level, logging.ERROR), "%s", event.message)

    def replace_source(self, action: ReplaceSource) -> None:
        self._replace(action)

    def panic(self, action: Panic) -> None:
        self.on_panic(action.message)

    def record(self, record: Record) -> None:
        for recorder in self.recorders:
            try:
                recorder(record)
            except Exception:  # a broken recorder must not stop time keeping
                log.exception("statistics recorder failed on %s", type(record).__name__)

    def _log_slew(self, offset_ns: int) -> None:
        """Announce a slew large enough for an admin to care (every poll slews a little:
        those go to the debug log). The system clock serves the corrected time at once and
        slews the kernel clock behind it: its total is the kernel's part."""
        kernel_slew = getattr(self.clock, "kernel_slew_ns", None)
        total = kernel_slew() if callable(kernel_slew) else self.clock.remaining_slew_ns()
        level = logging.INFO if abs(offset_ns) >= SLEW_LOG_THRESHOLD_NS else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        rate = getattr(self.clock, "slew_rate_ppm", None)
        took = f", about {abs(total) / (rate * 1000.0) / NS:.1f} s at {rate:g} ppm" if rate else ""
        log.log(
            level,
            "slewing the clock by %+.6f s (%+.6f s in all%s)",
            offset_ns / NS,
            total / NS,
            took,
        )

    def _replace(self, action: ReplaceSource) -> None:
        spec = self.pools.get(action.pool)
        up = self.upstreams.get(action.source_id)
        if up is not None:
            # Never take a dropped member back from the same pool (DNS will offer it again).
            self.rejected.setdefault(action.pool, set()).add(up.address)
        self._remove(action.source_id)
        if spec is None:
            return
        added = self._fill_pool(replace(spec), time.monotonic_ns())
        if not added and spec not in self.unresolved:
            # DNS rotates pool answers: ask again in a minute for a member we do not have.
            self.unresolved.append(spec)
            self._schedule_retry(reset=True)
        log.info(
            "pool %s: dropped a member (%s)%s",
            action.pool,
            action.reason,
            ", added a replacement" if added else ", no other address available yet",
        )

    def close(self) -> None:
        self.nts.close()
        for sid in list(self.upstreams):
            up = self.upstreams.pop(sid)
            if up.sock is not None:
                up.sock.close()


def random64() -> int:
    return secrets.randbits(64)
