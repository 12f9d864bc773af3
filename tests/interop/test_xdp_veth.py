"""``fastpath xdp`` in native mode: a veth pair into a network namespace.

On lo only generic XDP exists. A veth runs XDP in its driver (native mode), and a frame
the program sends back with XDP_TX goes to the peer -- which takes it only when the peer
has NAPI. Switching GRO on on the peer (SIOCETHTOOL, as ``ethtool -K gro on``; also
off-then-on) did not do it on Linux 6.18 here: the kernel counted the answer and the
frame was lost. An XDP program on the peer does: ours, attached with ``ip link set
xdpdrv`` (a netlink attach, fine for a throwaway namespace; the daemon never does that),
with no state published, so it passes every frame.

The daemon listens on the host side (198.18.150.1, benchmark space, no route beyond the
pair), the clients run inside the namespace: chronyd -Q and a plain request. The
namespace (and with it the pair) is deleted after each test, whatever happens.
Needs root, iproute2, libbpf1, Linux >= 6.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ntpy.daemon.control import query_control
from ntpy.daemon.xdp_load import OBJECT_PATH

from .ntpy_daemon import running_ntpy
from .test_xdp import LOCAL
from .test_xdp import _usable as xdp_unusable

HOST, PEER = "198.18.150.1", "198.18.150.2"
_WHY = xdp_unusable() if shutil.which("ip") else "no iproute2"
pytestmark = [pytest.mark.interop, pytest.mark.skipif(_WHY is not None, reason=f"{_WHY}")]

_QUERY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(bytes([0x23, 0, 6, 0]) + bytes(36) + (12345).to_bytes(8, "big"),
         (sys.argv[1], int(sys.argv[2])))
print(s.recv(1024).hex())
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """(namespace, host interface, peer interface), removed after."""
    tag = f"{os.getpid() % 100000}"
    ns, host, peer = f"ntpyxdp2-{tag}", f"ntpyxdp2-h{tag}", f"ntpyxdp2-p{tag}"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
        _ip("addr", "add", f"{HOST}/30", "dev", host)
        _ip("link", "set", host, "up")
        _ip("-n", ns, "addr", "add", f"{PEER}/30", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        peer_xdp = subprocess.run(
            ["ip", "-n", ns, "link", "set", "dev", peer, "xdpdrv", "obj", str(OBJECT_PATH),
             "sec", "xdp"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if peer_xdp.returncode:
            pytest.skip(f"cannot give the peer NAPI (ip link set xdpdrv): {peer_xdp.stderr}")
        yield ns, host, peer
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "link", "del", host], capture_output=True, timeout=10, check=False)


def _counters(sock: Path) -> dict[str, int]:
    reply = query_control(str(sock), "counters", timeout=5.0)
    return dict(reply.get("counters", reply))


def test_native_mode_on_veth_answers_clients_in_a_namespace(
    tmp_path: Path, veth: tuple[str, str, str]
) -> None:
    ns, host, _ = veth
    sock = tmp_path / "c.sock"
    conf = LOCAL + f"fastpath xdp {host}\n"
    extra = ["--control-socket", str(sock), "--workers", "1"]
    with running_ntpy(tmp_path, conf, listen=[f"{HOST}:0"], extra=extra) as d:
        d.wait_for_log("fastpath xdp: plain client requests")
        link = subprocess.run(
            ["ip", "-d", "link", "show", host], capture_output=True, text=True, check=True
        ).stdout
        assert re.search(r"\bxdp\b", link) and "xdpgeneric" not in link, link  # native
        time.sleep(1.5)  # the local clock is selected
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _QUERY, HOST, str(d.port)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        reply = bytes.fromhex(out.strip())
        assert reply[0] & 7 == 4 and reply[1] == 11 and reply[24:32] == (12345).to_bytes(8, "big")
        conf_q = tmp_path / "q.conf"
        conf_q.write_text(
            f"server {HOST} port {d.port} iburst maxsamples 1\n"
            f"pidfile {tmp_path / 'q.pid'}\ncmdport 0\nport 0\n"
        )
        q = subprocess.run(
            ["ip", "netns", "exec", ns, "chronyd", "-Q", "-t", "6", "-u", "root", "-L", "0",
             "-f", str(conf_q)],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )  # fmt: skip
        m = re.search(r"System clock wrong by (-?[0-9.]+) seconds", q.stdout + q.stderr)
        assert q.returncode == 0 and m, q.stdout + q.stderr
        assert abs(float(m.group(1))) < 200e-6  # the kernel's time is the host's clock
        c = _counters(sock)
        assert c["xdp_answered"] >= 2, c
        assert c.get("served", 0) < c["xdp_answered"], c
