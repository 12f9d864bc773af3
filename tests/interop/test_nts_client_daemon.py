"""ntpy (``serve -x``) as an NTS client of chronyd's NTS server, on 127.0.124.x.

- with the right CA it runs the key exchange (port negotiation: chronyd serves NTP on a
  high port and says so), synchronizes on authenticated replies only, ``ntpy peers`` says
  ``nts`` and ``ntpy authdata`` shows the AEAD and the cookies; the cookies and keys are
  saved (0600) and a restart uses them without a new key exchange;
- a wrong CA, an expired certificate and a name the certificate does not carry are each
  refused: no sync, one clear log line.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

import pytest

from .chrony_server import chrony_server
from .ntpy_daemon import running_ntpy
from .nts_certs import make_ca, make_server_cert
from .test_sync_process import ntpy_cli, wait_synced

pytest.importorskip("OpenSSL.SSL")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("chronyd") is None, reason="chronyd not installed"),
]

CHRONY = "127.0.124.10"
NTP_PORT, KE_PORT = 12424, 14424


def chrony_conf(cert: Path, key: Path, dump: Path) -> list[str]:
    return [
        f"ntsserverkey {key}",
        f"ntsservercert {cert}",
        f"ntsport {KE_PORT}",
        f"ntsdumpdir {dump}",
    ]


def client_conf(run: Path, host: str, ca: Path, extra: str = "") -> str:
    return (
        f"server {host} nts ca {ca} ntsport {KE_PORT} iburst minpoll 3 maxpoll 4{extra}\n"
        f"driftfile {run / 'ntp.drift'}\n"
    )


def authdata(sock: Path) -> dict[str, object]:
    out = ntpy_cli("authdata", "--socket", str(sock), "--json")
    assert out.returncode == 0, out.stderr
    sources = json.loads(out.stdout)["sources"]
    assert len(sources) == 1, sources
    src: dict[str, object] = sources[0]
    return src


def test_ntpy_syncs_to_chronyd_over_nts_and_keeps_its_cookies(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca_key, ips=(CHRONY,))
    with chrony_server(CHRONY, NTP_PORT, stratum=4, extra_conf=chrony_conf(cert, key, tmp_path)):
        sock = tmp_path / "ntpy.sock"
        extra = ["--control-socket", str(sock)]
        conf = client_conf(tmp_path, CHRONY, ca)
        with running_ntpy(tmp_path, conf, listen=["127.0.124.11:0"], extra=extra) as d:
            assert wait_synced(sock)["stratum"] == 5
            d.wait_for_log(r"NTS key exchange done: AES-.*8 cookies, NTP to .* port 12424")
            src = authdata(sock)
            assert src["auth"] == "nts" and src["authentic"] is True, src
            assert int(str(src["nts_cookies"])) >= 6 and src["nts_ke_attempts"] == 1, src
            assert src["auth_failures"] == 0 and src["port"] == NTP_PORT, src
            text = ntpy_cli("authdata", "--socket", str(sock)).stdout
            assert "nts" in text and "AES-" in text, text
            peers = ntpy_cli("peers", "--socket", str(sock)).stdout
            assert f"auth {CHRONY}: nts, authentic" in peers, peers
        state = tmp_path / "ntscookies.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert len(json.loads(state.read_text())["sessions"]) == 1
        with running_ntpy(tmp_path, conf, listen=["127.0.124.11:0"], extra=extra) as d:
            wait_synced(sock)
            assert authdata(sock)["nts_ke_attempts"] == 0  # the saved cookies were used
            assert "NTS key exchange done" not in d.log


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("wrong_ca", r"NTS key exchange failed: TLS handshake .*certificate verify failed"),
        ("expired", r"NTS key exchange failed: TLS handshake .*certificate verify failed"),
        ("name", r"NTS key exchange failed: the certificate of 127.0.124.10 does not name"),
    ],
)
def test_ntpy_refuses_a_bad_certificate(tmp_path: Path, case: str, pattern: str) -> None:
    ca, ca_key = make_ca(tmp_path)
    other_ca, _ = make_ca(tmp_path, "another CA")
    ips = ("127.0.124.99",) if case == "name" else (CHRONY,)
    cert, key = make_server_cert(tmp_path, ca_key, ips=ips, expired=case == "expired")
    with chrony_server(CHRONY, NTP_PORT, stratum=4, extra_conf=chrony_conf(cert, key, tmp_path)):
        sock = tmp_path / "ntpy.sock"
        extra = ["--control-socket", str(sock)]
        conf = client_conf(tmp_path, CHRONY, other_ca if case == "wrong_ca" else ca)
        with running_ntpy(tmp_path, conf, listen=["127.0.124.12:0"], extra=extra) as d:
            d.wait_for_log(pattern)
            time.sleep(1)
            src = authdata(sock)
            assert src["nts_cookies"] == 0 and src["samples"] == 0, src
            assert int(str(src["nts_ke_failures"])) >= 1 and src["nts_ke_error"], src
            status = ntpy_cli("status", "--socket", str(sock), "--json")
            assert status.returncode == 1
            assert len([ln for ln in d.log.splitlines() if "key exchange failed" in ln]) == 1
