"""Why isn't it syncing? The real daemon says so in ``ntpy stat``, ``ntpy peers`` and its log.

Two upstreams 50 ms apart on loopback (delays of microseconds) cannot form a majority, and a
third address answers nothing. Before issue 11 ``ntpy stat`` said "time server re-starting"
for as long as that lasted, ``peers`` showed blank tallies and the log was silent. Addresses
are in 127.0.102.x, this test's own block.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .ntpy_daemon import running_ntpy
from .upstream import offset_servers

SRC = str(Path(__file__).resolve().parents[2] / "src")


def ntpy_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "ntpy", *args], capture_output=True, text=True, timeout=20, env=env
    )


def silent_port(address: str) -> int:
    """A UDP port on ``address`` that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return port


def test_disjoint_upstreams_say_no_majority_in_stat_peers_and_one_log_line(
    tmp_path: Path,
) -> None:
    with offset_servers([("127.0.102.1", 0.0), ("127.0.102.2", 0.05)]) as ups:
        conf = "".join(
            f"server {u.address} port {u.port} iburst minpoll 3 maxpoll 3\n" for u in ups
        )
        conf += f"server 127.0.102.3 port {silent_port('127.0.102.3')} iburst minpoll 3\n"
        sock = str(tmp_path / "ntpy.sock")
        with running_ntpy(
            tmp_path, conf, listen=["127.0.102.10:0"], extra=["--control-socket", sock]
        ) as d:
            deadline = time.monotonic() + 45
            stat = ntpy_cli("stat", "-s", sock)
            while "no majority" not in stat.stdout and time.monotonic() < deadline:
                time.sleep(0.5)
                stat = ntpy_cli("stat", "-s", sock)
            assert stat.returncode == 1, stat
            lines = stat.stdout.splitlines()
            assert lines[0] == "unsynchronised"
            assert lines[1].startswith("  reason: no majority: all 2 candidates are falsetickers")
            assert "127.0.102.1" in lines[1] and "127.0.102.2" in lines[1]
            assert "re-starting" not in stat.stdout

            peers = ntpy_cli("peers", "-s", sock, "-n")
            assert peers.returncode == 0, peers
            rows = peers.stdout.splitlines()
            assert rows[0].startswith("unsynchronised: no majority: all 2 candidates"), rows
            tally = {r[1:16].strip(): r[0] for r in rows[3:]}
            assert tally == {"127.0.102.1": "x", "127.0.102.2": "x", "127.0.102.3": " "}, rows

            # the silent source is logged unreachable once, after its first 8 polls
            d.wait_for_log(r"source 127\.0\.102\.3 is unreachable \(it never answered\)", 30)
            time.sleep(10)  # more polls of every source: nothing above is said again
            log = d.log
            assert log.count("not synchronized: no majority") == 1, log
            assert log.count("127.0.102.3 is unreachable") == 1, log
            assert "system peer is now" not in log
