"""The NTS-KE listener: TLS 1.3 over TCP on the daemon's own loop (RFC 8915 section 4).

Everything NTS-KE means is ``ntpy.core.ntskeserver``; this module only moves bytes
through pyOpenSSL (stdlib ``ssl`` has no TLS exporter). It runs on the same ``Loop`` as
NTP serving and must never stall it, so:

- TLS runs over memory BIOs and we do the socket I/O ourselves, never blocking
  (``MSG_DONTWAIT``): one ``recv`` per readable event feeds whatever arrived to OpenSSL
  at once (its own socket BIO reads a 5-byte record header, then the record: two
  syscalls per record), and each flight leaves in one ``send``: the handshake flight
  while the handshake is incomplete, then the session tickets, the response and
  close_notify together (with a socket BIO they were five writes). A send the socket
  cannot take whole is finished by a short timer (the loop watches readers only);
- at most ``max_connections`` connections live at a time. One more is accepted and
  closed at once, before any TLS work (counted ``nts_ke_refused``): an attacker holding
  idle connections costs us file descriptors up to the limit, never CPU or NTP service
  (CVE-2024-38528 was the unbounded version of this);
- every connection has one deadline for handshake, request and response together
  (``timeout_ns``); a sweep each second closes the late ones (``nts_ke_timeout``);
- a request is read only until ``ntske.message_length`` says it is whole, and that
  function refuses more than ``MAX_MESSAGE_LEN`` bytes; at most ``READ_SIZE`` bytes are
  taken from the socket per wake-up, and OpenSSL consumes them before the next.

The TLS context is TLS 1.3 only with ALPN ``ntske/1``; :func:`load_tls` refuses an
expired, not yet valid or key-mismatched certificate with ``NtsSetupError``, which is a
``StartupError`` at start and an error log (the old context kept) on SIGHUP. Session
resumption is off: an NTS-KE client runs one exchange per connection and never resumes
(RFC 8915 section 4 gives it nothing to resume for), so the server keeps no session cache
and its tickets are the small stateful kind that nothing will ever look up, not the
encrypted session state OpenSSL seals by default (pyOpenSSL cannot set the ticket count
to zero).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from OpenSSL import SSL

from ntpy.config.ntscert import CertificateError, check_certificate
from ntpy.core import ntske
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntskeserver import KeServerConfig, serve_message
from ntpy.daemon.loop import Loop
from ntpy.daemon.udp import ListenAddress

log = logging.getLogger("ntpy.nts")

MAX_CONNECTIONS = 64
TIMEOUT_NS = 5_000_000_000
RETRY_NS = 10_000_000
READ_SIZE = 16384
"""Bytes taken from a connection's socket per wake-up: a ClientHello with a post-quantum
key share (~1.8 KB) or a whole request arrives in one read."""
_NS = 1_000_000_000
_DONTWAIT = socket.MSG_DONTWAIT


class NtsSetupError(Exception):
    """The certificate, key or listener cannot be used: a message for the admin."""


def load_tls(cert: str, key: str, now: datetime | None = None) -> SSL.Context:
    """A server context for ``cert`` (the full chain, leaf first) and ``key``. The checks
    are ``config.ntscert``'s, which ``check-config`` runs too."""
    try:
        check_certificate(cert, key, now)
    except CertificateError as exc:
        raise NtsSetupError(str(exc)) from None
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    try:
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise NtsSetupError(
            f"nts cert {cert} / nts key {key}: unusable or not a matching pair ({exc})"
        ) from None
    ctx.set_alpn_select_callback(_select_alpn)
    # No resumption (module docstring): no session cache, no encrypted session tickets.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


def _select_alpn(_conn: SSL.Connection, protos: list[bytes]) -> Any:
    """``ntske/1`` or no overlap (the handshake then fails: RFC 8915 section 4)."""
    return ntske.ALPN if ntske.ALPN in protos else SSL.NO_OVERLAPPING_PROTOCOLS


