"""The NTS-KE listener (``daemon.ntske_server.KeListener``) on a real loop and loopback
TCP, in-process (127.0.144.1).

What it proves, now that TLS runs over memory BIOs and we do the socket I/O: a whole
exchange gives eight cookies that open to the keys the client exported (the exporter
works on the BIO-backed session), also when the client dribbles its bytes a few at a
time; the context keeps no session cache and sends no encrypted session tickets; a
request over ``MAX_MESSAGE_LEN`` is dropped (``nts_ke_failed_too_long``); a client without
ALPN ntske/1 or offering only TLS 1.2 is refused; connections beyond the limit are
closed before any TLS work and idle ones are swept at their deadline.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ntpy.core import ntske
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntskeclient import client_request, parse_response
from ntpy.core.ntskeserver import KeServerConfig
from ntpy.daemon.loop import Loop
from ntpy.daemon.ntske_server import KeListener, load_tls
from ntpy.daemon.udp import ListenAddress

SSL = pytest.importorskip("OpenSSL.SSL")

HOST = "127.0.144.1"


def make_pair(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nts")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Running:
    def __init__(self, tmp: Path, **limits: int) -> None:
        self.cert, key = make_pair(tmp)
        self.loop = Loop()
        self.ring = CookieKeys()
        self.ring.rotate(1, os.urandom)
        ctx = load_tls(str(self.cert), str(key))
        self.listener = KeListener(
            self.loop, ctx, KeServerConfig(ntp_port=123), lambda: self.ring, **limits
        )
        self.listener.open([ListenAddress(HOST, 0)])
        self.port = self.listener.bound[0].port
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.stop()
        self.loop.call_later(0, lambda: None)
        self.thread.join(5)
        self.listener.close()
        self.loop.close()

    def client(self, *, alpn: bool = True, tls12: bool = False) -> SSL.Connection:
        ctx = SSL.Context(SSL.TLS_METHOD)
        if tls12:
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        if alpn:
            ctx.set_alpn_protos([ntske.ALPN])
        ctx.load_verify_locations(str(self.cert))
        ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds waits
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
        conn = SSL.Connection(ctx, sock)
        conn.set_connect_state()
        return conn

    def count(self, name: str, at_least: int = 1, wait_s: float = 3.0) -> int:
        deadline = time.monotonic() + wait_s
        while self.listener.counters[name] < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.listener.counters[name]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def read_all(conn: SSL.Connection) -> bytes:
    buf = b""
    while ntske.message_length(buf) is None:
        buf += conn.recv(4096)
    return buf


def test_exchange_cookies_open_to_the_exported_keys(running: Running) -> None:
    conn = running.client()
    conn.do_handshake()
    conn.sendall(client_request())
    result = parse_response(read_all(conn))
    c2s, s2c = result.session_keys(conn.export_keying_material)
    assert len(result.cookies) == ntske.MAX_COOKIES
    for cookie in result.cookies:
        contents = running.ring.open(cookie)
        assert contents is not None and (contents.c2s, contents.s2c) == (c2s, s2c)
    assert len({c[4:20] for c in result.cookies}) == ntske.MAX_COOKIES  # distinct nonces
    assert running.count("nts_ke_ok") == 1


def test_dribbled_bytes_still_make_an_exchange(running: Running) -> None:
    """Every flight from the client in 7-byte TCP segments: partial records are fed to
    OpenSSL as they come."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_alpn_protos([ntske.ALPN])
    ctx.load_verify_locations(str(running.cert))
    tls = SSL.Connection(ctx, None)
    tls.set_connect_state()
    sock = socket.create_connection((HOST, running.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pump_out() -> None:
        try:
            data = tls.bio_read(65536)
        except SSL.WantReadError:
            return
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
            time.sleep(0.001)

    buf = b""
    sent = False
    while ntske.message_length(buf) is None:
        try:
            if not sent:
                tls.do_handshake()
                tls.sendall(client_request())
                sent = True
            buf += tls.recv(4096)
            continue
        except SSL.WantReadError:
            pump_out()
        tls.bio_write(sock.recv(65536))
    assert len(parse_response(buf).cookies) == ntske.MAX_COOKIES
    sock.close()


def test_context_keeps_no_sessions(running: Running) -> None:
    ctx = running.listener.context
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert ctx.set_options(0) & SSL.OP_NO_TICKET


def test_oversized_request_is_dropped(running: Running) -> None:
    conn = running.client()
    conn.do_handshake()
    record = (0x4000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # unknown, no end
    conn.sendall(record + bytes(ntske.MAX_MESSAGE_LEN))
    assert running.count("nts_ke_failed_too_long") == 1
    with pytest.raises((SSL.Error, OSError)):
        read_all(conn)


@pytest.mark.parametrize("kind", ["alpn", "tls"])
def test_wrong_protocol_is_refused(running: Running, kind: str) -> None:
    """No ALPN at all (the handshake completes; nothing is answered) or TLS 1.2 only
    (the handshake fails with OpenSSL's alert)."""
    conn = running.client(alpn=kind != "alpn", tls12=kind == "tls")
    with pytest.raises(SSL.Error):
        conn.do_handshake()
        conn.sendall(client_request())
        read_all(conn)
    assert running.count(f"nts_ke_failed_{kind}") == 1
    assert running.listener.counters["nts_ke_ok"] == 0


def test_limit_and_deadline(tmp_path: Path) -> None:
    r = Running(tmp_path, max_connections=2, timeout_ns=1_000_000_000)
    try:
        idle = [socket.create_connection((HOST, r.port), timeout=5) for _ in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection((HOST, r.port), timeout=5)
        assert extra.recv(16) == b""  # closed before any TLS work
        assert r.count("nts_ke_refused") == 1
        assert r.count("nts_ke_timeout", 2, wait_s=4) == 2
        assert all(s.recv(16) == b"" for s in idle)
        for s in [*idle, extra]:
            s.close()
    finally:
        r.stop()
