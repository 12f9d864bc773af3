"""The broadcast server (``broadcast ADDR [key N]``) on a private LAN: a network
namespace ``ntpypeers-bc*`` with a veth pair 10.153.0.1/24 <-> 10.153.0.2/24 (never the
host's interfaces), removed after. ntpy -x serves its local clock and broadcasts to
10.153.0.255 on two ports, signed with key 1 and unsigned; a receiver in the namespace
checks what arrives: mode 5, our stratum and a transmit time of now, a MAC that verifies
under key 1 on the signed line and none on the other. (ntpy's broadcast client is tested
in ``test_broadcast_client.py``; chronyd has none at all.)
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

from ntpy.core.auth import MacKey, verify
from ntpy.core.packet import MODE_BROADCAST, decode
from ntpy.core.timestamps import ntp_to_unix_ns

from .lan import veth_lan
from .ntpy_daemon import running_ntpy
from .test_client_keys import SECRET, keys_file

pytestmark = pytest.mark.interop

SERVER, CLIENT, BCAST = "10.153.0.1", "10.153.0.2", "10.153.0.255"
SIGNED_PORT, PLAIN_PORT = 12399, 12400

RECEIVER = """
import json, socket, sys, select
socks = []
for port in (int(sys.argv[1]), int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port))
    socks.append(s)
got = {}
while len(got) < 4:
    ready, _, _ = select.select(socks, [], [], 40)
    if not ready:
        break
    for s in ready:
        data, addr = s.recvfrom(512)
        got.setdefault(str(s.getsockname()[1]), []).append([addr[0], data.hex()])
        if all(len(v) >= 2 for v in got.values()) and len(got) == 2:
            got = {k: v[:2] for k, v in got.items()}
            print(json.dumps(got)); sys.exit(0)
print(json.dumps(got))
"""


@pytest.fixture
def lan() -> Iterator[str]:
    with veth_lan(f"ntpypeers-bc{os.getpid()}", SERVER, CLIENT, "ntpyb") as name:
        yield name


def test_broadcast_server_sends_signed_and_unsigned_mode5(tmp_path: Path, lan: str) -> None:
    keys = keys_file(tmp_path)
    conf = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 8\n"
        f"keys {keys}\ntrustedkey 1\n"
        f"broadcast {BCAST} port {SIGNED_PORT} minpoll 3 key 1\n"
        f"broadcast {BCAST} port {PLAIN_PORT} minpoll 3\n"
    )
    receiver = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lan,
            sys.executable,
            "-c",
            RECEIVER,
            str(SIGNED_PORT),
            str(PLAIN_PORT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # the receiver binds before the first tick
        with running_ntpy(
            tmp_path,
            conf,
            listen=[f"{SERVER}:12398"],
            extra=["--control-socket", str(tmp_path / "n.sock")],
            prefix=["ip", "netns", "exec", lan],
        ) as d:
            d.wait_for_log(rf"broadcasting to {BCAST} port {SIGNED_PORT} every 8 s \(key 1\)")
            out, _ = receiver.communicate(timeout=60)
            d.stop()
            summary = d.wait_for_log("counters: answered=")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(5)
    got = json.loads(out)
    assert sorted(got) == [str(SIGNED_PORT), str(PLAIN_PORT)], got
    key = MacKey(1, "SHA1", bytes.fromhex(SECRET))
    now = time.time_ns()
    for port, packets in got.items():
        assert len(packets) == 2, packets
        for source, hexdata in packets:
            data = bytes.fromhex(hexdata)
            pkt = decode(data)
            assert source == SERVER and pkt.mode == MODE_BROADCAST and pkt.stratum == 9
            assert pkt.origin_ts == 0 and pkt.receive_ts == 0 and pkt.poll == 3
            assert abs(ntp_to_unix_ns(pkt.transmit_ts, now) - now) < 60 * 10**9
            if port == str(SIGNED_PORT):
                assert pkt.mac is not None and pkt.mac.keyid == 1
                assert verify({1: key}, 1, data[:48], pkt.mac.digest) is key
            else:
                assert len(data) == 48 and pkt.mac is None
    assert "broadcast_sent=" in summary, summary
