"""``broadcast ADDR``: the broadcast server's sockets and timers.

One UDP socket per ``broadcast`` line, with SO_BROADCAST (or the multicast TTL/hops),
sending from the first address we serve on when that is a specific one, so clients see
the address they know us by. Each tick reads the served state and the clock, builds the
packet in the core (``ntpy.core.broadcast``) and sends it; nothing goes out while we are
unsynchronized (a client could only discard it). Counters: ``broadcast_sent``,
``broadcast_unsynchronized`` (ticks skipped) and ``broadcast_errors`` (send failures,
logged once per kind of error).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from ipaddress import ip_address

from ntpy.clock.base import Clock
from ntpy.config import Config
from ntpy.config.model import BroadcastSpec
from ntpy.core.auth import MacKey
from ntpy.core.broadcast import build_broadcast
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.loop import Loop
from ntpy.daemon.peering import specific

log = logging.getLogger("ntpy")


class Broadcaster:
    """Sends every ``broadcast`` line's packets; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        state: Callable[[], SystemState],
        keys: Mapping[int, MacKey],
    ) -> None:
        self.clock = clock
        self.state = state
        self.keys = keys
        self.counters: Counter[str] = Counter()
        self.sockets: list[socket.socket] = []
        self._errors: set[str] = set()

    def open(self, spec: BroadcastSpec, listen_hosts: Sequence[str]) -> socket.socket:
        """The socket for ``spec`` (OSError if the kernel refuses it)."""
        ip = ip_address(spec.address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if ip.version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, spec.ttl)
            elif ip.is_multicast:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, spec.ttl)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            source = next(
                (h for h in specific(listen_hosts) if (":" in h) == (ip.version == 6)), ""
            )
            sock.bind((source, 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sockets.append(sock)
        return sock

    def send(self, spec: BroadcastSpec, sock: socket.socket) -> None:
        """One tick: the packet for now, if we are synchronized."""
        state = self.state()
        if not state.synchronized:
            self.counters["broadcast_unsynchronized"] += 1
            return
        key = self.keys.get(spec.key) if spec.key is not None else None
        data = build_broadcast(
            state, self.clock.now_ns(), poll=spec.minpoll, version=spec.version, key=key
        )
        try:
            sock.sendto(data, (spec.address, spec.port))
        except OSError as exc:
            self.counters["broadcast_errors"] += 1
            error = f"broadcast {spec.address}: {exc.strerror or exc}"
            if error not in self._errors:
                self._errors.add(error)
                log.warning("%s (counted; logged once)", error)
            return
        self.counters["broadcast_sent"] += 1

    def summary(self) -> str:
        return "".join(f" {k}={v}" for k, v in sorted(self.counters.items()) if v)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def start_broadcast(
    config: Config,
    clock: Clock,
    state: Callable[[], SystemState],
    keys: Mapping[int, MacKey],
    loop: Loop,
    listen_hosts: Sequence[str],
) -> Broadcaster | None:
    """A ``Broadcaster`` sending every ``broadcast`` line's packets, or None without any.
    A line whose socket cannot be opened is logged and skipped (the rest still serve)."""
    if not config.broadcasts:
        return None
    caster = Broadcaster(clock, state, keys)
    for spec in config.broadcasts:
        try:
            sock = caster.open(spec, listen_hosts)
        except OSError as exc:
            log.error("broadcast %s: cannot open a socket: %s (skipped)", spec.address, exc)
            continue
        interval = (1 << spec.minpoll) * NS_PER_S
        auth = f"key {spec.key}" if spec.key is not None else "unauthenticated"
        log.info(
            "broadcasting to %s port %d every %d s (%s)",
            spec.address,
            spec.port,
            interval // NS_PER_S,
            auth,
        )

        def tick(spec: BroadcastSpec = spec, sock: socket.socket = sock) -> None:
            caster.send(spec, sock)

        loop.call_every(interval, tick)
    return caster
