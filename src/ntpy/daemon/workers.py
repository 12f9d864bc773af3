"""``workers N``: answer NTP from N processes that share each listen address (SO_REUSEPORT).

One Python process answers some tens of thousands of requests a second; a server with more
cores serves more by running more processes. The main process keeps everything that has
state worth keeping in one place -- the sync engine, the control socket, mode 6, stats,
monitoring -- and answers no client itself. Each worker owns one socket per listen address
and serves from the main's published clock mapping and system state (``daemon/shared.py``).

Sockets. The main binds all N sockets of each address in a fixed order before forking, and
keeps every one of them open until shutdown: the kernel numbers a reuseport group's sockets
in bind order and renumbers them when one is closed, so holding them all keeps socket i
belonging to worker i, also while a dead worker is being replaced. The first socket is
bound *without* SO_REUSEPORT (the option is switched on after the bind): the bind then
fails if anyone already serves that address -- another ntpy included -- instead of silently
joining its group, and a port-0 bind gets a port nobody else uses.

Affinity. The kernel's default spreads datagrams by a hash of the 4-tuple, so one client
using several source ports would be served by several workers, each with its own rate
limiter table. A classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
picks the socket from the source *address* instead: IPv4 the whole address, IPv6 the
rate limiter's prefix (``ratelimit ipv6prefix``, default /64), so one client -- as the
rate limiter sees it -- always reaches the same worker. ``worker_index`` computes the same
hash in Python, for the tests and for anyone asking "which worker serves X".

Lifecycle. Workers die with the main (PR_SET_PDEATHSIG, and EOF on their channel), ignore
SIGINT (a terminal's ^C goes to the whole group; the main then stops them in order), exit
on SIGTERM after reporting their final counters. A worker that dies unexpectedly is logged
and replaced (with a growing delay if it keeps dying at once).

Limits, known and accepted: a batch a worker is in the middle of when the main steps the
clock finishes with the previous mapping (the check is once per batch, so t2 and t3 of one
reply never straddle the step); counters a worker had not reported yet (at most a second's
worth) die with it if it is killed; a worker *restarted* while the daemon runs inherits the
main's other descriptors (control socket, upstream sockets, stats files) and ignores them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gc
import heapq
import ipaddress
import itertools
import logging
import os
import select
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ntpy.clock.base import Clock
from ntpy.clock.system import SystemClock
from ntpy.clock.virtual import VirtualClock
from ntpy.config.directives.service import MAX_WORKERS, auto_workers
from ntpy.core.ratelimit import RateLimiter
from ntpy.core.server import Reason, Responder
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon.loop import Loop
from ntpy.daemon.server import ControlHandler, NtpServer
from ntpy.daemon.shared import (
    MessageError,
    SharedClock,
    SharedState,
    decode_message,
    encode_message,
)
from ntpy.daemon.udp import Endpoint, ListenAddress, ListenError

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


# --- the reuseport group and its BPF program ------------------------------------------

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_NET_OFF = -0x100000
"""Classic BPF loads at SKF_NET_OFF + k read the IP header (the program sees the payload)."""
HASH_MULTIPLIER = 0x9E3779B1
"""2^32 / golden ratio: a multiplicative hash that spreads neighbouring addresses."""
IPV4_SOURCE_OFFSET = 12
IPV6_SOURCE_OFFSET = 8

_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_AND_K = 0x04 | 0x50
_BPF_ALU_XOR_X = 0x04 | 0xA0 | 0x08
_BPF_ALU_MUL_K = 0x04 | 0x20
_BPF_ALU_RSH_K = 0x04 | 0x70
_BPF_ALU_MOD_K = 0x04 | 0x90
_BPF_TAX = 0x07 | 0x00
_BPF_RET_A = 0x06 | 0x10
_BPF_RET_K = 0x06 | 0x00
_SOCK_FILTER = struct.Struct("HBBI")
_SOCK_FPROG = struct.Struct("@HP")

BpfInsn = tuple[int, int, int, int]


def _source_words(family: socket.AddressFamily, v6_prefix: int) -> list[tuple[int, int]]:
    """(offset in the IP header, mask) of each 32-bit word of the source key."""
    if family == socket.AF_INET:
        return [(IPV4_SOURCE_OFFSET, 0xFFFFFFFF)]
    if not 0 <= v6_prefix <= 128:
        raise ValueError(f"IPv6 prefix must be 0..128, not {v6_prefix}")
    words = []
    for i in range(0, v6_prefix, 32):
        bits = min(32, v6_prefix - i)
        words.append((IPV6_SOURCE_OFFSET + i // 8, (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    return words


def bpf_program(family: socket.AddressFamily, n: int, v6_prefix: int = 64) -> list[BpfInsn]:
    """Classic BPF: socket index = hash(source address or IPv6 prefix) % n.

    Per 32-bit word w of the key: h = (w ^ h) * M mod 2^32; h ^= h >> 16. Loads are
    big-endian, so w is the word as written in the address.
    """
    if not 1 <= n <= 0xFFFF:
        raise ValueError(f"a reuseport group has 1..65535 sockets, not {n}")
    words = _source_words(family, v6_prefix)
    if not words:  # prefix 0: every client is one client
        return [(_BPF_RET_K, 0, 0, 0)]
    prog: list[BpfInsn] = []
    for j, (offset, mask) in enumerate(words):
        if j:
            prog.append((_BPF_TAX, 0, 0, 0))  # X = h
        prog.append((_BPF_LD_W_ABS, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF))
        if mask != 0xFFFFFFFF:
            prog.append((_BPF_ALU_AND_K, 0, 0, mask))
        if j:
            prog.append((_BPF_ALU_XOR_X, 0, 0, 0))
        prog.append((_BPF_ALU_MUL_K, 0, 0, HASH_MULTIPLIER))
        prog.append((_BPF_TAX, 0, 0, 0))
        prog.append((_BPF_ALU_RSH_K, 0, 0, 16))
        prog.append((_BPF_ALU_XOR_X, 0, 0, 0))
    prog.append((_BPF_ALU_MOD_K, 0, 0, n))
    prog.append((_BPF_RET_A, 0, 0, 0))
    return prog


def worker_index(address: str, n: int, v6_prefix: int = 64) -> int:
    """The worker the BPF program sends ``address`` to (the same hash, in Python)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    packed = ip.packed
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    base = IPV4_SOURCE_OFFSET if ip.version == 4 else IPV6_SOURCE_OFFSET
    h = 0
    for offset, mask in _source_words(family, v6_prefix):
        i = offset - base
        w = int.from_bytes(packed[i : i + 4], "big") & mask
        x = ((w ^ h) * HASH_MULTIPLIER) & 0xFFFFFFFF
        h = x ^ (x >> 16)
    return h % n


