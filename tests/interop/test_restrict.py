"""ntpd's restrict lines enforced by the real daemon on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntpy.daemon.control import query_control

from .ntpy_daemon import running_ntpy
from .test_xdp import _usable as xdp_unusable

SRC = str(Path(__file__).resolve().parents[2] / "src")
LOCAL = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
_NO_XDP = xdp_unusable()


@pytest.fixture(params=["python", "xdp", "xdp-w2"])
def mode(request: pytest.FixtureRequest) -> tuple[str, str, list[str]]:
    """(address prefix, config lines, daemon arguments): the Python path on 127.0.8.x, and
    the same test with ``fastpath xdp`` on 127.0.150.x, answered by one process or by two
    workers (each reads the kernel's buckets through the map the main sent it)."""
    if request.param == "python":
        return "127.0.8", "", []
    if _NO_XDP is not None:
        pytest.skip(f"no XDP: {_NO_XDP}")
    workers = "2" if request.param == "xdp-w2" else "1"
    return "127.0.150", "fastpath xdp\n", ["--workers", workers]


def blast(src: str, port: int, n: int, target: str = "127.0.8.10") -> list[bytes]:
    """Send ``n`` client requests from ``src`` as fast as possible; return the replies."""
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(0.3)
        for i in range(n):
            s.sendto(
                bytes([0x23, 0, 6, 0]) + bytes(36) + (i + 1).to_bytes(8, "big"), (target, port)
            )
        while True:
            try:
                replies.append(s.recv(1024))
            except TimeoutError:
                return replies


def test_limited_kod_rate_limits_a_flooding_client(
    tmp_path: Path, mode: tuple[str, str, list[str]]
) -> None:
    """With the fast path, the kernel answers within the limit (and the leak) and Python
    sends the kiss for what it passes up: the same totals, split between the two."""
    net, fast, args = mode
    conf = LOCAL + fast + "restrict default kod limited nomodify notrap nopeer noquery\n"
    sock = tmp_path / "c.sock"
    with running_ntpy(
        tmp_path, conf, listen=[f"{net}.10:0"], extra=["--control-socket", str(sock), *args]
    ) as d:
        if fast:
            d.wait_for_log("fastpath xdp: plain client requests")
            time.sleep(1.5)  # the local clock is selected: the kernel serves
        replies = blast(f"{net}.1", d.port, 40, f"{net}.10")
        served = [r for r in replies if r[1] == 11]
        kods = [r for r in replies if r[1] == 0 and r[12:16] == b"RATE"]
        assert 1 <= len(served) < 40  # a burst is allowed, a flood is not
        assert 1 <= len(kods) <= 2  # the kiss itself is rate-limited
        assert len(served) + len(kods) < 40  # the rest dropped
        assert all(k[0] >> 6 == 3 for k in kods)
        # Another client is not punished for the first one's flood.
        assert any(r[1] == 11 for r in blast(f"{net}.2", d.port, 1, f"{net}.10"))
        env = dict(os.environ, PYTHONPATH=SRC)
        out = subprocess.run(
            [sys.executable, "-m", "ntpy", "clients", "--socket", str(sock), "--json"],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )
        reply = json.loads(out.stdout)
        rows = {c["address"]: c for c in reply["clients"]}
        kernel = {c["address"]: c for c in reply.get("kernel_clients", [])}
        in_kernel = kernel.get(f"{net}.1", {}).get("answered", 0)
        assert rows[f"{net}.1"]["requests"] + in_kernel == 40 and rows[f"{net}.1"]["drops"] >= 1
        assert rows[f"{net}.1"]["kods"] == len(kods)
        if fast:  # the kernel answered the burst, Python only what it passed up
            assert in_kernel >= 1 and kernel[f"{net}.1"]["over"] == 40 - in_kernel
            # Python (the main, or whichever worker got it) found every request the
            # kernel passed up over the limit: all the answers came from the kernel.
            assert len(served) == in_kernel, (len(served), in_kernel)
            c = query_control(str(sock), "counters", timeout=5.0)
            c = dict(c.get("counters", c))
            assert c["xdp_kernel_over_decided"] == 40 - in_kernel, c
            assert reply["kernel_answered"] == in_kernel + 1
        text = subprocess.run(
            [sys.executable, "-m", "ntpy", "clients", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        ).stdout
        assert f"{net}.1" in text and "requests" in text
        d.stop()
        summary = d.wait_for_log("counters: answered=")
        assert "drop_rate_limited=" in summary and "kod_rate_sent=" in summary


def test_ignore_default_serves_only_listed_hosts(
    tmp_path: Path, mode: tuple[str, str, list[str]]
) -> None:
    net, fast, args = mode
    conf = LOCAL + fast + f"restrict default ignore\nrestrict {net}.2\n"
    with running_ntpy(tmp_path, conf, listen=[f"{net}.10:0"], extra=args) as d:
        if fast:
            d.wait_for_log("fastpath xdp: plain client requests")
            time.sleep(1.5)
        assert blast(f"{net}.3", d.port, 3, f"{net}.10") == []
        assert len(blast(f"{net}.2", d.port, 1, f"{net}.10")) == 1
        d.stop()
        assert "drop_restricted=3" in d.wait_for_log("counters: answered=")


def test_without_restrict_lines_everyone_is_served_and_local_mode6_is_not_refused(
    tmp_path: Path,
) -> None:
    """The safe default: time for everyone; mode 6 refused (noquery) only off the host.
    From loopback, mode 6 is answered (a READVAR reply in mode 6), not refused; the access
    unit tests cover the non-local side."""
    with running_ntpy(tmp_path, LOCAL, listen=["127.0.8.10:0"]) as d:
        assert len(blast("127.0.8.4", d.port, 1)) == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.8.4", 0))
            s.settimeout(2)
            s.sendto(bytes([0x16, 2, 0, 1]) + bytes(8), ("127.0.8.10", d.port))
            reply = s.recv(2048)
        assert reply[0] & 7 == 6 and reply[1] == 0x82 and reply[2:4] == b"\0\1"
        d.stop()
        summary = d.wait_for_log("counters: answered=")
        assert "mode6_answered=1" in summary and "noquery" not in summary
