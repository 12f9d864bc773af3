"""One worker process of ``workers N``: serve NTP from the main's published clock and state.

The main process keeps everything that has state worth keeping in one place -- the sync
engine, the control socket, mode 6, stats, monitoring -- and answers no client itself. Each
worker owns one socket per listen address (``daemon/reuseport.py``) and serves from the
main's published clock mapping and system state (``daemon/shared.py``); it talks to the
main only in the typed messages of ``daemon/ipc.py``.

Lifecycle. Workers die with the main (PR_SET_PDEATHSIG, and EOF on their channel), ignore
SIGINT (a terminal's ^C goes to the whole group; the main then stops them in order), exit
on SIGTERM after reporting their final counters.

Limits, known and accepted: a batch a worker is in the middle of when the main steps the
clock finishes with the previous mapping (the check is once per batch, so t2 and t3 of one
reply never straddle the step); counters a worker had not reported yet (at most a second's
worth) die with it if it is killed; a worker *restarted* while the daemon runs inherits the
main's other descriptors (control socket, upstream sockets, stats files) and ignores them.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ntpy.core.access import AccessError
from ntpy.core.ntscookie import CookieKeys, CookieKeysError
from ntpy.core.ntsserve import NtsServing
from ntpy.core.ratelimit import RateLimiter
from ntpy.core.server import Reason, Responder
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon import ipc
from ntpy.daemon.loop import Loop
from ntpy.daemon.policy import build_access, build_limiter
from ntpy.daemon.server import NtpServer
from ntpy.daemon.shared import SharedClock, SharedState
from ntpy.daemon.udp import Endpoint
from ntpy.daemon.xdp_limit import KernelLimiter

log = logging.getLogger("ntpy.workers")

PR_SET_PDEATHSIG = 1
BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
"""Blocked around the fork, so no handler of the main runs in a new worker."""
COUNTER_PUSH_NS = 1 * NS
"""How often a worker reports its counters unasked (the main asks when it needs them
fresh; these pushes bound what is lost if a worker dies)."""
FINAL_SEND_TIMEOUT_S = 1.0


def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends ``signum`` when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class WorkerLoop(Loop):
    """The worker's loop: before every reader callback, ``before(fileobj)`` runs.

    ``NtpServer.attach`` registers one reader per endpoint; wrapping them here gives the
    worker its once-per-batch hook (refresh the shared clock and state, note which
    endpoint a mode 6 request came in on) without reaching into the server.
    """

    def __init__(self, selector: str, before: Callable[[Any], None]) -> None:
        super().__init__(selector)
        self._before = before

    def add_reader(self, fileobj: Any, callback: Callable[[], None]) -> None:
        before = self._before

        def run() -> None:
            before(fileobj)
            callback()

        super().add_reader(fileobj, run)


@dataclass
class WorkerSetup:
    """Everything a worker needs, prepared by the main before it forks."""

    index: int
    count: int
    endpoints: list[Endpoint]
    channel: socket.socket
    shared: SharedState
    responder: Responder
    limiter: RateLimiter
    access_update: Callable[[list[str]], None]
    clock_name: str
    precision: int
    selector: str
    parent_pid: int
    serve_now: bool
    """False: wait for the main's ``Serve`` message (sent once its start-up is complete, so
    no client ever sees the state from before the sync engine started)."""
    nts_ring: bytes | None = None
    """With ``nts enable``: the cookie key ring file's bytes (updates come as
    ``CookieKeysUpdate``)."""
    confine: Callable[[], None] | None = None
    """``-F``: load the system-call filter, called once the worker's start-up is over."""
    kernel_buckets: int | None = None
    """``fastpath xdp`` running when this worker was forked (a restart): the descriptor of
    the kernel's per-client map, inherited (the first workers, forked before the program
    loads, get theirs as a ``KernelBuckets`` message)."""