def attach_bpf(sock: socket.socket, program: Sequence[BpfInsn]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: steer the socket's whole reuseport group by ``program``."""
    code = b"".join(_SOCK_FILTER.pack(*insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(
        socket.SOL_SOCKET,
        SO_ATTACH_REUSEPORT_CBPF,
        _SOCK_FPROG.pack(len(program), ctypes.addressof(buf)),
    )


class ReuseportGroup:
    """N sockets bound to one address, socket i for worker i, steered by source address."""

    def __init__(self, address: ListenAddress, n: int, v6_prefix: int = 64) -> None:
        first = Endpoint(address)  # exclusive bind: fails if the address is served already
        self.endpoints: list[Endpoint] = [first]
        try:
            first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            same = ListenAddress(address.host, first.bound.port)
            for _ in range(n - 1):
                self.endpoints.append(Endpoint(same, reuseport=True))
            attach_bpf(first.sock, bpf_program(first.family, n, v6_prefix))
        except OSError as exc:
            self.close()
            raise ListenError(
                f"cannot set up {n} worker sockets on {address}: {exc.strerror or exc}"
            ) from exc
        except ListenError:
            self.close()
            raise
        self.bound = first.bound

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()


def open_groups(
    required: Iterable[ListenAddress],
    optional: Iterable[ListenAddress],
    n: int,
    v6_prefix: int,
) -> list[ReuseportGroup]:
    """One group per address; ListenError for a required one, a warning for an optional."""
    groups: list[ReuseportGroup] = []
    try:
        for addr in required:
            groups.append(ReuseportGroup(addr, n, v6_prefix))
    except ListenError:
        for g in groups:
            g.close()
        raise
    for addr in optional:
        try:
            groups.append(ReuseportGroup(addr, n, v6_prefix))
        except ListenError as exc:
            log.warning("%s; continuing without it", exc)
    return groups


# --- process helpers ---------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}


def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends ``signum`` when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _send(sock: socket.socket, msg: bytes) -> bool:
    try:
        sock.send(msg)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOBUFS):
            raise
        return False
    return True


# --- the worker process -----------------------------------------------------------------

COUNTER_PUSH_NS = 1 * NS
"""How often a worker reports its counters unasked (the main asks when it needs them
fresh; these pushes bound what is lost if a worker dies)."""
FINAL_SEND_TIMEOUT_S = 1.0


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
    """False: wait for the main's "serve" message (sent once its start-up is complete, so
    no client ever sees the state from before the sync engine started)."""


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
        self._by_fd = {ep.sock.fileno(): i for i, ep in enumerate(setup.endpoints)}
        self._current = 0
        self._ids = itertools.count(1)
        self._forwarded = 0
        self._dropped_mark = 0
        self._pushed: dict[str, Any] = {}
        self._serving = False

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
        msg = encode_message(
            "mode6", {"id": next(self._ids), "ep": self._current, "peer": list(peer)}, data
        )
        if _send(self.channel, msg):
            self._forwarded += 1
        else:
            counters["drop_mode6_backlog"] += 1
        return []

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
            try:
                msg = self.channel.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                msg = b""
            if not msg:  # the main is gone: so are we
                log.info("worker %d: main process gone, exiting", self.index)
                self.loop.stop()
                return
            try:
                head, tail = decode_message(msg)
                self._dispatch(head, tail)
            except (MessageError, KeyError, TypeError, ValueError) as exc:
                log.error("worker %d: bad message from the main: %s", self.index, exc)

    def _dispatch(self, head: dict[str, Any], tail: bytes) -> None:
        kind = head["kind"]
        if kind == "query":
            what = head["what"]
            body = self.counters() if what == "counters" else self.clients(int(head["limit"]))
            _send(self.channel, encode_message("reply", {"token": head["token"], **body}))
        elif kind == "mode6reply":
            self._mode6_reply(head, tail)
        elif kind == "sources":
            self.setup.access_update([str(a) for a in head["addresses"]])
        elif kind == "reload":
            self._reload(str(head["path"]))
        elif kind == "reopen-logs":
            for handler in logging.getLogger().handlers:
                reopen = getattr(handler, "reopen", None)
                if callable(reopen):
                    reopen()
        elif kind == "serve":
            self._serve()
        else:
            log.warning("worker %d: unknown message %r", self.index, kind)

    def _reload(self, path: str) -> None:
        """The main reloaded the config and its access or rate-limit lines changed: rebuild
        this worker's from the same file (the main has checked that it parses)."""
        from ntpy.config import ConfigError, load
        from ntpy.core.access import AccessError
        from ntpy.daemon.app import build_access, build_limiter

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

    def _mode6_reply(self, head: dict[str, Any], tail: bytes) -> None:
        self._settle_forwarded()
        counters = self.server.counters
        status = head["status"]
        if status == "none":
            counters[Reason.CONTROL] += 1
            return
        if status == "error":
            counters["mode6_error"] += 1
            return
        lens = [int(x) for x in head["lens"]]
        counters["mode6_answered" if lens else "mode6_dropped"] += 1
        ep = self.server.endpoints[int(head["ep"])]
        peer = tuple(head["peer"])
        pos = 0
        for n in lens:
            try:
                ep.sock.sendto(tail[pos : pos + n], peer)
            except OSError as exc:
                counters["drop_send_failed"] += 1
                log.debug("mode 6 reply to %s failed: %s", peer, exc)
            pos += n

    def counters(self) -> dict[str, Any]:
        self._settle_forwarded()
        return {
            "server": {str(k): v for k, v in self.server.counters.items() if v},
            "limiter": dict(self.limiter.counters),
        }

    def clients(self, limit: int) -> dict[str, Any]:
        now = self.clock.now_ns()
        rows = []
        for c in self.limiter.clients(limit):
            rows.append(
                {
                    "address": c.address,
                    "requests": c.requests,
                    "drops": c.drops,
                    "kods": c.kods,
                    "avg_interval_s": c.avg_interval_s,
                    "last_seen_ns": c.last_seen_ns,
                    "last_seen_ago_s": max(0, (now - c.last_seen_ns) // NS),
                    "worker": self.index,
                }
            )
        return {"clients": rows, "table_entries": self.limiter.config.max_clients}

    def _serve(self) -> None:
        if not self._serving:
            self._serving = True
            self.server.attach(self.loop)

    def _push_counters(self) -> None:
        counters = self.counters()
        if counters != self._pushed:  # an idle worker stays quiet
            _send(self.channel, encode_message("counters", counters))
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
        try:
            self.loop.run()
        finally:
            self.channel.settimeout(FINAL_SEND_TIMEOUT_S)
            with contextlib.suppress(OSError):
                self.channel.send(encode_message("counters", {**self.counters(), "final": True}))
        return 0


def _worker_process(setup: WorkerSetup, old_mask: Iterable[int]) -> int:
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


# --- the main process's side --------------------------------------------------------------

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

    ``daemon`` is the main ``Daemon``; the pool reads its responder, limiter, access rules,
    clock, loop and (when a mode 6 request arrives) ``control_handler``.
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
        self._replies: dict[tuple[int, int], dict[str, Any]] = {}
        self._deferred: list[tuple[WorkerSlot, dict[str, Any], bytes]] = []

    @classmethod
    def for_daemon(cls, daemon: Any, groups: list[ReuseportGroup]) -> WorkerPool:
        """A pool serving for ``daemon`` (an ``ntpy.daemon.app.Daemon``): its responder,
        limiter and access rules are what the workers inherit, its clock and system state
        are published to them, and its ``control_handler`` answers their mode 6 requests."""
        shared = SharedState()
        shared.publish_state(daemon.responder.state)
        clock = daemon.clock
        if isinstance(clock, VirtualClock):
            clock.add_segment_listener(shared.publish_segment)
        else:
            shared.publish_realtime()
        return cls(
            len(groups[0].endpoints),
            groups,
            shared,
            responder=daemon.responder,
            limiter=daemon.limiter,
            access_update=daemon.access.update_sources,
            control=lambda: getattr(daemon, "control_handler", None),
            loop=daemon.loop,
            clock_name=clock.name,
            precision=daemon.precision,
            selector=daemon.options.selector,
        )

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
        )
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
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
                code = _worker_process(setup, old_mask)
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

    def release(self) -> None:
        """Let the workers answer: the main's start-up is complete and its state published.
        Requests that arrived before wait in the sockets' queues."""
        self.released = True
        self.broadcast("serve", {})

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
                head, tail = decode_message(msg)
            except MessageError as exc:
                log.error("worker %d sent a bad message: %s", slot.index, exc)
                continue
            kind = head["kind"]
            if kind == "counters":
                self._take_counters(slot, head)
                slot.final = bool(head.get("final"))
            elif kind == "reply":
                self._replies[(int(head["token"]), slot.index)] = head
            elif final_only:
                continue
            elif defer:
                self._deferred.append((slot, head, tail))
            else:
                self._dispatch(slot, head, tail)

    @staticmethod
    def _take_counters(slot: WorkerSlot, head: dict[str, Any]) -> None:
        slot.server = Counter({str(k): int(v) for k, v in head["server"].items()})
        slot.limiter = Counter({str(k): int(v) for k, v in head["limiter"].items()})

    def _dispatch(self, slot: WorkerSlot, head: dict[str, Any], tail: bytes) -> None:
        if head["kind"] == "mode6":
            self._mode6(slot, head, tail)
        else:
            log.warning("worker %d sent an unknown message %r", slot.index, head["kind"])

    def _mode6(self, slot: WorkerSlot, head: dict[str, Any], tail: bytes) -> None:
        """Answer a forwarded mode 6 request with the daemon's handler (None: drop it)."""
        handler = self.control()
        reply = {"id": head["id"], "ep": head["ep"], "peer": head["peer"]}
        replies: list[bytes] = []
        if handler is None:
            status = "none"
        else:
            try:
                replies = list(handler(tail, tuple(head["peer"])))
                status = "ok"
            except Exception:  # a bug in the monitoring path must not stop the server
                log.exception("mode 6 request from %s failed", head["peer"])
                status = "error"
        msg = encode_message(
            "mode6reply",
            {**reply, "status": status, "lens": [len(r) for r in replies]},
            b"".join(replies),
        )
        if slot.channel is not None and not _send(slot.channel, msg):
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

    def broadcast(self, kind: str, head: dict[str, Any]) -> None:
        msg = encode_message(kind, head)
        for slot in self.slots:
            if slot.channel is not None and not _send(slot.channel, msg):
                log.warning("worker %d: %s update not delivered (channel full)", slot.index, kind)

    def query(
        self, what: str, head: dict[str, Any] | None = None
    ) -> list[tuple[WorkerSlot, dict[str, Any]]]:
        """Ask every live worker and wait (at most QUERY_TIMEOUT_S) for the replies.

        Runs inside the main's loop, so other messages that arrive meanwhile are kept and
        handled from the loop afterwards (a mode 6 request must not run nested in here).
        """
        token = next(self._tokens)
        msg = encode_message("query", {"what": what, "token": token, **(head or {})})
        waiting = [s for s in self.slots if s.channel is not None and _send(s.channel, msg)]
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        out: list[tuple[WorkerSlot, dict[str, Any]]] = []
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
            log.warning("worker %d (pid %d) did not answer a %s query", slot.index, slot.pid, what)
        self._replies = {k: v for k, v in self._replies.items() if k[0] != token}
        if self._deferred:
            self.loop.call_later(0, self._run_deferred)
        return out

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for slot, head, tail in deferred:
            self._dispatch(slot, head, tail)

    # -- what the daemon reports --------------------------------------------------------

    def counters(self, *, fresh: bool = True) -> tuple[Counter[str], Counter[str]]:
        """(server counters, rate limiter counters) summed over all workers, past and
        present; ``fresh`` asks the live workers first."""
        if fresh:
            for slot, reply in self.query("counters"):
                self._take_counters(slot, reply)
        server: Counter[str] = Counter(self.retired_server)
        limiter: Counter[str] = Counter(self.retired_limiter)
        for slot in self.slots:
            server.update(slot.server)
            limiter.update(slot.limiter)
        return server, limiter

    def clients(self, limit: int) -> dict[str, Any]:
        """The busiest ``limit`` clients over all workers (each client lives in one)."""
        rows: list[dict[str, Any]] = []
        entries = 0
        for _slot, reply in self.query("clients", {"limit": limit}):
            rows.extend(reply.get("clients") or [])
            entries += int(reply.get("table_entries", 0))
        top = heapq.nlargest(limit, rows, key=lambda r: (r["requests"], r["last_seen_ns"]))
        return {"clients": top, "table_entries": entries, "workers": self.count}


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
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
