"""The NTS-KE client's TLS shell (RFC 8915 section 4): TLS 1.3, ALPN ``ntske/1``, the
server's certificate checked against the CA and the configured name, keys exported.

Why a helper thread: a key exchange is a TCP connect, a TLS handshake and one round trip,
all blocking in pyOpenSSL; the event loop has no writer callbacks to drive a non-blocking
handshake. ``KeRunner`` runs each exchange in a small bounded pool (two threads: a slow or
silent server cannot hold more than that, and each exchange has a deadline) and posts the
outcome back through a pipe the loop watches, so the engine is only touched on the loop.

Certificate checks: OpenSSL verifies the chain and the validity dates (``VERIFY_PEER``
with the configured CA file/directory, else the system's trusted CAs); then the leaf's
subjectAltName must name the configured host (DNS names, one leading wildcard label) or,
for an address, carry it as an IP SAN -- OpenSSL does not check names by itself. ``noval``
skips both (warned at config time and at each exchange).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL

from ntpy.core import ntsaead, ntske
from ntpy.core.ntskeclient import KeResult, client_request, parse_response

log = logging.getLogger("ntpy.nts")

KE_TIMEOUT_S = 10.0
MAX_PARALLEL = 2


class KeError(Exception):
    """The key exchange failed; the message says why, for the log and ``authdata``."""


@dataclass(frozen=True, slots=True)
class KeTarget:
    """Where and how to run one key exchange."""

    name: str
    """The name the certificate must carry (the configured host or address)."""
    address: str
    """The address to connect to (resolved by the shell)."""
    port: int = ntske.DEFAULT_PORT
    ca: str | None = None
    noval: bool = False
    aeads: tuple[int, ...] | None = None
    timeout_s: float = KE_TIMEOUT_S
    ntp_port: int = ntske.NTP_PORT
    """The NTP port unless the server negotiates another."""


@dataclass(frozen=True, slots=True)
class KeOutcome:
    """A successful exchange: the agreement and the two exported keys."""

    result: KeResult
    c2s: bytes
    s2c: bytes
    ntp_address: tuple[object, ...]
    """Where to send NTP: the negotiated server and port, resolved (in the helper thread:
    getaddrinfo blocks), else the key-exchange address and ``ntp_port``."""


def tls_context(target: KeTarget) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([ntske.ALPN])
    if target.noval:
        ctx.set_verify(SSL.VERIFY_NONE)
        return ctx
    try:
        if target.ca is None:
            ctx.set_default_verify_paths()
        elif os.path.isdir(target.ca):
            ctx.load_verify_locations(None, target.ca)
        else:
            ctx.load_verify_locations(target.ca)
    except SSL.Error as exc:
        raise KeError(f"cannot load the CA {target.ca}: {exc}") from exc
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
    return ctx


def name_matches(cert: x509.Certificate, name: str) -> bool:
    """The certificate's subjectAltName names ``name``: an IP SAN for an address, a DNS
    SAN (exact, or ``*.`` for exactly one leftmost label) for a host name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    wanted = name.rstrip(".").lower()
    for dns in san.get_values_for_type(x509.DNSName):
        pattern = dns.rstrip(".").lower()
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            head, tail = wanted.split(".", 1)
            if head and tail == pattern[2:]:
                return True
    return False


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise KeError("timed out")
    with selectors.DefaultSelector() as sel:
        sel.register(sock, events)
        if not sel.select(left):
            raise KeError("timed out")


def _retry(call: Callable[[], object], sock: socket.socket, deadline: float) -> object:
    while True:
        try:
            return call()
        except SSL.WantReadError:
            _wait(sock, selectors.EVENT_READ, deadline)
        except SSL.WantWriteError:
            _wait(sock, selectors.EVENT_WRITE, deadline)


