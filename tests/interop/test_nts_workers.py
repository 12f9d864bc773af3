"""NTS with ``workers 2`` in the real daemon: every worker answers NTS with the main's ring.

What it proves: after one key exchange with the main's KE listener, NTS requests from
many source addresses (the reuseport BPF program spreads them over both workers, as
``worker_index`` predicts) are all answered with replies that verify; the workers' NTS
counters are summed in the main's. Then the ring changes under the daemon (``rotate 0``:
the file is replaced and SIGHUP re-reads it): the key exchange hands out cookies under
the new key, and every worker opens them at once -- the ring reached the workers before
the KE issued a single cookie under it -- while cookies under the previous key still
work. Addresses: 127.0.127.1 (server), 127.0.127.10-59 (clients).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from ntpy.core import ntske
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntskeclient import client_request, parse_response
from ntpy.core.packet import MODE_CLIENT, Packet, decode, encode
from ntpy.daemon.reuseport import worker_index

from .clients import ntp_now
from .ntpy_daemon import running_ntpy
from .nts_certs import make_ca, make_server_cert
from .test_workers_process import control, worker_pids

SSL = pytest.importorskip("OpenSSL.SSL")
pytestmark = pytest.mark.interop

HOST = "127.0.127.1"
NTP_PORT, KE_PORT = 12427, 14427
SOURCES = [f"127.0.127.{i}" for i in range(10, 60)]


def tls_context(ca: Path) -> object:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([ntske.ALPN])
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: ok)
    return ctx


def key_exchange(ca: Path) -> tuple[list[bytes], NtsClientSession]:
    """One NTS-KE with the daemon: (the cookies, a session holding them)."""
    sock = socket.create_connection((HOST, KE_PORT), timeout=5)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds the wait
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    conn = SSL.Connection(tls_context(ca), sock)
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(client_request())
    buf = b""
    while (end := ntske.message_length(buf)) is None:
        buf += conn.recv(4096)
    result = parse_response(buf[:end])
    c2s, s2c = (
        conn.export_keying_material(
            ntske.EXPORTER_LABEL, result.key_length, ntske.exporter_context(result.exporter_aead, d)
        )
        for d in ntske.Direction
    )
    conn.close()
    assert result.port == NTP_PORT
    cookies = list(result.cookies)
    return cookies, NtsClientSession(result.aead, c2s, s2c, cookies, os.urandom)


def nts_query(session: NtsClientSession, src: str) -> Packet:
    """One NTS request from ``src``; the reply, verified (NtsError if it does not)."""
    header = encode(Packet(0, 4, MODE_CLIENT, 0, 6, -20, 0, 0, 0, 0, 0, 0, ntp_now()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(3)
        s.sendto(session.protect(header), (HOST, NTP_PORT))
        data = s.recv(2048)
    packet = decode(data)
    session.verify(data, packet)
    return packet


def ring_file(path: Path, ring: CookieKeys) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(ring.to_bytes())
    tmp.chmod(0o600)
    tmp.replace(path)


def test_workers_serve_nts_with_the_mains_ring_and_its_updates(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca_key, ips=(HOST,))
    ring = CookieKeys(rotate_ns=0)
    first = ring.rotate(time.time_ns(), os.urandom)
    ring_path = tmp_path / "ring"
    ring_file(ring_path, ring)
    conf = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\nworkers 2\n"
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {ring_path}\nnts rotate 0\n"
        f"nts listen {HOST}:{KE_PORT}\n"
    )
    assert {worker_index(s, 2) for s in SOURCES} == {0, 1}
    sock = tmp_path / "c.sock"
    with running_ntpy(
        tmp_path, conf, listen=(f"{HOST}:{NTP_PORT}",), extra=["--control-socket", str(sock)]
    ) as d:
        assert len(worker_pids(d)) == 2
        d.wait_for_log("NTS-KE accepting at")
        assert "workers 2 -> 1" not in d.log
        cookies, session = key_exchange(ca)
        assert all(c[:4] == first.key_id.to_bytes(4, "big") for c in cookies)
        for src in SOURCES:
            assert nts_query(session, src).stratum == 11
        counters = control(sock, "counters")
        assert counters["served_nts"] == len(SOURCES), counters
        assert counters.get("nts_nak_sent", 0) == 0, counters
        assert counters["nts_cookies_issued"] == len(SOURCES), counters  # one per request
        assert counters["nts_ke_ok"] == 1, counters
        old = session  # its cookies are under the first key

        # A new key: the file is replaced and SIGHUP re-reads it (rotate 0).
        second = ring.rotate(time.time_ns() + 1, os.urandom)
        ring_file(ring_path, ring)
        os.kill(d.pid, signal.SIGHUP)
        d.wait_for_log(r"NTS cookie keys re-read from .* \(2 keys\)")
        cookies, session = key_exchange(ca)
        assert all(c[:4] == second.key_id.to_bytes(4, "big") for c in cookies)
        for src in SOURCES:  # the first request of each address uses a new-key cookie
            nts_query(session, src)
        for src in SOURCES[:6]:  # the first key's cookies are still good on every worker
            nts_query(old, src)
        counters = control(sock, "counters")
        assert counters.get("nts_nak_sent", 0) == 0, counters
        assert counters["served_nts"] >= 2 * len(SOURCES) + 1, counters
        assert counters["nts_ke_ok"] == 2, counters
        assert d.stop() == 0, d.log[-3000:]
    assert "did not install" not in d.log, d.log