class _Conn:
    """One connection: its socket, its TLS state over memory BIOs, the request read so
    far, and (once answered) the bytes still to send before it closes."""

    __slots__ = ("buf", "closing", "deadline", "fd", "out", "sock", "stalled", "tls")

    def __init__(self, sock: socket.socket, tls: SSL.Connection, deadline: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.deadline = deadline
        self.buf = b""
        self.out: bytes | None = None
        """Bytes the socket has not taken yet (None: nothing pending)."""
        self.closing = False
        """The response is written: once ``out`` is sent, the connection closes."""
        self.stalled = False
        """A send would block: reads are not watched until the timer has sent ``out``."""


class KeListener:
    """Accepts NTS-KE connections on ``loop`` and answers each with one response."""

    def __init__(
        self,
        loop: Loop,
        context: SSL.Context,
        config: KeServerConfig,
        ring: Callable[[], CookieKeys],
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout_ns: int = TIMEOUT_NS,
    ) -> None:
        self.loop = loop
        self.context = context
        self.config = config
        self.ring = ring
        self.max_connections = max_connections
        self.timeout_ns = timeout_ns
        self.listeners: list[socket.socket] = []
        self.bound: list[ListenAddress] = []
        self.conns: dict[int, _Conn] = {}
        self.counters: Counter[str] = Counter()

    def open(
        self,
        addresses: Sequence[ListenAddress],
        adopt: Callable[[ListenAddress], socket.socket | None] | None = None,
    ) -> None:
        """Listen on every address; ``adopt`` returns the socket systemd passed for one
        (socket activation), which is used as it is."""
        for address in addresses:
            passed = adopt(address) if adopt is not None else None
            sock = passed or socket.socket(address.family, socket.SOCK_STREAM)
            try:
                if passed is None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if address.family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((address.host, address.port))
                    sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                self.close()
                raise NtsSetupError(f"NTS-KE listener {address}: {exc.strerror}") from None
            self.listeners.append(sock)
            host, port = sock.getsockname()[:2]
            self.bound.append(ListenAddress(host, port))
            self.loop.add_reader(sock, self._acceptor(sock))
        self.loop.call_every(_NS, self._sweep)

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        for sock in self.listeners:
            with contextlib.suppress(KeyError, ValueError):
                self.loop.remove_reader(sock)
            sock.close()
        self.listeners.clear()

    def _acceptor(self, listener: socket.socket) -> Callable[[], None]:
        return lambda: self._accept(listener)

    def _stepper(self, conn: _Conn) -> Callable[[], None]:
        return lambda: self._step(conn)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(16):  # a few per wake-up: NTP gets the loop back soon
            try:
                sock, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: count, try again next wake-up
                self.counters[f"nts_ke_accept_{exc.errno}"] += 1
                return
            if len(self.conns) >= self.max_connections:
                self.counters["nts_ke_refused"] += 1
                sock.close()
                continue
            # The socket stays in blocking mode: every recv/send passes MSG_DONTWAIT.
            tls = SSL.Connection(self.context, None)
            tls.set_accept_state()
            conn = _Conn(sock, tls, time.monotonic_ns() + self.timeout_ns)
            self.conns[conn.fd] = conn
            self.loop.add_reader(sock, self._stepper(conn))

    def _sweep(self) -> None:
        now = time.monotonic_ns()
        for fd, conn in list(self.conns.items()):
            if conn.deadline <= now:
                self.counters["nts_ke_timeout"] += 1
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.loop.remove_reader(conn.sock)
        conn.sock.close()

    def _fail(self, conn: _Conn, reason: str) -> None:
        self.counters[f"nts_ke_failed_{reason}"] += 1
        self._drop(conn.fd)

    def _pending(self, conn: _Conn) -> bytes:
        """What OpenSSL has written to the outgoing memory BIO since the last call."""
        out = b""
        try:
            while True:
                out += conn.tls.bio_read(READ_SIZE)
        except SSL.WantReadError:
            return out

    def _step(self, conn: _Conn) -> None:
        """Resume the connection: handshake, read the request, answer it."""
        if self.conns.get(conn.fd) is not conn or conn.stalled:
            return
        try:
            data = conn.sock.recv(READ_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._fail(conn, "tls")
            return
        if not data:
            self._fail(conn, "closed")
            return
        tls = conn.tls
        try:
            tls.bio_write(data)
            while True:
                chunk = tls.recv(READ_SIZE)
                if not chunk:
                    self._fail(conn, "closed")
                    return
                conn.buf += chunk
                end = ntske.message_length(conn.buf)
                if end is not None:
                    break
        except SSL.WantReadError:
            # Mid-handshake: our flight goes now. After the client's Finished the only
            # output is session tickets: they wait and leave with the response.
            if tls.get_peer_finished() is None:
                conn.out = self._pending(conn) or None
                if conn.out is not None:
                    self._flush(conn)
            return
        except SSL.ZeroReturnError:
            self._fail(conn, "closed")
            return
        except ntske.NtsKeError:
            self._fail(conn, "too_long")
            return
        except SSL.Error:
            # The alert OpenSSL wrote (no ALPN overlap, TLS 1.2 offered, ...): best effort.
            with contextlib.suppress(OSError):
                conn.sock.send(self._pending(conn), _DONTWAIT)
            self._fail(conn, "tls")
            return
        if tls.get_alpn_proto_negotiated() != ntske.ALPN:
            self._fail(conn, "alpn")
            return

        def export(context: bytes, length: int) -> bytes:
            return bytes(tls.export_keying_material(ntske.EXPORTER_LABEL, length, context))

        reply = serve_message(conn.buf[:end], self.config, self.ring(), export, os.urandom)
        if reply.error is not None:
            self.counters[f"nts_ke_failed_{reply.error.name.lower()}"] += 1
            log.debug("NTS-KE error sent: %s", reply.reason)
        elif reply.aead is None:
            self.counters["nts_ke_failed_no_common"] += 1
        else:
            self.counters["nts_ke_ok"] += 1
        try:
            tls.sendall(reply.message)  # into the memory BIO: never WantWrite
            with contextlib.suppress(SSL.Error):
                tls.shutdown()  # close_notify: the client reads to the end of the stream
        except SSL.Error:
            self._fail(conn, "tls")
            return
        conn.out = self._pending(conn)
        conn.closing = True
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        """Send ``out``. What the socket cannot take now (a peer that does not read) is
        retried by a timer, and nothing more is read meanwhile; once all is sent, a
        connection that has its response closes."""
        out = conn.out or b""
        try:
            while out:
                out = out[conn.sock.send(out, _DONTWAIT) :]
        except (BlockingIOError, InterruptedError):
            conn.out = out
            if not conn.stalled:  # stop watching reads meanwhile: no busy loop
                conn.stalled = True
                self.loop.remove_reader(conn.sock)
            self.loop.call_later(RETRY_NS, self._flusher(conn))
            return
        except OSError:
            self._fail(conn, "tls")
            return
        conn.out = None
        if conn.closing:
            self._drop(conn.fd)
        elif conn.stalled:
            conn.stalled = False
            self.loop.add_reader(conn.sock, self._stepper(conn))

    def _flusher(self, conn: _Conn) -> Callable[[], None]:
        def retry() -> None:
            if self.conns.get(conn.fd) is conn and conn.out is not None:
                self._flush(conn)

        return retry
