"""The local clock cannot fool clients (issue 16 item 4), as a real ``ntpy serve -x``.

A last-good time newer than the clock stops the start with the file and the override named;
``-g`` overrides it. A recent, agreeing last-good time vouches for the clock, so the local
clock fallback may serve although the upstream never answered; without it the fallback
stays off and clients get stratum 0. ``tos orphan`` between two instances: the one allowed a
cold start serves orphan time and the other follows it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from .ntpy_daemon import running_ntpy

HOST = "127.0.146.3"
OTHER = "127.0.146.4"
DEAD = "127.0.146.5"  # nothing listens there
NO_CTL = ("--control-socket", "none")


def _stratum(port: int, host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x23" + bytes(47), (host, port))
        data, _ = s.recvfrom(512)
    return data[1]


def _fallback_conf(drift: Path, extra: str = "") -> str:
    return (
        f"server {DEAD} port 9 iburst\nserver 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
        f"tos orphanwait 1\ndriftfile {drift}\n{extra}"
    )


def test_clock_behind_the_last_good_time_is_refused(tmp_path: Path) -> None:
    drift = tmp_path / "drift"
    lastgood = tmp_path / "drift.lastgood"
    lastgood.write_text(f"{time.time_ns() + 30 * 86400 * 10**9}\n")  # known good a month ahead
    conf = tmp_path / "ntp.conf"
    conf.write_text(f"server 127.127.1.0\ndriftfile {drift}\n")
    cmd = [sys.executable, "-m", "ntpy", "serve", "-x", "-c", str(conf), "-l", f"{HOST}:0", *NO_CTL]
    env = {"PYTHONPATH": str(Path(__file__).parents[2] / "src"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)
    assert run.returncode == 1
    assert "30.0 days before the last time it was known good" in run.stderr
    assert str(lastgood) in run.stderr and "-g" in run.stderr
    assert "listening on" not in run.stderr
    with running_ntpy(
        tmp_path, conf.read_text(), listen=(f"{HOST}:0",), extra=("-g", *NO_CTL)
    ) as d:
        d.wait_for_log("-g: starting anyway")
        assert _stratum(d.port) == 6  # ntpd's LOCAL driver default: stratum 5


def test_without_a_vouching_file_the_fallback_stays_off(tmp_path: Path) -> None:
    drift = tmp_path / "drift"
    with running_ntpy(tmp_path, _fallback_conf(drift), listen=(f"{HOST}:0",), extra=NO_CTL) as d:
        d.wait_for_log("the local clock stays off", timeout_s=40)
        assert _stratum(d.port) == 0


def test_a_recent_last_good_time_lets_the_fallback_serve(tmp_path: Path) -> None:
    drift = tmp_path / "drift"
    (tmp_path / "drift.lastgood").write_text(f"{time.time_ns() - 600 * 10**9}\n")
    with running_ntpy(tmp_path, _fallback_conf(drift), listen=(f"{HOST}:0",), extra=NO_CTL) as d:
        d.wait_for_log("clock agrees with the last-good time")
        d.wait_for_log("serving from the local clock at stratum 11", timeout_s=40)
        assert _stratum(d.port) == 11


def test_cold_start_allowed_by_tos_coldstart(tmp_path: Path) -> None:
    drift = tmp_path / "drift"
    conf = _fallback_conf(drift, "tos coldstart 1\n")
    with running_ntpy(tmp_path, conf, listen=(f"{HOST}:0",), extra=NO_CTL) as d:
        d.wait_for_log("serving from the local clock at stratum 11", timeout_s=40)
        assert _stratum(d.port) == 11


def test_orphan_mode_between_two_instances(tmp_path: Path) -> None:
    # A: orphan mode allowed cold; B: orphan mode, follows A (never synchronized itself)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_conf = f"server {DEAD} port 9\ntos orphan 8 orphanwait 1 coldstart 1\n"
    with running_ntpy(a_dir, a_conf, listen=(f"{HOST}:0",), extra=NO_CTL) as a:
        a.wait_for_log("serving from the orphan mode at stratum 8", timeout_s=40)
        assert _stratum(a.port) == 8
        b_conf = f"server {HOST} port {a.port} iburst minpoll 4\ntos orphan 8 orphanwait 1\n"
        with running_ntpy(b_dir, b_conf, listen=(f"{OTHER}:0",), extra=NO_CTL) as b:
            b.wait_for_log(f"synchronized to {HOST}", timeout_s=40)
            assert _stratum(b.port, OTHER) == 9
