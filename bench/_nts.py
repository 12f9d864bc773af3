"""NTS pieces of the benchmark: servers with NTS on, a lean key-exchange client, and a pool
of pre-built NTS requests.

Why a module of its own: ``nts_rate.py`` drives the load and prints the table; what an NTS
server needs to run (a certificate, its config lines) and what a client needs to talk to
it (a key exchange, requests sealed under the exported key) are set up here once, so the
generator's hot loop only sends bytes it already has.

The key-exchange client is the bench's own (not the daemon's ``KeRunner``) because each
exchange must come from a chosen source address: both servers rate-limit per address, and
the benchmark measures what they serve, not what they refuse. It uses ntpy's sans-IO core
for the records and the exporter, pyOpenSSL for TLS 1.3, and checks the certificate
against the test CA made here (ntpy's ``tests/interop/nts_certs.py``).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from _servers import REPO_DIR, ServerSpec, chronyd_spec, ntpy_spec

sys.path.insert(0, str(REPO_DIR / "src"))
sys.path.insert(0, str(REPO_DIR / "tests" / "interop"))

from OpenSSL import SSL

from ntpy.core import ntsaead, ntske
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntsef import NtsError
from ntpy.core.ntskeclient import client_request, parse_response
from ntpy.core.packet import PacketError, decode

KE_TIMEOUT_S = 5.0
"""A key exchange that takes longer counts as failed (both servers allow about as long)."""

OFFERED = (ntsaead.AEAD_AES_SIV_CMAC_256,)
"""The AEAD the clients offer: the mandatory one (RFC 8915 5.1), and the one both servers
compute, so both do the same cryptography per request."""

NTS_RATE_INTERVAL_LOG2 = -19
"""chronyd's ``ntsratelimit``: its most generous setting, so no key exchange is refused."""


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, addrs: tuple[str, ...]) -> Certs:
    """A test CA and a server certificate naming ``addrs`` (IP SANs), as PEM files."""
    from nts_certs import make_ca, make_server_cert

    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(directory)
    cert, key = make_server_cert(directory, ca_key, ips=addrs)
    return Certs(ca, cert, key)


def ntpy_nts_spec(addr: str, port: int, ke_port: int, certs: Certs, template: str) -> ServerSpec:
    """ntpy's daemon with ``nts enable`` (which serves all NTP in the main process)."""
    spec = ntpy_spec(addr, port, template, workers="1", name="ntpy")
    conf = spec.workdir / "ntp.conf"
    conf.write_text(
        conf.read_text()
        + f"nts enable\nnts cert {certs.cert}\nnts key {certs.key}\n"
        + f"nts cookie {spec.workdir}/\nnts listen {addr}:{ke_port}\n"
    )
    return spec


def chronyd_nts_spec(addr: str, port: int, ke_port: int, certs: Certs, exe: str) -> ServerSpec:
    """chronyd (-x, as always) with its NTS server on: default ``ntsprocesses`` (one
    key-exchange helper), cookie keys dumped in its private directory."""
    spec = chronyd_spec(addr, port, exe)
    conf = spec.workdir / "chrony.conf"
    conf.write_text(
        conf.read_text()
        + f"ntsservercert {certs.cert}\nntsserverkey {certs.key}\nntsport {ke_port}\n"
        + f"ntsdumpdir {spec.workdir}\n"
        + f"ntsratelimit interval {NTS_RATE_INTERVAL_LOG2} burst 255 leak 2\n"
    )
    return spec


@dataclass(frozen=True, slots=True)
class KeKeys:
    """What one key exchange gave: the AEAD, the two keys, the cookies."""

    aead: int
    c2s: bytes
    s2c: bytes
    cookies: tuple[bytes, ...]


def tls_context(ca: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([ntske.ALPN])
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
    return ctx


def ke_request() -> bytes:
    """The request message every bench client sends: ntpy's own, offering ``OFFERED``."""
    return client_request(OFFERED)


def key_exchange(ctx: SSL.Context, addr: str, port: int, source: str) -> KeKeys:
    """One whole key exchange from ``source``; raises OSError, SSL.Error or NtsKeError."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Without NODELAY a small TLS record can wait for a delayed ACK (40 ms), and the
        # exchange rate would measure the ACK timer, not the server.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.settimeout(KE_TIMEOUT_S)
        sock.connect((addr, port))
        sock.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds waits
        timeout = struct.pack("ll", int(KE_TIMEOUT_S), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        conn = SSL.Connection(ctx, sock)
        conn.set_connect_state()
        conn.do_handshake()
        if conn.get_alpn_proto_negotiated() != ntske.ALPN:
            raise OSError("the server did not agree to ALPN ntske/1")
        conn.sendall(client_request(OFFERED))
        buf = b""
        while (end := ntske.message_length(buf)) is None:
            try:
                chunk = conn.recv(4096)
            except SSL.ZeroReturnError:
                chunk = b""
            if not chunk:
                raise OSError("the server closed before its response was whole")
            buf += chunk
        result = parse_response(buf[:end], OFFERED)
        c2s, s2c = result.session_keys(conn.export_keying_material)
        return KeKeys(result.aead, c2s, s2c, result.cookies)
    finally:
        sock.close()


@dataclass(slots=True)
class RequestPool:
    """Pre-built NTS requests: ``datagrams[i]`` carries transmit timestamp ``origins[i]``
    (echoed in the reply's origin field, so a reply names its request) and Unique
    Identifier ``uids[i]``, sealed with the keys of ``keys[owner[i]]``.

    Every request carries one cookie and no placeholder, as a client in steady state sends
    (each reply brings one new cookie). A cookie is reused across requests of the pool:
    both servers accept that (they keep no record of cookies seen), and it is what lets a
    pool of a few thousand requests stand for an endless stream."""

    datagrams: list[bytes]
    origins: list[bytes]
    uids: list[bytes]
    owner: list[int]
    keys: list[KeKeys]


def build_pool(keys: list[KeKeys], per_session: int, salt: int) -> RequestPool:
    """``per_session`` requests for each key exchange's session, each with its own
    transmit timestamp (``salt`` keeps pools of different processes apart)."""
    pool = RequestPool([], [], [], [], keys)
    header = bytearray(48)
    header[0] = (4 << 3) | 3
    for k, kx in enumerate(keys):
        session = NtsClientSession(kx.aead, kx.c2s, kx.s2c, kx.cookies, os.urandom)
        for _ in range(per_session):
            # Keep the jar full so the request asks for no extra cookie (steady state).
            session.cookies.extend(kx.cookies[: 8 - len(session.cookies)])
            origin = struct.pack("!HHI", salt & 0xFFFF, k & 0xFFFF, len(pool.origins))
            header[40:48] = origin
            datagram = session.protect(bytes(header))
            assert session.pending is not None
            pool.datagrams.append(datagram)
            pool.origins.append(origin)
            pool.uids.append(session.pending)
            pool.owner.append(k)
    return pool


def verify_reply(pool: RequestPool, index: int, data: bytes) -> str | None:
    """None if ``data`` is an authentic reply to request ``index``, else why not."""
    kx = pool.keys[pool.owner[index]]
    session = NtsClientSession(kx.aead, kx.c2s, kx.s2c, (), os.urandom)
    session.pending = pool.uids[index]
    try:
        session.verify(data, decode(data))
    except (NtsError, PacketError) as exc:
        return str(exc)
    return None
