"""``fastpath xdp``: the kernel answers plain client requests; this keeps it honest.

The main process loads the program (``xdp_load``), fills its maps (``xdp_maps``) and
attaches it through bpf_links it alone holds (after the workers are forked, so the program
dies with the main process). From then on it republishes the served state every
``REFRESH_NS``, at every change of the system state and at every change of the clock's
mapping (the segment listener the workers' shared state uses too), and rebuilds the
restrict map on reload. Whatever the program passes up is decided by the Python
responder as without it.

If the program cannot run (no libbpf, no object, no privilege, old kernel, no such
interface) ``start`` logs one line saying why and returns None: ntpy then serves every
request from Python, as without the directive. It never keeps the daemon from starting.
"""

from __future__ import annotations

import logging
import mmap
import socket
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from ntpy.clock import SystemClock
from ntpy.clock.base import Clock
from ntpy.clock.virtual import Segment, VirtualClock, served_ns
from ntpy.core.ratelimit import RateLimiter
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon import xdp_load, xdp_maps
from ntpy.daemon.ifaddrs import interface_addresses
from ntpy.daemon.xdp_limit import KernelLimiter, kernel_clients
from ntpy.daemon.xdp_load import XdpError, XdpProgram

log = logging.getLogger("ntpy")

_MULTICAST = (IPv4Network("224.0.0.0/4"), IPv6Network("ff00::/8"))


def _tai_offset() -> int:
    """TAI - realtime, in whole seconds as the kernel keeps it."""
    diff = time.clock_gettime_ns(time.CLOCK_TAI) - time.time_ns()
    return round(diff / NS_PER_S) * NS_PER_S


