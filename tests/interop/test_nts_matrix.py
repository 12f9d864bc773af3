"""NTS end to end with ntpy on both sides, and chronyd as a client of ntpy, on 127.0.125.x.

What it proves:
- ntpy (``serve -x``, ``server HOST nts ca CA``) synchronizes to an ntpy NTS server over
  the real key exchange, on authenticated replies only: ``ntpy authdata`` shows the AEAD
  and cookies, ``ntpy peers`` says ``nts, authentic``, stratum is the server's + 1;
- chronyd (``-x``) as an NTS client of ntpy: ``chronyc authdata`` shows NTS with cookies,
  ``ntpdata`` says ``Authenticated : Yes``, and the source is selected (``*``);
- an ntpy client refuses an ntpy server whose certificate chains to another CA or does not
  name the address (an expired certificate cannot be tested here: the ntpy server refuses
  to start with one; the chronyd-server variant covers it);
- a relay that flips one byte of the authenticated part of every reply: the client never
  synchronizes and counts the replies it refused.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ntpy.core import ntsaead

from .clients import chronyd_client
from .ntpy_daemon import running_ntpy
from .nts_certs import make_ca, make_server_cert
from .test_nts_client_daemon import authdata
from .test_sync_process import ntpy_cli, wait_synced

pytest.importorskip("OpenSSL.SSL")
pytestmark = pytest.mark.interop

SERVER, CLIENT, RELAY = "127.0.125.1", "127.0.125.2", "127.0.125.5"
NTP_PORT, KE_PORT, RELAY_PORT = 12525, 14525, 12526
SERVER_STRATUM = 6
"""The local clock's stratum at the server; the server itself serves one more."""


def server_conf(tmp: Path, cert: Path, key: Path, extra: str = "") -> str:
    return (
        f"server 127.127.1.0\nfudge 127.127.1.0 stratum {SERVER_STRATUM}\n"
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {tmp}/\n"
        f"nts listen {SERVER}:{KE_PORT}\n{extra}"
    )


def client_conf(run: Path, ca: Path, extra: str = "") -> str:
    return (
        f"server {SERVER} nts ca {ca} ntsport {KE_PORT} iburst minpoll 3 maxpoll 4{extra}\n"
        f"driftfile {run / 'ntp.drift'}\n"
    )


@contextlib.contextmanager
def ntpy_nts_server(tmp: Path, extra: str = "") -> Iterator[Path]:
    """An ntpy NTS server at SERVER; yields the CA file that its certificate chains to."""
    srv = tmp / "server"
    srv.mkdir()
    ca, ca_key = make_ca(srv)
    cert, key = make_server_cert(srv, ca_key, ips=(SERVER,))
    conf = server_conf(srv, cert, key, extra)
    with running_ntpy(srv, conf, listen=(f"{SERVER}:{NTP_PORT}",)) as d:
        d.wait_for_log("NTS-KE accepting at")
        yield ca


@pytest.mark.parametrize("aead", ["AES-SIV-CMAC-256", "AES-128-GCM-SIV"])
def test_ntpy_syncs_to_ntpy_over_nts(tmp_path: Path, aead: str) -> None:
    if ntsaead.by_name(aead) not in ntsaead.supported():
        pytest.skip(f"{aead} needs OpenSSL 3.2")
    with ntpy_nts_server(tmp_path) as ca:
        run = tmp_path / "client"
        run.mkdir()
        sock = run / "ntpy.sock"
        extra = ["--control-socket", str(sock)]
        conf = client_conf(run, ca, f" aead {aead}")
        with running_ntpy(run, conf, listen=[f"{CLIENT}:0"], extra=extra) as d:
            assert wait_synced(sock)["stratum"] == SERVER_STRATUM + 2  # the server's + 1
            d.wait_for_log(rf"NTS key exchange done: {aead}.*8 cookies, NTP to .* port {NTP_PORT}")
            src = authdata(sock)
            assert src["auth"] == "nts" and src["authentic"] is True, src
            assert int(str(src["nts_cookies"])) >= 6 and src["auth_failures"] == 0, src
            peers = ntpy_cli("peers", "--socket", str(sock)).stdout
            assert f"auth {SERVER}: nts, authentic" in peers, peers


