"""A small HTTP/1.1 server inside the daemon's own event loop, for the status page and /metrics.

Why not ``http.server``, threads or asyncio: the daemon is one thread driven by
``ntpy.daemon.loop.Loop`` (which must keep working on a plain poll selector so LD_PRELOAD
simulators can drive it), and a monitoring request must never delay an NTP reply by more
than one short callback. So the server is non-blocking and bounded everywhere:

* a request head (request line + headers) is at most ``head_limit`` bytes, read in slices;
* at most ``max_connections`` connections at once, and at most ``max_per_address`` from one
  client address (IPv6: one /64); when every slot is taken, a new connection evicts the
  connection that is still sending its request and has been silent longest (after any that
  are only waiting to close), and gets a 503 only when every slot is busy replying;
* the request head must be complete within ``request_timeout_ns`` of the accept, however
  it trickles in (slowloris: an idle timer that every byte restarts let 40 connections
  sending one byte per 5 s hold all 32 slots for hours); a silent client is dropped sooner,
  after ``idle_timeout_ns``; a reply must be read within ``reply_timeout_ns``;
* only GET and HEAD exist -- monitoring is read-only (DESIGN rule 7) -- and a request body
  is refused, so there is no body parsing at all;
* one request per connection (``Connection: close``): keep-alive would buy nothing for a
  page that polls every few seconds, and it removes request-pipelining state.

Parsing (``parse_request``), dispatch and rendering are pure functions in
``ntpy.metrics.http``, so the protocol rules are tested without sockets; any input either
parses or raises ``HttpError``, which carries the status code the client gets back. The
loop offers readers and timers only, so a reply larger than the socket buffer is finished
by short retry timers. ``WebService`` (``daemon/webservice.py``) puts the monitoring
routes on these servers.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping

from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.loop import Loop
from ntpy.daemon.streams import StreamConn, StreamServer, send_best_effort
from ntpy.metrics.http import (
    HttpError,
    Route,
    dispatch,
    find_head_end,
    parse_request,
    render,
    status_class,
    text_response,
)

log = logging.getLogger("ntpy.httpd")

HEAD_LIMIT = 8192
"""Bytes of request line plus headers (browsers send well under 2 KiB to a local page)."""
MAX_CONNECTIONS = 32
MAX_PER_ADDRESS = 8
"""A browser opens at most 6 connections to one host; 8 leaves room for a scraper too."""
IDLE_TIMEOUT_NS = 10 * NS_PER_S
REQUEST_TIMEOUT_NS = 10 * NS_PER_S
"""Accept to complete request head, whatever arrives in between (browsers need milliseconds)."""
REPLY_TIMEOUT_NS = 60 * NS_PER_S
"""Start of the reply to its last byte sent, however slowly the client reads."""
LINGER_NS = 2 * NS_PER_S
"""After the reply, how long to wait for the client's FIN before closing (see ``_linger``)."""
ACCEPT_BATCH = 16
DRAIN_LIMIT = 64 * 1024


class HttpServerError(OSError):
    """The server cannot be set up (bad address, port in use); the message is for the admin."""


# ---------------------------------------------------------------------------------------
# Server


@dataclasses.dataclass(eq=False)
class _Conn(StreamConn):
    lingering: bool = False
    drained: int = 0
    peer: str = ""
    """The address the per-address cap counts it under (``peer_key``)."""
    cap_ns: int = 0
    """The absolute deadline of the current phase (request head, then reply)."""
    last_rx_ns: int = 0
    """When request bytes last arrived (or the accept): eviction picks the smallest."""


