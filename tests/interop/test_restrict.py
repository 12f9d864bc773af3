"""ntpd's restrict lines enforced by the real daemon on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .ntpy_daemon import running_ntpy

SRC = str(Path(__file__).resolve().parents[2] / "src")
LOCAL = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"


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


def test_limited_kod_rate_limits_a_flooding_client(tmp_path: Path) -> None:
    conf = LOCAL + "restrict default kod limited nomodify notrap nopeer noquery\n"
    sock = tmp_path / "c.sock"
    with running_ntpy(
        tmp_path, conf, listen=["127.0.8.10:0"], extra=["--control-socket", str(sock)]
    ) as d:
        replies = blast("127.0.8.1", d.port, 40)
        served = [r for r in replies if r[1] == 11]
        kods = [r for r in replies if r[1] == 0 and r[12:16] == b"RATE"]
        assert 1 <= len(served) < 40  # a burst is allowed, a flood is not
        assert 1 <= len(kods) <= 2  # the kiss itself is rate-limited
        assert len(served) + len(kods) < 40  # the rest dropped
        assert all(k[0] >> 6 == 3 for k in kods)
        # Another client is not punished for the first one's flood.
        assert any(r[1] == 11 for r in blast("127.0.8.2", d.port, 1))
        env = dict(os.environ, PYTHONPATH=SRC)
        out = subprocess.run(
            [sys.executable, "-m", "ntpy", "clients", "--socket", str(sock), "--json"],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )
        rows = {c["address"]: c for c in json.loads(out.stdout)["clients"]}
        assert rows["127.0.8.1"]["requests"] == 40 and rows["127.0.8.1"]["drops"] >= 1
        assert rows["127.0.8.1"]["kods"] == len(kods)
        text = subprocess.run(
            [sys.executable, "-m", "ntpy", "clients", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        ).stdout
        assert "127.0.8.1" in text and "requests" in text
        d.stop()
        summary = d.wait_for_log("counters: answered=")
        assert "drop_rate_limited=" in summary and "kod_rate_sent=" in summary


def test_ignore_default_serves_only_listed_hosts(tmp_path: Path) -> None:
    conf = LOCAL + "restrict default ignore\nrestrict 127.0.8.2\n"
    with running_ntpy(tmp_path, conf, listen=["127.0.8.10:0"]) as d:
        assert blast("127.0.8.3", d.port, 3) == []
        assert len(blast("127.0.8.2", d.port, 1)) == 1
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
