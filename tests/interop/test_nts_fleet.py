"""NTS fleet mode in a network namespace the test creates (``ntpyfleet-<random>``).

One ntpy is the key-exchange host (``nts enable``, cert, ``nts ntpserver`` naming an
NTP-only host, ``nts cookie DIR``); two ntpy NTP-only hosts (``nts enable`` with no
certificate, ``nts rotate 0``) share that cookie key directory. What it proves:
- chronyd (``-x``) asks the KE host, is sent by its Server Negotiation record to NTP-only
  host A, and gets authenticated time from A (``Authenticated : Yes``, source selected);
  A counts ``served_nts``; the KE host serves no NTP to it;
- after the KE host is restarted naming host B, an ntpy client is sent to B and
  synchronizes on authenticated replies (``ntpy authdata``), with the same cookie keys.
The namespace is removed in teardown, also on failure. Skipped without root or ``ip``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import chronyd_client
from .ntpy_daemon import NtpyProcess, running_ntpy
from .nts_certs import make_ca, make_server_cert
from .test_sync_process import ntpy_cli, wait_synced

pytest.importorskip("OpenSSL.SSL")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]

KE_HOST, HOST_A, HOST_B, CLIENT = "127.0.125.1", "127.0.125.2", "127.0.125.3", "127.0.125.4"
NTP_PORT, KE_PORT = 12527, 14527


@contextlib.contextmanager
def netns() -> Iterator[list[str]]:
    """A fresh network namespace with ``lo`` up; yields the ``ip netns exec`` prefix."""
    name = f"ntpyfleet-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        prefix = ["ip", "netns", "exec", name]
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        yield prefix
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def ke_conf(run: Path, cert: Path, key: Path, ring: Path, ntp_host: str) -> str:
    return (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 3\n"
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {ring}/\n"
        f"nts listen {KE_HOST}:{KE_PORT}\nnts ntpserver {ntp_host}:{NTP_PORT}\n"
    )


NTP_ONLY_CONF = "server 127.127.1.0\nfudge 127.127.1.0 stratum 3\nnts enable\n"


@contextlib.contextmanager
def ke_host(
    run: Path, prefix: list[str], cert: Path, key: Path, ring: Path, ntp_host: str
) -> Iterator[NtpyProcess]:
    conf = ke_conf(run, cert, key, ring, ntp_host)
    listen = (f"{KE_HOST}:{NTP_PORT}",)
    with running_ntpy(run, conf, listen=listen, prefix=prefix, config_name="ke.conf") as d:
        d.wait_for_log("NTS-KE accepting at")
        yield d


def test_fleet_ke_host_sends_clients_to_ntp_only_hosts(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca_key, ips=(KE_HOST,))
    ring = tmp_path / "ring"
    ring.mkdir()
    ntp_only = NTP_ONLY_CONF + f"nts cookie {ring}/\nnts rotate 0\n"
    runs = {name: tmp_path / name for name in ("ke", "a", "b", "chrony", "client")}
    for d in runs.values():
        d.mkdir()
    with netns() as ns, contextlib.ExitStack() as stack:
        ke = stack.enter_context(ke_host(runs["ke"], ns, cert, key, ring, HOST_A))
        hosts = {}
        for name, addr in (("a", HOST_A), ("b", HOST_B)):
            sock = runs[name] / "ntpy.sock"
            hosts[name] = stack.enter_context(
                running_ntpy(
                    runs[name],
                    ntp_only,
                    listen=(f"{addr}:{NTP_PORT}",),
                    prefix=ns,
                    extra=["--control-socket", str(sock)],
                )
            )
            hosts[name].wait_for_log(r"NTS: NTP only .*no key exchange here")
        assert "NTS-KE accepting" not in hosts["a"].log
        options = f"nts ntsport {KE_PORT}"
        conf = [f"ntstrustedcerts {ca}", f"ntsdumpdir {runs['chrony']}"]
        with chronyd_client(
            KE_HOST, NTP_PORT, runs["chrony"], server_options=options, extra_conf=conf, prefix=ns
        ) as c:
            deadline = time.monotonic() + 25
            ntpdata = ""
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    ntpdata = c.chronyc("ntpdata")
                    if re.search(r"Authenticated\s*:\s*Yes", ntpdata) and "^*" in c.chronyc(
                        "sources"
                    ):
                        break
                time.sleep(0.5)
            assert re.search(rf"Remote address\s*:\s*{re.escape(HOST_A)} ", ntpdata), ntpdata
            assert re.search(r"Authenticated\s*:\s*Yes", ntpdata), ntpdata
            assert "^*" in c.chronyc("sources"), c.chronyc("sources")
            auth = c.chronyc("-n", "authdata")
            assert " NTS " in auth, auth
        hosts["a"].stop()
        assert re.search(r"served_nts=\d+", hosts["a"].log), hosts["a"].log
        ke.stop()
        # the KE host again, now naming host B; an ntpy client is sent there
        stack.enter_context(ke_host(runs["ke"], ns, cert, key, ring, HOST_B))
        sock = runs["client"] / "ntpy.sock"
        client = (
            f"server {KE_HOST} nts ca {ca} ntsport {KE_PORT} iburst minpoll 3 maxpoll 4\n"
            f"driftfile {runs['client'] / 'ntp.drift'}\n"
        )
        extra = ["--control-socket", str(sock)]
        with running_ntpy(
            runs["client"], client, listen=[f"{CLIENT}:0"], prefix=ns, extra=extra
        ) as d:
            assert wait_synced(sock)["stratum"] == 5
            d.wait_for_log(rf"NTS key exchange done: .*NTP to {HOST_B} port {NTP_PORT}")
            out = ntpy_cli("authdata", "--socket", str(sock), "--json")
            src = json.loads(out.stdout)["sources"][0]
            assert src["auth"] == "nts" and src["authentic"] is True, src
            assert src["auth_failures"] == 0, src
        hosts["b"].stop()
        assert re.search(r"served_nts=\d+", hosts["b"].log), hosts["b"].log