def peer_key(addr: object) -> str:
    """The per-address cap's key for a peer address from ``accept``: the IPv4 address, or
    the IPv6 /64 (one host usually owns a whole /64, so single IPv6 addresses are free)."""
    host = addr[0] if isinstance(addr, tuple) and addr else addr
    try:
        ip = ipaddress.ip_address(str(host).partition("%")[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def format_url(host: str, port: int, path: str = "/") -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


class HttpServer(StreamServer[_Conn]):
    """Serves ``routes`` (exact paths) on one TCP address from inside ``loop``.

    A connection's deadline is an idle timer that progress moves, but never past the
    absolute deadline of its phase (request head, then reply); the reply is followed by a
    linger rather than an immediate close (see ``_linger``).
    """

    def __init__(
        self,
        loop: Loop,
        routes: Mapping[str, Route],
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        head_limit: int = HEAD_LIMIT,
        idle_timeout_ns: int = IDLE_TIMEOUT_NS,
        request_timeout_ns: int = REQUEST_TIMEOUT_NS,
        reply_timeout_ns: int = REPLY_TIMEOUT_NS,
        linger_ns: int = LINGER_NS,
    ) -> None:
        if (
            min(max_connections, max_per_address) < 1
            or head_limit < 64
            or min(idle_timeout_ns, request_timeout_ns, reply_timeout_ns) <= 0
            or linger_ns < 0
        ):
            raise ValueError(
                "need max_connections and max_per_address >= 1, head_limit >= 64, "
                "timeouts > 0, linger_ns >= 0"
            )
        super().__init__(
            loop,
            _Conn,
            max_connections=max_connections,
            timeout_ns=idle_timeout_ns,
            accept_batch=ACCEPT_BATCH,
            log=log,
            label="HTTP",
        )
        self.routes = dict(routes)
        self.head_limit = head_limit
        self.max_per_address = max_per_address
        self.request_timeout_ns = request_timeout_ns
        self.reply_timeout_ns = reply_timeout_ns
        self.linger_ns = linger_ns
        self.bound: tuple[str, int] | None = None
        self._per_peer: dict[str, int] = {}

    @property
    def idle_timeout_ns(self) -> int:
        return self.timeout_ns

    def url(self, path: str = "/") -> str:
        if self.bound is None:
            raise RuntimeError("the server is not open")
        return format_url(self.bound[0], self.bound[1], path)

    def open(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
        """Bind, listen and join the loop; returns the URL of '/' with the bound port."""
        if not 0 <= port <= 65535:
            raise HttpServerError(f"port {port} out of range 0-65535")
        host = str(address)
        try:
            infos = socket.getaddrinfo(
                host,
                port,
                socket.AF_UNSPEC,
                socket.SOCK_STREAM,
                0,
                socket.AI_NUMERICHOST | socket.AI_PASSIVE,
            )
        except socket.gaierror:
            raise HttpServerError(f"not a numeric IP address: {host!r}") from None
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind(sockaddr)
            sock.listen(min(self.max_connections, 128))
        except OSError as exc:
            sock.close()
            where = format_url(host, port, "")
            raise HttpServerError(
                f"cannot listen on {where.removeprefix('http://')}: {exc.strerror or exc}"
            ) from None
        bound_host, bound_port = sock.getsockname()[:2]
        self.bound = (str(bound_host), int(bound_port))
        self._listen_on(sock)
        return self.url()

    # -- the base class's decisions -----------------------------------------------------

    def _busy_reply(self) -> bytes:
        return render(text_response(503, "busy: too many connections"))

    def _timeout_reply(self) -> bytes:
        return render(text_response(408, "timeout: no complete request"))

    def _refuse(self, sock: socket.socket) -> None:
        """Over the limit: answer 503 through the normal send-and-linger path, so the client
        sees the answer rather than a reset; a second, equal budget bounds these too, and
        past it the connection is simply closed."""
        self.counters["busy"] += 1
        if self._overflow >= self.max_connections:
            sock.close()
            return
        self._overflow += 1
        conn = _Conn(sock, time.monotonic_ns() + self.timeout_ns, reading=False, overflow=True)
        self._watch(conn)
        self.counters[status_class(503)] += 1
        self._send(conn, self._busy_reply())

    def _admit(self, sock: socket.socket, addr: object) -> _Conn | None:
        """Per-address cap first (that address's finished connections make room), then the
        global limit (any finished one, else the longest-silent request in progress)."""
        peer = peer_key(addr)
        if self._per_peer.get(peer, 0) >= self.max_per_address and not self._evict(peer):
            self.counters["per_address_limit"] += 1
            self._refuse(sock)
            return None
        if self._full() and not self._evict(None):
            self._refuse(sock)
            return None
        now = time.monotonic_ns()
        cap = now + self.request_timeout_ns
        conn = _Conn(sock, min(now + self.timeout_ns, cap), peer=peer, cap_ns=cap, last_rx_ns=now)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return conn

    def _evict(self, peer: str | None) -> bool:
        """Close one connection to make room: a lingering one (its reply is out), else --
        for the global limit only -- the request in progress that has been silent longest.
        A connection sending its reply is never evicted. False if nothing could go."""
        mine = [c for c in self._conns if not c.overflow and peer in (None, c.peer)]
        lingering = [c for c in mine if c.lingering]
        if lingering:
            self._drop(min(lingering, key=lambda c: c.deadline_ns))
            return True
        waiting = [c for c in mine if c.reading and c.out is None and not c.lingering]
        if peer is not None or not waiting:
            return False
        idle = min(waiting, key=lambda c: c.last_rx_ns)
        self.counters["evicted"] += 1
        send_best_effort(idle.sock, render(text_response(503, "busy: evicted for a newer client")))
        self._drop(idle)
        return True

    def _on_progress(self, conn: _Conn, now_ns: int) -> None:
        conn.deadline_ns = min(now_ns + self.timeout_ns, conn.cap_ns)

    def _send(self, conn: _Conn, data: bytes) -> None:
        """The reply phase gets its own absolute deadline (a slow reader cannot hold on)."""
        now = time.monotonic_ns()
        conn.cap_ns = now + self.reply_timeout_ns
        conn.deadline_ns = min(now + self.timeout_ns, conn.cap_ns)
        super()._send(conn, data)

    def _drop(self, conn: _Conn) -> None:
        if not conn.closed and conn.peer:
            left = self._per_peer.get(conn.peer, 0) - 1
            if left > 0:
                self._per_peer[conn.peer] = left
            else:
                self._per_peer.pop(conn.peer, None)
        super()._drop(conn)

    def _sent(self, conn: _Conn) -> None:
        self._linger(conn)

    def _expired(self, conn: _Conn) -> None:
        if conn.lingering:
            self._drop(conn)
        else:
            super()._expired(conn)

    # -- one connection -----------------------------------------------------------------

    def _on_readable(self, conn: _Conn) -> None:
        if conn.lingering:
            self._linger_read(conn)
            return
        want = self.head_limit + 1 - len(conn.buf)
        try:
            data = conn.sock.recv(max(1, min(want, 16384)))
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            if conn.buf:
                self.counters["incomplete"] += 1
            self._drop(conn)
            return
        conn.buf += data
        conn.last_rx_ns = time.monotonic_ns()
        self._on_progress(conn, conn.last_rx_ns)
        end = find_head_end(conn.buf)
        if end >= 0:
            self._handle(conn, bytes(conn.buf[:end]))
        elif len(conn.buf) > self.head_limit:
            status = 414 if b"\n" not in conn.buf else 431
            self._fail(conn, HttpError(status, f"request head longer than {self.head_limit} bytes"))

    def _handle(self, conn: _Conn, head: bytes) -> None:
        try:
            req = parse_request(head)
        except HttpError as exc:
            self._fail(conn, exc)
            return
        self.counters["requests"] += 1
        resp = dispatch(req, self.routes)
        self.counters[status_class(resp.status)] += 1
        self._send(conn, render(resp, head_only=req.method == "HEAD"))

    def _fail(self, conn: _Conn, exc: HttpError) -> None:
        """Peer error: counted (``bad_request`` or the size limits), answered, closed."""
        name = {413: "too_large", 414: "too_large", 431: "too_large", 505: "bad_version"}
        self.counters[name.get(exc.status, "bad_request")] += 1
        self.counters[status_class(exc.status)] += 1
        self._send(conn, render(text_response(exc.status, exc.message)))

    def _linger(self, conn: _Conn) -> None:
        """Half-close and wait for the client's FIN before closing.

        Closing a TCP socket with unread input (a pipelined request, a body we refused)
        makes the kernel send a reset, and the client may then lose the reply it has not
        read yet. So: FIN our side, discard whatever still arrives, close on the client's
        FIN, on ``DRAIN_LIMIT`` bytes or after ``linger_ns``.
        """
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        if self.linger_ns == 0:
            self._drop(conn)
            return
        conn.lingering = True
        conn.deadline_ns = time.monotonic_ns() + self.linger_ns
        self.loop.add_reader(conn.sock, functools.partial(self._on_readable, conn))
        conn.reading = True

    def _linger_read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > DRAIN_LIMIT:
            self._drop(conn)