def key_exchange(target: KeTarget) -> KeOutcome:
    """Run one key exchange (blocking, bounded by ``target.timeout_s``), or raise KeError."""
    deadline = time.monotonic() + target.timeout_s
    ctx = tls_context(target)
    try:
        sock = socket.create_connection((target.address, target.port), timeout=target.timeout_s)
    except OSError as exc:
        raise KeError(f"cannot connect to {target.address} port {target.port}: {exc}") from exc
    try:
        sock.setblocking(False)
        conn = SSL.Connection(ctx, sock)
        if not _is_ip(target.name):
            conn.set_tlsext_host_name(target.name.encode("idna"))
        conn.set_connect_state()
        try:
            _retry(conn.do_handshake, sock, deadline)
        except SSL.Error as exc:
            raise KeError(f"TLS handshake with {target.name} failed: {_ssl_text(exc)}") from exc
        if conn.get_alpn_proto_negotiated() != ntske.ALPN:
            raise KeError(f"{target.name} did not agree to ALPN ntske/1")
        peer = conn.get_peer_certificate()
        if not target.noval and (
            peer is None or not name_matches(peer.to_cryptography(), target.name)
        ):
            raise KeError(f"the certificate of {target.address} does not name {target.name}")
        offered = target.aeads or ntsaead.supported()
        _retry(lambda: conn.sendall(client_request(offered)), sock, deadline)
        buf = b""
        while (end := ntske.message_length(buf)) is None:
            try:
                chunk = _retry(lambda: conn.recv(4096), sock, deadline)
            except SSL.ZeroReturnError:
                chunk = b""
            assert isinstance(chunk, bytes)
            if not chunk:
                raise KeError("the server closed the connection before its response was whole")
            buf += chunk
        result = parse_response(buf[:end], offered)
        c2s, s2c = result.session_keys(conn.export_keying_material)
        return KeOutcome(result, c2s, s2c, _ntp_address(target, result))
    except ntske.NtsKeError as exc:
        raise KeError(str(exc)) from exc
    except (SSL.Error, OSError) as exc:
        raise KeError(f"key exchange with {target.name} failed: {_ssl_text(exc)}") from exc
    finally:
        sock.close()


def _ntp_address(target: KeTarget, result: KeResult) -> tuple[object, ...]:
    host = result.server or target.address
    port = result.port or target.ntp_port
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise KeError(f"cannot resolve the negotiated NTP server {host}: {exc}") from exc
    return tuple(infos[0][4])


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _ssl_text(exc: Exception) -> str:
    """OpenSSL's error list as one readable line (``certificate verify failed``...)."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args and isinstance(args[0], tuple):
        return "; ".join(str(entry[-1]) for entry in args)
    return str(exc) or type(exc).__name__


Done = Callable[[KeOutcome | KeError], None]


class KeRunner:
    """Runs key exchanges in a bounded thread pool; ``done`` callbacks run on the loop."""

    def __init__(self, add_reader: Callable[[object, Callable[[], None]], None]) -> None:
        self._pool = ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="ntske")
        self._results: queue.SimpleQueue[tuple[Done, KeOutcome | KeError]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        add_reader(self._wake_r, self._drain)
        self._lock = threading.Lock()
        self.closed = False

    def submit(self, target: KeTarget, done: Done) -> None:
        self._pool.submit(self._run, target, done)

    def _run(self, target: KeTarget, done: Done) -> None:
        outcome: KeOutcome | KeError
        try:
            outcome = key_exchange(target)
        except KeError as exc:
            outcome = exc
        except Exception as exc:  # a bug must not kill the pool thread silently
            log.exception("NTS key exchange with %s crashed", target.name)
            outcome = KeError(f"internal error: {exc}")
        self._results.put((done, outcome))
        with self._lock:  # close() must not close the pipe under our write
            if self.closed:
                return
            # A full pipe is fine: the loop drains every result at each wake-up.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 512)
        while True:
            try:
                done, outcome = self._results.get_nowait()
            except queue.Empty:
                return
            if not self.closed:
                done(outcome)

    def close(self, remove_reader: Callable[[object], None]) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            remove_reader(self._wake_r)
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._pool.shutdown(wait=False, cancel_futures=True)
