"""The main process's side of ``workers N``: fork the workers, watch them, replace the dead.

The pool holds every worker's sockets (``daemon/reuseport.py``) for the life of the daemon,
forks one ``daemon/worker.py`` process per slot, answers the mode 6 requests they forward
with the main's handler, sums their counters and client lists, and tells them about
reloads and upstream changes -- all in the typed messages of ``daemon/ipc.py``. A worker
that dies unexpectedly is logged and replaced (with a growing delay if it keeps dying at
once).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import logging
import os
import select
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ntpy.clock.base import Clock
from ntpy.clock.system import SystemClock
from ntpy.clock.virtual import VirtualClock
from ntpy.config.directives.service import MAX_WORKERS, auto_workers
from ntpy.core.ratelimit import RateLimiter
from ntpy.core.server import Responder
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon import ipc
from ntpy.daemon.loop import Loop
from ntpy.daemon.reuseport import ReuseportGroup
from ntpy.daemon.server import BroadcastSink, ControlHandler
from ntpy.daemon.shared import SharedState
from ntpy.daemon.udp import Endpoint
from ntpy.daemon.worker import BLOCKED_SIGNALS, WorkerSetup, worker_process

log = logging.getLogger("ntpy.workers")


def resolve_workers(configured: int | None, override: int | None, clock: Clock) -> int:
    """Serving processes: ``--workers``, else the config's ``workers``, else one per core.

    Only the system clock (served time is realtime) and the virtual clock (its segment is
    published) can be served from other processes; any other clock gets one process.
    """
    n = override if override is not None else configured
    if n is None:
        n = auto_workers()
    if type(n) is not int or not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"workers must be 1..{MAX_WORKERS}, not {n!r}")
    if n > 1 and not isinstance(clock, VirtualClock | SystemClock):
        log.warning(
            "workers %d: the %s clock cannot be shared with worker processes; "
            "serving from the main process only",
            n,
            clock.name,
        )
        return 1
    return n


QUERY_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0
RESTART_DELAY_S = 0.2
MAX_RESTART_DELAY_S = 30.0
QUICK_DEATH_S = 5.0
"""A worker that dies sooner than this after starting is restarted with a growing delay."""


@dataclass
class WorkerSlot:
    """What the main knows about worker ``index``."""

    index: int
    endpoints: list[Endpoint]
    pid: int = 0
    channel: socket.socket | None = None
    started: float = 0.0
    restart_delay: float = RESTART_DELAY_S
    server: Counter[str] = field(default_factory=Counter)
    limiter: Counter[str] = field(default_factory=Counter)
    final: bool = False


class WorkerPool:
    """The main's side: the sockets, the forked workers, and their reports.

    A new worker inherits ``responder``, ``limiter`` and ``access_update`` (the main
    replaces them on reload) and serves from ``shared`` (see ``publish``); ``control()``
    is the main's mode 6 handler at the time a forwarded request arrives (None: drop it).
    """

    def __init__(
        self,
        count: int,
        groups: list[ReuseportGroup],
        shared: SharedState,
        *,
        responder: Responder,
        limiter: RateLimiter,
        access_update: Callable[[list[str]], None],
        control: Callable[[], ControlHandler | None],
        loop: Loop,
        clock_name: str,
        precision: int,
        selector: str,
    ) -> None:
        if count < 2:
            raise ValueError(f"a worker pool needs 2 or more workers, not {count}")
        self.count = count
        self.groups = groups
        self.shared = shared
        self.responder = responder
        self.limiter = limiter
        self.access_update = access_update
        self.control = control
        self.broadcast_sink: BroadcastSink | None = None
        """Takes the mode 5 packets workers forward (``broadcastclient``)."""
        self.loop = loop
        self.clock_name = clock_name
        self.precision = precision
        self.selector = selector
        self.slots = [WorkerSlot(i, [g.endpoints[i] for g in groups]) for i in range(count)]
        self.retired_server: Counter[str] = Counter()
        self.retired_limiter: Counter[str] = Counter()
        self.restarts = 0
        self.stopping = False
        self.released = False
        self._tokens = itertools.count(1)
        self._replies: dict[tuple[int, int], ipc.Reply] = {}
        self._deferred: list[tuple[WorkerSlot, ipc.Mode6Request]] = []
        self.after_fork: Callable[[], None] | None = None
        """Called first in each new worker (``-u``: drop root, keeping no capability)."""
        self.confine_worker: Callable[[], None] | None = None
        """``-F``: what a worker calls when its start-up is over, just before its loop."""
        self.nts_ring: bytes | None = None
        """With ``nts enable``: the cookie key ring (file bytes) every worker serves with; a
        worker forked (or restarted) later gets it in its ``WorkerSetup``."""
        self.kernel_buckets: int | None = None
        """With ``fastpath xdp``: the kernel's per-client rate-limit map (``share_kernel_
        buckets``); a worker restarted later inherits the descriptor."""

    @staticmethod
    def publish(clock: Clock, state: SystemState) -> SharedState:
        """The shared record the workers serve from, kept current from now on: ``state``
        now (the main publishes each change), and the clock's mapping (a virtual clock's
        segment at every change; the system clock's too: realtime plus the correction its
        kernel slew has yet to make)."""
        shared = SharedState()
        shared.publish_state(state)
        if isinstance(clock, VirtualClock | SystemClock):
            clock.add_segment_listener(shared.publish_segment)
        else:
            shared.publish_realtime()
        return shared

    @property
    def endpoints(self) -> list[Endpoint]:
        """One endpoint per listen address (worker 0's), for the log and for status."""
        return [g.endpoints[0] for g in self.groups]

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid]

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        gc.collect()
        gc.freeze()  # keep the inherited heap shared: no refcount-free GC writes to it
        for slot in self.slots:
            self._spawn(slot)
        log.info("%d workers serving (pids %s)", self.count, ", ".join(str(p) for p in self.pids))

    def _spawn(self, slot: WorkerSlot) -> None:
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        setup = WorkerSetup(
            index=slot.index,
            count=self.count,
            endpoints=slot.endpoints,
            channel=worker_end,
            shared=self.shared,
            responder=self.responder,
            limiter=self.limiter,
            access_update=self.access_update,
            clock_name=self.clock_name,
            precision=self.precision,
            selector=self.selector,
            parent_pid=os.getpid(),
            serve_now=self.released,
            nts_ring=self.nts_ring,
            confine=self.confine_worker,
            kernel_buckets=self.kernel_buckets,
        )
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            main_end.close()
            worker_end.close()
            raise
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                main_end.close()
                self._close_inherited(slot)
                if self.after_fork is not None:
                    self.after_fork()
                code = worker_process(setup, old_mask)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        worker_end.close()
        main_end.setblocking(False)
        slot.pid = pid
        slot.channel = main_end
        slot.started = time.monotonic()
        slot.final = False
        slot.server.clear()
        slot.limiter.clear()
        self.loop.add_reader(main_end, functools.partial(self._on_channel, slot))

    def share_kernel_buckets(self, fd: int) -> None:
        """``fastpath xdp`` started (after the fork): send every worker a copy of the
        kernel's per-client map, so their limiters decide ``limited`` clients with the
        kernel's buckets (``daemon/xdp_limit.py``). A map descriptor keeps the map alive,
        not the program's attachment: that stays with the main's bpf_link alone."""
        self.kernel_buckets = fd
        for slot in self.slots:
            if slot.channel is not None and not ipc.send_fd(slot.channel, ipc.KernelBuckets(fd)):
                log.warning("worker %d: kernel buckets not delivered (channel full)", slot.index)

    def release(self) -> None:
        """Let the workers answer: the main's start-up is complete and its state published.
        Requests that arrived before wait in the sockets' queues."""
        self.released = True
        self.broadcast(ipc.Serve())

    def _close_inherited(self, own: WorkerSlot) -> None:
        """In a new worker: drop what belongs to the main and to the other workers."""
        for slot in self.slots:
            if slot is not own:
                for ep in slot.endpoints:
                    ep.close()
            if slot.channel is not None:
                slot.channel.close()
        with contextlib.suppress(OSError, ValueError):
            self.loop.close()

    def stop(self) -> None:
        """SIGTERM every worker, collect their final counters, reap them (SIGKILL late ones)."""
        self.stopping = True
        live = [s for s in self.slots if s.pid]
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        open_slots = [s for s in live if s.channel is not None]
        while open_slots and time.monotonic() < deadline:
            ready, _, _ = select.select(
                _channels(open_slots), [], [], max(0.0, deadline - time.monotonic())
            )
            for slot in open_slots:
                if slot.channel in ready:
                    self._read(slot, final_only=True)
            open_slots = [s for s in open_slots if s.channel is not None]
        for slot in open_slots:
            log.error("worker %d (pid %d) did not stop in time; killing it", slot.index, slot.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGKILL)
        for slot in live:
            self._reap(slot, block=True)
        for g in self.groups:
            g.close()

    def _reap(self, slot: WorkerSlot, *, block: bool) -> int | None:
        """waitpid the slot's process; returns its wait status, None if still running."""
        if not slot.pid:
            return None
        try:
            pid, status = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already (not by us): nothing to report
            pid, status = slot.pid, 0
        if pid == 0:
            return None
        self._retire(slot)
        return status

    def _retire(self, slot: WorkerSlot) -> None:
        self.retired_server.update(slot.server)
        self.retired_limiter.update(slot.limiter)
        slot.server.clear()
        slot.limiter.clear()
        if slot.channel is not None:
            self._drop_channel(slot)
        slot.pid = 0

    def _drop_channel(self, slot: WorkerSlot) -> None:
        assert slot.channel is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.loop.remove_reader(slot.channel)
        slot.channel.close()
        slot.channel = None

    # -- messages ----------------------------------------------------------------------

    def _on_channel(self, slot: WorkerSlot) -> None:
        self._read(slot)

    def _read(self, slot: WorkerSlot, *, final_only: bool = False, defer: bool = False) -> None:
        for _ in range(64):
            if slot.channel is None:
                return
            try:
                msg = slot.channel.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                msg = b""
            if not msg:
                self._channel_closed(slot)
                return
            try:
                message = ipc.decode(msg)
            except ipc.MessageError as exc:
                log.error("worker %d sent a bad message: %s", slot.index, exc)
                continue
            match message:
                case ipc.Counters():
                    self._take_counters(slot, message.server, message.limiter)
                    slot.final = message.final
                case ipc.CountersReply() | ipc.ClientsReply() | ipc.CookieKeysAck():
                    self._replies[(message.token, slot.index)] = message
                case _ if final_only:
                    continue
                case ipc.Mode6Request() if defer:
                    self._deferred.append((slot, message))
                case _:
                    self._dispatch(slot, message)

    @staticmethod
    def _take_counters(slot: WorkerSlot, server: dict[str, int], limiter: dict[str, int]) -> None:
        slot.server = Counter(server)
        slot.limiter = Counter(limiter)

    def _dispatch(self, slot: WorkerSlot, message: ipc.Message) -> None:
        if isinstance(message, ipc.Mode6Request):
            self._mode6(slot, message)
        elif isinstance(message, ipc.BroadcastPacket):
            if self.broadcast_sink is not None:
                self.broadcast_sink(message.data, message.host, message.rx_ns, message.nopeer)
        else:
            log.warning("worker %d sent an unexpected %s", slot.index, type(message).__name__)

    def _mode6(self, slot: WorkerSlot, request: ipc.Mode6Request) -> None:
        """Answer a forwarded mode 6 request with the daemon's handler (None: drop it)."""
        handler = self.control()
        replies: list[bytes] = []
        if handler is None:
            status = "none"
        else:
            try:
                replies = list(handler(request.data, request.peer))
                status = "ok"
            except Exception:  # a bug in the monitoring path must not stop the server
                log.exception("mode 6 request from %s failed", list(request.peer))
                status = "error"
        msg = ipc.Mode6Reply(request.id, request.ep, request.peer, status, tuple(replies))
        if slot.channel is not None and not ipc.send(slot.channel, msg):
            log.debug("worker %d: mode 6 reply dropped (channel full)", slot.index)

    def _channel_closed(self, slot: WorkerSlot) -> None:
        self._drop_channel(slot)
        if self.stopping:
            return
        self.loop.call_later(0, functools.partial(self._check_dead, slot, 0))

    def _check_dead(self, slot: WorkerSlot, tries: int) -> None:
        pid = slot.pid
        if not pid or self.stopping:
            return
        lived = time.monotonic() - slot.started
        status = self._reap(slot, block=False)
        if status is None:  # channel closed but still running: give it a moment, then kill
            if tries == 20:
                log.error("worker %d (pid %d) closed its channel; killing it", slot.index, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.loop.call_later(50_000_000, functools.partial(self._check_dead, slot, tries + 1))
            return
        self.restarts += 1
        delay = 0.0
        if lived < QUICK_DEATH_S:
            delay = slot.restart_delay
            slot.restart_delay = min(slot.restart_delay * 2, MAX_RESTART_DELAY_S)
        else:
            slot.restart_delay = RESTART_DELAY_S
        log.error(
            "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
            slot.index,
            pid,
            describe_status(status),
            lived,
            delay,
        )
        self.loop.call_later(int(delay * NS), functools.partial(self._restart, slot))

    def _restart(self, slot: WorkerSlot) -> None:
        if self.stopping or slot.pid:
            return
        try:
            self._spawn(slot)
        except OSError as exc:
            log.error("cannot restart worker %d: %s; trying again", slot.index, exc)
            self.loop.call_later(int(MAX_RESTART_DELAY_S * NS), lambda: self._restart(slot))
            return
        log.info("worker %d restarted (pid %d)", slot.index, slot.pid)

    def broadcast(self, msg: ipc.Message) -> None:
        data = ipc.encode(msg)
        for slot in self.slots:
            if slot.channel is not None and not ipc.send_bytes(slot.channel, data):
                log.warning(
                    "worker %d: %s update not delivered (channel full)", slot.index, msg.KIND
                )

    def query(self, make: Callable[[int], ipc.Query]) -> list[tuple[WorkerSlot, ipc.Reply]]:
        """Ask every live worker ``make(token)`` and wait (at most QUERY_TIMEOUT_S) for the
        replies.

        Runs inside the main's loop, so other messages that arrive meanwhile are kept and
        handled from the loop afterwards (a mode 6 request must not run nested in here).
        """
        token = next(self._tokens)
        question = make(token)
        data = ipc.encode(question)
        waiting = [
            s for s in self.slots if s.channel is not None and ipc.send_bytes(s.channel, data)
        ]
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        out: list[tuple[WorkerSlot, ipc.Reply]] = []
        while waiting:
            for slot in list(waiting):
                reply = self._replies.pop((token, slot.index), None)
                if reply is not None:
                    out.append((slot, reply))
                    waiting.remove(slot)
            waiting = [s for s in waiting if s.channel is not None]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            ready, _, _ = select.select(_channels(waiting), [], [], left)
            for slot in waiting:
                if slot.channel in ready:
                    self._read(slot, defer=True)
        for slot in waiting:
            log.warning(
                "worker %d (pid %d) did not answer a %s", slot.index, slot.pid, question.KIND
            )
        self._replies = {k: v for k, v in self._replies.items() if k[0] != token}
        if self._deferred:
            self.loop.call_later(0, self._run_deferred)
        return out

    def publish_cookie_keys(self, ring: bytes) -> bool:
        """Hand every worker the NTS cookie key ring and wait (at most QUERY_TIMEOUT_S) until
        each has installed it. True when every live worker acknowledged; the caller switches
        the key exchange to the new key only afterwards (see ``NtsService``)."""
        self.nts_ring = ring
        if not any(s.channel is not None for s in self.slots):
            return True  # not forked yet: the ring goes out in WorkerSetup
        replies = self.query(lambda token: ipc.CookieKeysUpdate(token, ring))
        acked = {s.index for s, r in replies if isinstance(r, ipc.CookieKeysAck) and r.current >= 0}
        missing = [s.index for s in self.slots if s.channel is not None and s.index not in acked]
        if missing:
            log.error("NTS cookie keys: worker(s) %s did not install the new ring", missing)
        return not missing

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for slot, request in deferred:
            self._dispatch(slot, request)

    # -- what the daemon reports --------------------------------------------------------

    def counters(self, *, fresh: bool = True) -> tuple[Counter[str], Counter[str]]:
        """(server counters, rate limiter counters) summed over all workers, past and
        present; ``fresh`` asks the live workers first."""
        if fresh:
            for slot, reply in self.query(ipc.CountersQuery):
                if isinstance(reply, ipc.CountersReply):
                    self._take_counters(slot, reply.server, reply.limiter)
        server: Counter[str] = Counter(self.retired_server)
        limiter: Counter[str] = Counter(self.retired_limiter)
        for slot in self.slots:
            server.update(slot.server)
            limiter.update(slot.limiter)
        return server, limiter

    def clients(self, limit: int) -> dict[str, Any]:
        """The busiest ``limit`` clients over all workers (each client lives in one)."""
        rows: list[ipc.ClientRow] = []
        entries = 0
        for _slot, reply in self.query(lambda token: ipc.ClientsQuery(token, limit)):
            if isinstance(reply, ipc.ClientsReply):
                rows.extend(reply.clients)
                entries += reply.table_entries
        top = heapq.nlargest(limit, rows, key=lambda r: (r.requests, r.last_seen_ns))
        return {
            "clients": [r.to_dict() for r in top],
            "table_entries": entries,
            "workers": self.count,
        }


def _channels(slots: Iterable[WorkerSlot]) -> list[socket.socket]:
    return [s.channel for s in slots if s.channel is not None]


def describe_status(status: int) -> str:
    """'exited with status N' or 'was killed by SIGNAME' for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        if sig == signal.SIGSYS:
            return "was killed by SIGSYS (a system call outside the seccomp filter; see dmesg)"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
