"""The serving half of the daemon: read requests, ask the core, send replies.

Per datagram: read it with its kernel receive timestamp (CLOCK_REALTIME), map that through
the Clock to served time, let the sans-IO ``Responder`` decide, then read the clock once
more -- as late as possible -- for the transmit timestamp and send from the address the
request came to. Every outcome, answered or dropped, increments a named counter.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ntpy.clock.base import Clock
from ntpy.core.server import Reason, Responder
from ntpy.core.timestamps import unix_ns_to_ntp
from ntpy.daemon.loop import Loop
from ntpy.daemon.udp import (
    ANC_BUFSIZE,
    IP_PKTINFO,
    IPV6_PKTINFO,
    RECV_BUFSIZE,
    Endpoint,
    ListenAddress,
    ListenError,
    parse_ancillary,
)

log = logging.getLogger("ntpy.server")

BATCH = 64
"""Datagrams read per readiness event before yielding to timers and other sockets."""

# Shell-level drop reasons (the core names its own in Reason).
DROP_OVERSIZE = "drop_oversize"
DROP_SEND_FAILED = "drop_send_failed"
RX_TIMESTAMP_FALLBACK = "rx_timestamp_fallback"

ControlHandler = Callable[[bytes, Any], list[bytes]]
"""Mode 6 (ntpq) handler: (request, client address) -> reply datagrams (maybe none).
Called only for requests the access rules allow to query (not ``noquery``/``ignore``)."""

MSG_TRUNC = int(socket.MSG_TRUNC)
"""A plain int: ``int & IntFlag`` builds an enum object on every packet."""


class NtpServer:
    """Serves NTP on a set of endpoints from one Responder and one Clock."""

    def __init__(self, clock: Clock, responder: Responder) -> None:
        self.clock = clock
        self.responder = responder
        self.endpoints: list[Endpoint] = []
        self.counters: Counter[str] = Counter()
        self.control: ControlHandler | None = None
        """Answers mode 6 requests; None drops them (counted as ``drop_mode6``)."""

    def open(
        self, addresses: Iterable[ListenAddress], *, optional: Iterable[ListenAddress] = ()
    ) -> None:
        """Bind every address (ListenError on failure); ``optional`` ones only warn."""
        for addr in addresses:
            self.endpoints.append(Endpoint(addr))
        for addr in optional:
            try:
                self.endpoints.append(Endpoint(addr))
            except ListenError as exc:
                log.warning("%s; continuing without it", exc)

    def attach(self, loop: Loop) -> None:
        for ep in self.endpoints:
            loop.add_reader(ep.sock, functools.partial(self.drain, ep))

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
        self.endpoints.clear()

    def drain(self, ep: Endpoint) -> None:
        """Answer up to BATCH queued datagrams on ``ep``."""
        sock = ep.sock
        recvmsg = sock.recvmsg
        handle = self.responder.handle
        from_rt = self.clock.from_realtime_ns
        now_ns = self.clock.now_ns
        counters = self.counters
        for _ in range(BATCH):
            try:
                data, anc, flags, peer = recvmsg(RECV_BUFSIZE, ANC_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                counters["rx_error"] += 1
                log.debug("recvmsg on %s: %s", ep.bound, exc)
                continue
            if flags & MSG_TRUNC:
                counters[DROP_OVERSIZE] += 1
                continue
            rx_rt, pktinfo = parse_ancillary(anc)
            if rx_rt is None:
                counters[RX_TIMESTAMP_FALLBACK] += 1
                rx_rt = time.time_ns()
            rx_served = from_rt(rx_rt)
            reply, reason = handle(data, peer, unix_ns_to_ntp(rx_served), rx_served)
            if reply is None:
                if reason is Reason.CONTROL and self.control is not None:
                    self._control(ep, data, peer, pktinfo)
                else:
                    counters[reason] += 1
                continue
            counters[reason] += 1
            self._send(ep, reply.finalize(unix_ns_to_ntp(now_ns())), peer, pktinfo)

    def _send(self, ep: Endpoint, out: bytes, peer: Any, pktinfo: bytes | None) -> None:
        try:
            if pktinfo is not None and ep.wildcard:
                if ep.family == socket.AF_INET6:
                    anc = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo)]
                else:
                    anc = [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)]
                ep.sock.sendmsg([out], anc, 0, peer)
            else:
                ep.sock.sendto(out, peer)
        except OSError as exc:
            self.counters[DROP_SEND_FAILED] += 1
            log.debug("send to %s failed: %s", peer, exc)

    def _control(self, ep: Endpoint, data: bytes, peer: Any, pktinfo: bytes | None) -> None:
        """A mode 6 request the access rules allow: the handler answers (fragments, errors)."""
        assert self.control is not None
        try:
            replies = self.control(data, peer)
        except Exception:  # a bug in the monitoring path must not stop the server
            self.counters["mode6_error"] += 1
            log.exception("mode 6 request from %s failed", peer)
            return
        self.counters["mode6_answered" if replies else "mode6_dropped"] += 1
        for out in replies:
            self._send(ep, out, peer, pktinfo)

    def summary(self) -> str:
        """One line of counters, answered first."""
        answered = sum(
            v for k, v in self.counters.items() if k in {r.value for r in Reason if r.answered}
        )
        parts = [f"answered={answered}"] + [
            f"{k}={v}" for k, v in sorted(self.counters.items()) if v
        ]
        return " ".join(parts)