class Worker:
    """The serving loop of one worker process."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.index = setup.index
        self.channel = setup.channel
        self.clock = SharedClock(setup.shared, setup.clock_name, setup.precision)
        self.responder = setup.responder
        if self.clock.state is not None:
            self.responder.set_state(self.clock.state)
        self.limiter = setup.limiter
        self.loop = WorkerLoop(setup.selector, self._before_batch)
        self.server = NtpServer(self.clock, self.responder)
        self.server.endpoints = list(setup.endpoints)
        self.server.control = self._forward_mode6
        if self.responder.broadcast_client:
            self.server.broadcast = self._forward_broadcast
        self._by_fd = {ep.sock.fileno(): i for i, ep in enumerate(setup.endpoints)}
        self._current = 0
        self._ids = itertools.count(1)
        self._forwarded = 0
        self._dropped_mark = 0
        self._pushed: ipc.Counters | None = None
        self._serving = False
        self.nts: NtsServing | None = None
        if setup.nts_ring is not None:
            self.install_cookie_keys(setup.nts_ring)
        self.kernel: KernelLimiter | None = None
        """With ``fastpath xdp``: the limiter the responder asks, which reads the kernel's
        buckets (the worker's own ``limiter`` stays the table it wraps)."""
        if setup.kernel_buckets is not None:
            self.use_kernel_buckets(setup.kernel_buckets)

    # -- per batch -------------------------------------------------------------------

    def _before_batch(self, fileobj: Any) -> None:
        state = self.clock.refresh()
        if state is not None:
            self.responder.set_state(state)
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        ep = self._by_fd.get(fd)
        if ep is not None:
            self._current = ep
            self._settle_forwarded()

    def _forward_mode6(self, data: bytes, peer: Any) -> list[bytes]:
        """``NtpServer.control`` in a worker: hand the request to the main, answer later.

        The server counts the empty answer as ``mode6_dropped``; ``_settle_forwarded``
        takes that back, and the main's reply decides the real counter.
        """
        counters = self.server.counters
        if not self._forwarded:
            self._dropped_mark = counters["mode6_dropped"]
        msg = ipc.Mode6Request(next(self._ids), self._current, tuple(peer), data)
        if ipc.send(self.channel, msg):
            self._forwarded += 1
        else:
            counters["drop_mode6_backlog"] += 1
        return []

    def _forward_broadcast(self, data: bytes, host: str, rx_ns: int, nopeer: bool) -> None:
        """``NtpServer.broadcast`` in a worker: the main's sync engine takes the packet."""
        if not ipc.send(self.channel, ipc.BroadcastPacket(host, rx_ns, nopeer, data)):
            self.server.counters["drop_broadcast_backlog"] += 1

    def _settle_forwarded(self) -> None:
        if not self._forwarded:
            return
        counters = self.server.counters
        excess = min(self._forwarded, counters["mode6_dropped"] - self._dropped_mark)
        if excess > 0:
            counters["mode6_dropped"] -= excess
        if counters["mode6_dropped"] <= 0:
            del counters["mode6_dropped"]
        self._forwarded = 0

    # -- channel -----------------------------------------------------------------------

    def _on_channel(self) -> None:
        for _ in range(64):
            fds: list[int] = []
            try:
                raw, fds = ipc.recv(self.channel)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                raw = b""
            if not raw:  # the main is gone: so are we
                log.info("worker %d: main process gone, exiting", self.index)
                self.loop.stop()
                return
            try:
                msg = ipc.decode(raw, fds)
            except ipc.MessageError as exc:
                log.error("worker %d: bad message from the main: %s", self.index, exc)
                msg = None
            if not isinstance(msg, ipc.KernelBuckets):
                for fd in fds:  # nothing else carries one
                    os.close(fd)
            if msg is None:
                continue
            try:
                self.handle(msg)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("worker %d: bad message from the main: %s", self.index, exc)

    def handle(self, msg: ipc.Message) -> None:
        """Carry out one message from the main."""
        match msg:
            case ipc.CountersQuery(token):
                now = self.counters()
                ipc.send(self.channel, ipc.CountersReply(token, now.server, now.limiter))
            case ipc.ClientsQuery(token, limit):
                rows = self.clients(limit)
                entries = self.limiter.config.max_clients
                ipc.send(self.channel, ipc.ClientsReply(token, rows, entries))
            case ipc.Mode6Reply():
                self._mode6_reply(msg)
            case ipc.Sources(addresses):
                self.setup.access_update(list(addresses))
            case ipc.Reload(path):
                self._reload(path)
            case ipc.ReopenLogs():
                for handler in logging.getLogger().handlers:
                    reopen = getattr(handler, "reopen", None)
                    if callable(reopen):
                        reopen()
            case ipc.Serve():
                self._serve()
            case ipc.CookieKeysUpdate(token, ring):
                current = self.install_cookie_keys(ring)
                ipc.send(self.channel, ipc.CookieKeysAck(token, current))
            case ipc.KernelBuckets(fd):
                self.use_kernel_buckets(fd)
            case _:
                log.warning("worker %d: unexpected message %s", self.index, type(msg).__name__)

    def install_cookie_keys(self, ring_bytes: bytes) -> int:
        """Serve NTS with the main's cookie key ring; the current key's id, or -1 if the
        bytes do not parse (the ring held stays).

        This process's own ``NtsServing`` (not the one inherited from the main): its nonces
        and fresh cookies come from ``os.urandom``, the kernel's generator, so no random
        state is shared across the fork; and its cookie count is this worker's."""
        try:
            ring = CookieKeys.from_bytes(ring_bytes, rotate_ns=0)
        except CookieKeysError as exc:
            log.error("worker %d: NTS cookie keys not installed: %s", self.index, exc)
            return -1
        if self.nts is None:
            self.nts = NtsServing(ring, os.urandom)
            self.responder.nts = self.nts
        else:
            self.nts.ring = ring
        current = ring.current
        return current.key_id if current is not None else -1

    def use_kernel_buckets(self, fd: int) -> None:
        """Decide ``limited`` clients with the kernel's buckets in map ``fd`` from now on
        (the kernel limits them for every process; see ``daemon/xdp_limit.py``)."""
        old = self.kernel
        if old is not None and old.fd not in (fd, self.setup.kernel_buckets):
            os.close(old.fd)  # a later copy replaces ours (not the inherited one)
        self.kernel = KernelLimiter(self.limiter, fd)
        if old is not None:
            self.kernel.kernel_over = old.kernel_over
        self.responder.limiter = self.kernel

    def _reload(self, path: str) -> None:
        """The main reloaded the config and its access or rate-limit lines changed: rebuild
        this worker's from the same file (the main has checked that it parses)."""
        from ntpy.config import ConfigError, load

        try:
            config = load(path).config
            access = build_access(config)
        except (ConfigError, OSError, AccessError) as exc:
            log.error(
                "worker %d: reload of %s failed, keeping the old rules: %s", self.index, path, exc
            )
            return
        # The main sends the upstream addresses for `restrict source` right after this.
        self.responder.access = access
        self.setup.access_update = access.update_sources
        limiter = build_limiter(config, self.setup.count)
        if limiter.config != self.limiter.config:
            self.limiter = limiter
            self.responder.limiter = limiter
            self.responder.kod_min_poll = limiter.config.average_log2
            if self.kernel is not None:  # the main cleared the kernel's buckets too
                self.use_kernel_buckets(self.kernel.fd)

    def _mode6_reply(self, msg: ipc.Mode6Reply) -> None:
        self._settle_forwarded()
        counters = self.server.counters
        if msg.status == "none":
            counters[Reason.CONTROL] += 1
            return
        if msg.status == "error":
            counters["mode6_error"] += 1
            return
        counters["mode6_answered" if msg.replies else "mode6_dropped"] += 1
        ep = self.server.endpoints[msg.ep]
        for reply in msg.replies:
            try:
                ep.sock.sendto(reply, msg.peer)
            except OSError as exc:
                counters["drop_send_failed"] += 1
                log.debug("mode 6 reply to %s failed: %s", msg.peer, exc)

    def counters(self, *, final: bool = False) -> ipc.Counters:
        self._settle_forwarded()
        server = {str(k): v for k, v in self.server.counters.items() if v}
        if self.kernel is not None and self.kernel.kernel_over:
            server["xdp_kernel_over_decided"] = self.kernel.kernel_over
        if self.nts is not None:
            server.update({k: v for k, v in self.nts.counters().items() if v})
        return ipc.Counters(
            server,
            dict(self.limiter.counters),
            final,
        )

    def clients(self, limit: int) -> tuple[ipc.ClientRow, ...]:
        now = self.clock.now_ns()
        return tuple(
            ipc.ClientRow(
                address=c.address,
                requests=c.requests,
                drops=c.drops,
                kods=c.kods,
                avg_interval_s=c.avg_interval_s,
                last_seen_ns=c.last_seen_ns,
                last_seen_ago_s=max(0, (now - c.last_seen_ns) // NS),
                worker=self.index,
            )
            for c in self.limiter.clients(limit)
        )

    def _serve(self) -> None:
        if not self._serving:
            self._serving = True
            self.server.attach(self.loop)

    def _push_counters(self) -> None:
        counters = self.counters()
        if counters != self._pushed:  # an idle worker stays quiet
            ipc.send(self.channel, counters)
            self._pushed = counters

    # -- run ---------------------------------------------------------------------------

    def run(self, signal_mask: Iterable[int] = ()) -> int:
        """Serve until SIGTERM or the main's exit; ``signal_mask`` is restored once the
        SIGTERM handler is in place (the fork happened with signals blocked)."""
        self.channel.setblocking(False)
        self.loop.add_reader(self.channel, self._on_channel)
        if self.setup.serve_now:
            self._serve()
        self.loop.add_signal_handler(signal.SIGTERM, lambda s: self.loop.stop())
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        self.loop.call_every(COUNTER_PUSH_NS, self._push_counters)
        log.debug("worker %d (pid %d) serving", self.index, os.getpid())
        if self.setup.confine is not None:
            self.setup.confine()
        try:
            self.loop.run()
        finally:
            self.channel.settimeout(FINAL_SEND_TIMEOUT_S)
            with contextlib.suppress(OSError):
                self.channel.send(ipc.encode(self.counters(final=True)))
        return 0


def worker_process(setup: WorkerSetup, old_mask: Iterable[int]) -> int:
    """Body of a forked worker (signals still blocked); returns the exit status."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != setup.parent_pid:  # the main died before prctl took effect
        return 1
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return Worker(setup).run(old_mask)