class XdpFastPath:
    """The loaded program, its maps, and the state the daemon publishes into them."""

    def __init__(self, program: XdpProgram, clock: Clock, state: SystemState) -> None:
        self.program = program
        self._lock = threading.Lock()
        self._state = state
        self._served: Callable[[int], int] = clock.from_realtime_ns
        self._ports: tuple[int, ...] = ()
        self._flags = 0
        self._limits = xdp_maps.Limits()
        self._seq = 0
        fd = program.map_fd("ntp_state")
        self._mm = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._counters_fd = program.map_fd("ntp_counters")
        self._addrs_fd = program.map_fd("ntp_addrs")
        self._restrict_fd = program.map_fd("ntp_restrict")
        self._clients_fd = program.map_fd("ntp_clients")
        self.kernel_limits = True
        """Whether ``limited`` clients are limited in the kernel: the process that answers
        what the kernel passes up reads its buckets (``xdp_limit``): this one, or with
        worker processes each worker, sent ``clients_fd`` (``WorkerPool.share_kernel_
        buckets``). False: every ``limited`` client is passed up (tests)."""
        self.limiter: KernelLimiter | None = None
        self._cpus = xdp_load.possible_cpus()
        if isinstance(clock, VirtualClock | SystemClock):
            clock.add_segment_listener(self._on_segment)

    @property
    def clients_fd(self) -> int:
        """The kernel's per-client bucket map, for the processes that answer."""
        return self._clients_fd

    # -- start ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        interfaces: Iterable[str],
        clock: Clock,
        state: SystemState,
        bound: list[tuple[str, int]],
    ) -> XdpFastPath | None:
        """Load, fill and attach; None (and one log line) if the kernel path cannot run."""
        program = XdpProgram()
        try:
            program.load()
            fast = cls(program, clock, state)
            names = fast.set_addresses(bound, list(interfaces))
            fast.publish()
            for name in names:
                program.attach(name)
        except (XdpError, OSError) as exc:
            program.close()
            log.warning("fastpath xdp: not running, every request is served from Python: %s", exc)
            return None
        log.info(
            "fastpath xdp: plain client requests to port %s answered in the kernel on %s",
            ", ".join(map(str, fast._ports)),
            ", ".join(names),
        )
        return fast

    def set_addresses(self, bound: list[tuple[str, int]], interfaces: list[str]) -> list[str]:
        """Fill our addresses (a wildcard listener: every address of the machine) and return
        the interfaces to attach to (given, or those carrying the addresses)."""
        if not bound:
            raise XdpError("no NTP socket to serve for")
        ports: list[int] = []
        for _, port in bound:
            if port not in ports and len(ports) < xdp_maps.MAX_PORTS:
                ports.append(port)
        self._ports = tuple(ports)
        known = interface_addresses()
        ours: dict[str, str] = {}
        bits: dict[str, int] = {}
        for host, port in bound:
            if port not in ports:
                log.warning("fastpath xdp: %s port %d is served from Python only", host, port)
                continue
            bit = 1 << ports.index(port)
            addr = ip_address(host.partition("%")[0])
            for name, a in known:
                if (addr.is_unspecified and a.version == addr.version) or a == addr:
                    ours[str(a)] = name
                    bits[str(a)] = bits.get(str(a), 0) | bit
            if not addr.is_unspecified:
                ours.setdefault(str(addr), "lo" if addr.is_loopback else "")
                bits[str(addr)] = bits.get(str(addr), 0) | bit
        for host, b in bits.items():
            xdp_load.map_update(self._addrs_fd, xdp_maps.address_key(host), bytes([b]))
        names = interfaces or sorted({n for n in ours.values() if n})
        if not names:
            raise XdpError("no interface carries the listen addresses; name one")
        return names

    # -- publishing ----------------------------------------------------------------------

    def _on_segment(self, segment: Segment, rate_mppb: int) -> None:
        """The clock's mapping changed (a step, slew or frequency): publish it now."""
        self._served = lambda rt: served_ns(segment, rate_mppb, rt)
        self.publish()

    def set_state(self, state: SystemState) -> None:
        self._state = state
        self.publish()

    def set_policy(self, responder: Any, limits: xdp_maps.Limits | None) -> None:
        """Rebuild the restrict map from the responder's access policy (start and reload)."""
        access = responder.access
        rules = getattr(access, "rules", None) if access is not None else None
        entries: list[tuple[IPv6Network, int]]
        flags = self._flags & ~(xdp_maps.F_PORT123 | xdp_maps.F_XLEAVE)
        if access is not None and rules is None:
            entries = [(IPv6Network("::/0"), xdp_maps.CLASS_PASS)]
            entries.append((IPv6Network("::ffff:0:0/96"), xdp_maps.CLASS_PASS))
        else:
            nets: list[IPv4Network | IPv6Network] = list(_MULTICAST)
            if rules is not None:
                for e in (*rules.entries, *rules.source_entries):
                    nets.append(e.network)
                for net, _ in rules.allow_deny or ():
                    nets.append(net)
                if rules.has_ntpport:
                    flags |= xdp_maps.F_PORT123
            entries = xdp_maps.restrict_classes(nets, responder.plain_class)
        if not self.kernel_limits or limits is None:
            entries = [
                (n, xdp_maps.CLASS_PASS if c == xdp_maps.CLASS_LIMITED else c) for n, c in entries
            ]
        # Interleaved requests (origin = our receive stamp, marked by its low bit) always
        # go up: the process that answers turns interleaved mode on once its TX timestamps
        # work, later than this and maybe in a worker; a plain client's origin is 0 or our
        # transmit stamp, whose low bit is clear, so this costs the kernel nothing.
        flags |= xdp_maps.F_XLEAVE
        xdp_load.map_clear(self._restrict_fd, xdp_maps.LPM_KEY.size)
        for net, c in entries:
            xdp_load.map_update(self._restrict_fd, xdp_maps.lpm_key(net), bytes([c]))
        with self._lock:
            self._flags = flags
            self._limits = limits or xdp_maps.Limits()
        self.publish()

    def reload(self, responder: Any, limiter: Any) -> None:
        """The responder's (new) access rules and the limiter's settings, into the maps;
        with kernel limits, the responder's limiter reads the kernel's buckets."""
        cfg = getattr(limiter, "config", None)
        limits = None
        if cfg is not None and self.kernel_limits and isinstance(limiter, RateLimiter):
            limits = xdp_maps.Limits(
                token_ns=cfg.token_ns,
                cap_ns=cfg.burst * cfg.token_ns,
                min_ns=cfg.minimum_s * NS_PER_S,
                leak_mask=(1 << cfg.leak_log2) - 1,
                v6_prefix=cfg.ipv6_prefix,
            )
            if self.limiter is None or self.limiter.limiter is not limiter:
                self.limiter = KernelLimiter(limiter, self._clients_fd)
                xdp_load.map_clear(self._clients_fd, 16)  # new settings: fresh buckets
            responder.limiter = self.limiter
        responder.refresh()
        self.set_policy(responder, limits)

    def publish(self) -> None:
        """Write the state under the seqlock: odd while writing, even when whole."""
        with self._lock:
            rt = time.time_ns()
            m = xdp_maps.fit(self._served, rt, _tai_offset())
            body = xdp_maps.state_body(self._state, m, self._ports, self._flags, self._limits)
            mm = self._mm
            self._seq += 1
            xdp_maps.SEQ.pack_into(mm, 0, self._seq)
            mm[xdp_maps.SEQ.size : xdp_maps.STATE_SIZE] = body
            self._seq += 1
            xdp_maps.SEQ.pack_into(mm, 0, self._seq)

    def disable(self) -> None:
        """Stop answering (everything passes up) without detaching: tests, and shutdown."""
        with self._lock:
            self._seq += 1
            xdp_maps.SEQ.pack_into(self._mm, 0, self._seq)
            self._mm[xdp_maps.SEQ.size + 8 : xdp_maps.SEQ.size + 16] = bytes(8)  # expired
            self._seq += 1
            xdp_maps.SEQ.pack_into(self._mm, 0, self._seq)

    # -- reading -------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """``xdp_<name>`` totals over every CPU."""
        out = {}
        size = 8 * self._cpus
        for i, name in enumerate(xdp_maps.COUNTERS):
            raw = xdp_load.map_lookup(self._counters_fd, i.to_bytes(4, "little"), size)
            out[f"xdp_{name}"] = 0 if raw is None else xdp_maps.sum_counters(raw, self._cpus)
        if self.limiter is not None:
            out["xdp_kernel_over_decided"] = self.limiter.kernel_over
        return out

    def clients(self, limit: int) -> list[dict[str, object]]:
        """The kernel's per-client buckets (``limited`` clients only), most answered first."""
        if self.limiter is None:
            return []
        return kernel_clients(self._clients_fd, self.limiter.config.ipv6_prefix, limit)

    def close(self) -> None:
        self.disable()
        self.program.close()
        self._mm.close()


def start_fastpath(
    config: Any,
    clock: Clock,
    responder: Any,
    limiter: Any,
    endpoints: Any,
    loop: Any,
) -> XdpFastPath | None:
    """The daemon's start-up step for ``fastpath xdp``: start, apply the policy, refresh.
    With workers, the caller hands them ``clients_fd`` before they serve."""
    spec = config.fastpath
    bound = [(str(ep.bound.host), int(ep.bound.port)) for ep in endpoints]
    fast = XdpFastPath.start(spec.interfaces, clock, responder.state, bound)
    if fast is None:
        return None
    try:
        fast.reload(responder, limiter)
    except XdpError as exc:
        log.warning("fastpath xdp: not running, every request is served from Python: %s", exc)
        fast.close()
        return None
    loop.call_every(xdp_maps.REFRESH_NS, fast.publish)
    return fast


def bound_addresses(sockets: Iterable[socket.socket]) -> list[tuple[str, int]]:
    """(host, port) of every bound NTP socket."""
    out = []
    for sock in sockets:
        name = sock.getsockname()
        out.append((str(name[0]), int(name[1])))
    return out


__all__ = ["XdpFastPath", "bound_addresses"]