@pytest.mark.skipif(shutil.which("chronyd") is None, reason="chronyd not installed")
def test_chronyd_client_selects_ntpy_nts_server(tmp_path: Path) -> None:
    with ntpy_nts_server(tmp_path) as ca:
        run = tmp_path / "chrony"
        run.mkdir()
        options = f"nts ntsport {KE_PORT}"
        conf = [f"ntstrustedcerts {ca}", f"ntsdumpdir {run}"]
        with chronyd_client(SERVER, NTP_PORT, run, server_options=options, extra_conf=conf) as c:
            deadline = time.monotonic() + 20
            sources = ""
            while time.monotonic() < deadline:
                sources = c.chronyc("sources")
                if re.search(rf"^\^\*\s+{re.escape(SERVER)}", sources, re.MULTILINE):
                    break
                time.sleep(0.5)
            assert re.search(rf"^\^\*\s+{re.escape(SERVER)}", sources, re.M), sources
            auth = c.chronyc("-n", "authdata")
            row = next(ln for ln in auth.splitlines() if ln.startswith(SERVER))
            fields = row.split()
            assert fields[1] == "NTS", auth
            assert int(fields[-2]) >= 1 and fields[3] == "15", auth  # Cook; Type 15 = SIV
            ntpdata = c.chronyc("ntpdata")
            assert re.search(r"Authenticated\s*:\s*Yes", ntpdata), ntpdata


@pytest.mark.parametrize("case", ["wrong_ca", "name"])
def test_ntpy_client_refuses_bad_ntpy_server_certificate(tmp_path: Path, case: str) -> None:
    srv = tmp_path / "server"
    srv.mkdir()
    ca, ca_key = make_ca(srv)
    other_ca, _ = make_ca(srv, "another CA")
    ips = ("127.0.125.99",) if case == "name" else (SERVER,)
    cert, key = make_server_cert(srv, ca_key, ips=ips)
    with running_ntpy(srv, server_conf(srv, cert, key), listen=(f"{SERVER}:{NTP_PORT}",)) as s:
        s.wait_for_log("NTS-KE accepting at")
        run = tmp_path / "client"
        run.mkdir()
        sock = run / "ntpy.sock"
        conf = client_conf(run, other_ca if case == "wrong_ca" else ca)
        extra = ["--control-socket", str(sock)]
        with running_ntpy(run, conf, listen=[f"{CLIENT}:0"], extra=extra) as d:
            pattern = (
                "certificate verify failed"
                if case == "wrong_ca"
                else f"the certificate of {SERVER} does not name"
            )
            d.wait_for_log("NTS key exchange failed: .*" + pattern)
            src = authdata(sock)
            assert src["nts_cookies"] == 0 and src["samples"] == 0, src
            assert ntpy_cli("status", "--socket", str(sock), "--json").returncode == 1


class FlippingRelay:
    """A UDP relay on loopback: requests go to the server unchanged; every reply has one
    byte of its transmit timestamp (authenticated as associated data) flipped."""

    def __init__(self, listen: tuple[str, int], server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.sock.settimeout(0.2)
        self.server = server
        self.replies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client: tuple[str, int] | None = None
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if peer == self.server:
                if client is not None and len(data) >= 48:
                    bad = bytearray(data)
                    bad[47] ^= 0x01
                    self.sock.sendto(bytes(bad), client)
                    self.replies += 1
            else:
                client = peer
                self.sock.sendto(data, self.server)

    def __enter__(self) -> FlippingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_modified_replies_are_refused(tmp_path: Path) -> None:
    extra = f"nts ntpserver {RELAY}:{RELAY_PORT}\n"
    with (
        ntpy_nts_server(tmp_path, extra) as ca,
        FlippingRelay((RELAY, RELAY_PORT), (SERVER, NTP_PORT)) as relay,
    ):
        run = tmp_path / "client"
        run.mkdir()
        sock = run / "ntpy.sock"
        extra_args = ["--control-socket", str(sock)]
        conf = client_conf(run, ca)
        with running_ntpy(run, conf, listen=[f"{CLIENT}:0"], extra=extra_args) as d:
            d.wait_for_log(rf"NTS key exchange done: .*port {RELAY_PORT}")
            deadline = time.monotonic() + 15
            src: dict[str, object] = {}
            while time.monotonic() < deadline:
                src = authdata(sock)
                if int(str(src["auth_failures"])) >= 3:
                    break
                time.sleep(0.5)
            assert int(str(src["auth_failures"])) >= 3 and src["samples"] == 0, src
            assert relay.replies >= 3
            assert ntpy_cli("status", "--socket", str(sock), "--json").returncode == 1
