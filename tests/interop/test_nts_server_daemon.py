"""The NTS server in the real daemon (``ntpy serve -x`` with ``nts enable``).

What it proves: chronyd (``-Q``: it only measures) as an NTS client of ntpy gets through
the daemon's NTS-KE listener (TLS 1.3, ALPN ntske/1, port negotiation to a high NTP port)
and accepts ntpy's authenticated replies as a measurement, with the daemon counting
``served_nts`` and ``nts_ke_ok``; the cookie key ring is written mode 0600 and a restart
reuses it; and the key-exchange connection limit holds: with more idle TCP connections
than the limit, NTP keeps answering, a key exchange beyond the limit is refused at once,
and one is served again once the idle ones time out. Addresses: 127.0.123.1.
"""

from __future__ import annotations

import shutil
import socket
import stat
import struct
import time
from pathlib import Path

import pytest

from ntpy.core import ntske
from ntpy.core.ntskeclient import client_request, parse_response

from .clients import chronyd_nts_measure, raw_query
from .ntpy_daemon import running_ntpy
from .test_nts_core_chrony import make_cert, read_message, tls_context

SSL = pytest.importorskip("OpenSSL.SSL")
pytestmark = pytest.mark.interop

HOST = "127.0.123.1"
NTP_PORT, KE_PORT = 12323, 14461


def nts_config(tmp_path: Path, cert: Path, key: Path) -> str:
    return (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {tmp_path}/\n"
        f"nts listen {HOST}:{KE_PORT}\n"
    )


def ke_once(cert: Path, timeout_s: float = 3.0) -> int:
    """One key exchange; the number of cookies received."""
    sock = socket.create_connection((HOST, KE_PORT), timeout=timeout_s)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds the wait
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout_s), 0))
    conn = SSL.Connection(tls_context(cert), sock)
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(client_request())
    result = parse_response(read_message(conn))
    conn.close()
    assert result.port == NTP_PORT
    return len(result.cookies)


@pytest.mark.skipif(shutil.which("chronyd") is None, reason="chronyd not installed")
def test_chronyd_gets_authenticated_time_from_ntpy(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, HOST)
    with running_ntpy(
        tmp_path, nts_config(tmp_path, cert, key), listen=(f"{HOST}:{NTP_PORT}",)
    ) as d:
        d.wait_for_log("NTS-KE accepting at")
        ring = tmp_path / "ntpy-nts-cookies"
        assert stat.S_IMODE(ring.stat().st_mode) == 0o600
        text = chronyd_nts_measure(tmp_path, HOST, KE_PORT, cert)
        assert "System clock wrong by" in text, text + d.log
        assert f"changed port to {NTP_PORT}" in text, text
        d.stop()
        log = d.log
    assert "served_nts" in log and "nts_ke_ok" in log, log
    before = ring.read_bytes()
    with running_ntpy(
        tmp_path, nts_config(tmp_path, cert, key), listen=(f"{HOST}:{NTP_PORT}",)
    ) as d:
        d.wait_for_log("NTS-KE accepting at")
        assert ke_once(cert) == ntske.MAX_COOKIES
    assert ring.read_bytes() == before  # a restart keeps the keys (clients' cookies stay good)


def test_ke_connection_limit_keeps_ntp_serving(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, HOST)
    with running_ntpy(
        tmp_path, nts_config(tmp_path, cert, key), listen=(f"{HOST}:{NTP_PORT}",)
    ) as d:
        d.wait_for_log("NTS-KE accepting at")
        idle = [socket.create_connection((HOST, KE_PORT), timeout=2) for _ in range(80)]
        try:
            time.sleep(0.3)
            assert raw_query(HOST, NTP_PORT, 4) is not None  # NTP is not starved
            start = time.monotonic()
            with pytest.raises((SSL.Error, OSError)):
                ke_once(cert)  # over the limit: accepted and closed before any TLS work
            assert time.monotonic() - start < 1.0
            deadline = time.monotonic() + 10
            served = False
            while not served and time.monotonic() < deadline:
                try:
                    served = ke_once(cert) == ntske.MAX_COOKIES
                except (SSL.Error, OSError):
                    time.sleep(0.5)
            assert served, "no key exchange served after the idle connections timed out"
            assert raw_query(HOST, NTP_PORT, 4) is not None
        finally:
            for s in idle:
                s.close()
        d.stop()
    assert "nts_ke_refused" in d.log and "nts_ke_timeout" in d.log, d.log
