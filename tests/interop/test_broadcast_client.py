"""The broadcast client (``broadcastclient``) on a private LAN: a network namespace
``ntpybc2-*`` with a veth pair 10.154.0.1/24 <-> 10.154.0.2/24 (never the host's
interfaces; this kernel has no dummy module), removed after.

An ntpy -x broadcast server serving its local clock (stratum 8) on 10.154.0.1 sends
``broadcast 10.154.0.255 key 1 minpoll 3`` to the port an ntpy -x ``broadcastclient``
serves on (wildcard, so it gets the LAN's broadcasts; the mode 5 packets come in through
its serving socket). The client holds key 1 and the default ``restrict ... nopeer``: it
synchronizes to a ``broadcast`` source (``ntpy peers``: type ``b``, ``key 1``, selected),
while unsigned mode 5 packets sent to it are ignored and counted. Once with one process,
once with two workers (the packets then reach the sync engine through the main).
chronyd has no broadcast client, so it cannot be the client here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lan import veth_lan
from .ntpy_daemon import running_ntpy
from .test_client_keys import keys_file
from .test_sync_process import ntpy_cli, wait_synced

pytestmark = pytest.mark.interop

SERVER, CLIENT, BCAST = "10.154.0.1", "10.154.0.2", "10.154.0.255"
SERVER_PORT, CLIENT_PORT = 12498, 12499
DEFAULT_RESTRICT = "restrict default kod nomodify notrap nopeer noquery limited\n"

UNSIGNED = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[4])):
    secs = time.time() + 2208988800
    tx = (int(secs) << 32) | int((secs % 1) * 2**32)
    head = struct.pack("!BBbbIIIQQQQ", (4 << 3) | 5, 2, 3, -20, 0, 0, 0x47505300, 0, 0, 0, tx)
    s.sendto(head, (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.2)
"""


@pytest.fixture
def lan() -> Iterator[str]:
    with veth_lan(f"ntpybc2-{os.getpid()}", SERVER, CLIENT, "ntpyc") as name:
        yield name


@pytest.mark.parametrize("workers", [1, 2])
def test_ntpy_broadcastclient_syncs_to_a_signed_ntpy_broadcast_server(
    tmp_path: Path, lan: str, workers: int
) -> None:
    keys = keys_file(tmp_path)
    server_conf = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 8\n"
        f"keys {keys}\ntrustedkey 1\n"
        f"broadcast {BCAST} port {CLIENT_PORT} minpoll 3 key 1\n"
    )
    client_conf = (
        f"keys {keys}\ntrustedkey 1\nbroadcastclient\nbroadcastdelay 0.001\n"
        + DEFAULT_RESTRICT
        + f"workers {workers}\n"
    )
    sock = tmp_path / "c.sock"
    netns = ["ip", "netns", "exec", lan]
    (tmp_path / "s").mkdir()
    (tmp_path / "c").mkdir()
    with (
        running_ntpy(tmp_path / "s", server_conf, listen=[f"{SERVER}:{SERVER_PORT}"], prefix=netns),
        running_ntpy(
            tmp_path / "c",
            client_conf,
            listen=[f"0.0.0.0:{CLIENT_PORT}"],
            extra=["--control-socket", str(sock)],
            prefix=netns,
        ) as client,
    ):
        status = wait_synced(sock, timeout_s=90)
        assert status["stratum"] == 10 and status["refid"] == SERVER, status
        out = ntpy_cli("peers", "--socket", str(sock), "--json")
        sources = json.loads(out.stdout)["sources"]
        (row,) = [s for s in sources if s["address"] == SERVER]
        assert row["kind"] == "broadcast" and row["type_char"] == "b", row
        assert row["tally"] == "*" and row["auth"] == "key 1" and row["authentic"], row
        print(ntpy_cli("peers", "--socket", str(sock)).stdout)
        # unsigned broadcasts from another sender: ignored and counted, no source
        subprocess.run(
            [*netns, sys.executable, "-c", UNSIGNED, SERVER, BCAST, str(CLIENT_PORT), "5"],
            check=True,
            timeout=20,
        )
        time.sleep(1)
        sources = json.loads(ntpy_cli("peers", "--socket", str(sock), "--json").stdout)["sources"]
        assert len(sources) == 1, sources
        client.stop()
        summary = client.wait_for_log("counters: answered=")
    assert "broadcast_unauthenticated=" in summary, summary
    assert int(summary.split("broadcast_unauthenticated=")[1].split()[0]) >= 5, summary
    assert "broadcast_received=" in summary and "broadcast_in=" in summary, summary
