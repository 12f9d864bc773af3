"""The sans-IO NTS core against a real chronyd, both ways, before the daemon wires it in.

Why now: the record codec, the exporter context, the extension-field layout and the
cookie refill are only right if a peer that was not written with them agrees. A test-only
TLS 1.3 shell (pyOpenSSL, ALPN ``ntske/1``) moves the bytes; everything NTS is the core's.
- ntpy core as client of chronyd's NTS server: key exchange (port negotiation included),
  authenticated exchanges refilling the cookie jar with placeholders, a flipped reply bit
  refused, a bogus cookie answered with an NTS NAK that the client recognizes;
- chronyd (``-Q``: it only measures) as client of the core's server: key exchange, then
  authenticated replies it accepts as a measurement.
Skipped without pyOpenSSL (the TLS slice adds it) or chronyd. Addresses: 127.0.122.10-11.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ntpy.core import ntske
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntsef import Failure, NtsError, check_request, seal_reply
from ntpy.core.ntskeclient import KeResult, client_request, parse_response
from ntpy.core.ntskeserver import KeServerConfig, serve_message
from ntpy.core.packet import (
    MODE_CLIENT,
    MODE_SERVER,
    Packet,
    decode,
    decode_trailer,
    encode,
)

from .chrony_server import chrony_server
from .clients import chronyd_nts_measure, ntp_now

SSL = pytest.importorskip("OpenSSL.SSL")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("chronyd") is None, reason="chronyd not installed"),
]

CHRONY_HOST, OUR_HOST = "127.0.122.10", "127.0.122.11"
NTP_PORT, KE_PORT = 12322, 14460


def make_cert(directory: Path, ip: str) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    names = ["-subj", "/CN=nts", "-addext", f"subjectAltName=IP:{ip}"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            *curve,
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            *names,
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def tls_context(cert: Path, key: Path | None = None) -> object:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if key is None:  # client: trust exactly this certificate
        ctx.set_alpn_protos([ntske.ALPN])
        ctx.load_verify_locations(str(cert))
        ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: ok)
    else:
        ctx.use_privatekey_file(str(key))
        ctx.use_certificate_file(str(cert))
        ctx.set_alpn_select_callback(
            lambda _c, protos: ntske.ALPN if ntske.ALPN in protos else SSL.NO_OVERLAPPING_PROTOCOLS
        )
    return ctx


def read_message(conn: object) -> bytes:
    buf = b""
    while (end := ntske.message_length(buf)) is None:
        buf += conn.recv(4096)  # type: ignore[attr-defined]
    return buf[:end]


def key_exchange(host: str, cert: Path) -> tuple[KeResult, NtsClientSession]:
    sock = socket.create_connection((host, KE_PORT), timeout=5)
    sock.settimeout(None)
    conn = SSL.Connection(tls_context(cert), sock)
    conn.set_connect_state()
    conn.do_handshake()
    assert conn.get_alpn_proto_negotiated() == ntske.ALPN
    conn.sendall(client_request())
    result = parse_response(read_message(conn))
    c2s, s2c = (
        conn.export_keying_material(
            ntske.EXPORTER_LABEL, result.key_length, ntske.exporter_context(result.exporter_aead, d)
        )
        for d in ntske.Direction
    )
    conn.close()
    return result, NtsClientSession(result.aead, c2s, s2c, result.cookies, os.urandom)


def request_header() -> bytes:
    return encode(Packet(0, 4, MODE_CLIENT, 0, 6, -20, 0, 0, 0, 0, 0, 0, ntp_now()))


def test_core_client_against_chronyd_server(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, CHRONY_HOST)
    conf = [f"ntsserverkey {key}", f"ntsservercert {cert}", f"ntsport {KE_PORT}"]
    conf.append(f"ntsdumpdir {tmp_path}")
    with chrony_server(CHRONY_HOST, NTP_PORT, stratum=3, extra_conf=conf):
        result, session = key_exchange(CHRONY_HOST, cert)
        assert len(result.cookies) == 8 and result.port == NTP_PORT
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(3)
        try:

            def ask() -> bytes:
                request = session.protect(request_header())
                udp.sendto(request, (CHRONY_HOST, NTP_PORT))
                reply, _ = udp.recvfrom(4096)
                assert len(reply) <= len(request)
                return reply

            for i in range(6):
                if i == 3:  # spend cookies: the next request carries placeholders
                    for _ in range(5):
                        session.cookies.pop()
                reply = ask()
                session.verify(reply, decode(reply))
                assert decode(reply).stratum == 3 and len(session.cookies) == 8
            bad = bytearray(ask())
            bad[40] ^= 1  # the transmit timestamp
            with pytest.raises(NtsError) as err:
                session.verify(bytes(bad), decode(bytes(bad)))
            assert err.value.failure is Failure.BAD_AUTH
            session.cookies.appendleft(bytes(len(result.cookies[0])))
            nak = ask()
            with pytest.raises(NtsError) as err:
                session.verify(nak, decode(nak))
            assert err.value.failure is Failure.NAK and session.needs_key_exchange
        finally:
            udp.close()


def serve(cert: Path, key: Path, stop: threading.Event, stats: dict[str, int]) -> None:
    """The test's shell around the core server: one TLS listener, one UDP socket."""
    keys = CookieKeys()
    keys.rotate(time.time_ns(), os.urandom)
    config = KeServerConfig(ntp_port=NTP_PORT)
    ctx = tls_context(cert, key)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((OUR_HOST, KE_PORT))
        tcp.listen()
        udp.bind((OUR_HOST, NTP_PORT))
        while not stop.is_set():
            ready, _, _ = select.select([tcp, udp], [], [], 0.2)
            if tcp in ready:
                sock, _ = tcp.accept()
                conn = SSL.Connection(ctx, sock)
                conn.set_accept_state()
                conn.do_handshake()

                def export(context: bytes, n: int, conn: object = conn) -> bytes:
                    return conn.export_keying_material(ntske.EXPORTER_LABEL, n, context)  # type: ignore[attr-defined, no-any-return]

                reply = serve_message(read_message(conn), config, keys, export, os.urandom)
                conn.sendall(reply.message)
                conn.shutdown()
                conn.close()
                stats["ke" if reply.aead else "ke_failed"] += 1
            if udp in ready:
                data, addr = udp.recvfrom(4096)
                rx = ntp_now()
                request = decode(data)
                fields, _mac, mac_offset = decode_trailer(data, request.version)
                try:
                    nts = check_request(data, fields, mac_offset, keys)
                except NtsError as exc:
                    stats[exc.failure.value] = stats.get(exc.failure.value, 0) + 1
                    continue
                if nts is None:
                    stats["plain"] += 1
                    continue
                org, xmt = request.transmit_ts, ntp_now()
                header = encode(Packet(0, 4, MODE_SERVER, 2, 6, -20, 0, 0, 1, rx, org, rx, xmt))
                reply_bytes = seal_reply(header, nts, keys, os.urandom)
                assert len(reply_bytes) <= len(data)
                udp.sendto(reply_bytes, addr)
                stats["nts"] += 1


def test_chronyd_client_against_core_server(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, OUR_HOST)
    stats = {"ke": 0, "ke_failed": 0, "nts": 0, "plain": 0}
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(cert, key, stop, stats), daemon=True)
    server.start()
    time.sleep(0.3)
    try:
        text = chronyd_nts_measure(tmp_path, OUR_HOST, KE_PORT, cert)
    finally:
        stop.set()
        server.join(5)
    assert "System clock wrong by" in text, text
    assert f"changed port to {NTP_PORT}" in text, text
    assert stats["ke"] == 1 and stats["nts"] >= 1 and stats["plain"] == 0, stats
