"""The real daemon synchronizes to real upstream servers on loopback, on its virtual clock.

Three upstreams are 0.5 s ahead of the system clock and one is an hour ahead (a liar): the
daemon must step its virtual clock +0.5 s to the majority, serve that time at stratum 2,
mark the liar as a falseticker, and never touch the system clock (it runs with -x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .clients import decode_reply, ntp_now, raw_query
from .ntpy_daemon import running_ntpy
from .upstream import offset_servers

SRC = str(Path(__file__).resolve().parents[2] / "src")


def ntpy_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "ntpy", *args], capture_output=True, text=True, timeout=20, env=env
    )


def wait_synced(sock: Path, timeout_s: float = 40.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        res = ntpy_cli("status", "--socket", str(sock), "--json")
        last = res.stdout + res.stderr
        if res.returncode == 0:
            out: dict[str, object] = json.loads(res.stdout)
            return out
        time.sleep(0.5)
    raise AssertionError(f"ntpy never synchronized; last status: {last}")


def test_follows_majority_marks_liar(tmp_path: Path) -> None:
    specs = [("127.0.5.1", 0.5), ("127.0.5.2", 0.5), ("127.0.5.3", 0.5), ("127.0.5.4", 3600.0)]
    with offset_servers(specs) as ups:
        conf = "".join(
            f"server {u.address} port {u.port} iburst minpoll 3 maxpoll 4\n" for u in ups
        )
        conf += f"driftfile {tmp_path / 'ntp.drift'}\n"
        sock = tmp_path / "ntpy.sock"
        with running_ntpy(
            tmp_path, conf, listen=["127.0.5.10:0"], extra=["--control-socket", str(sock)]
        ) as d:
            status = wait_synced(sock)
            assert status["stratum"] == 2
            assert status["system_peer"] in {"127.0.5.1", "127.0.5.2", "127.0.5.3"}

            # Served time moved to the majority: +0.5 s against the system clock.
            t1 = ntp_now()
            reply = raw_query("127.0.5.10", d.port, 4, transmit=t1)
            r = decode_reply(reply or b"", t1, ntp_now())
            assert r.stratum == 2 and r.leap == 0
            assert r.offset_s is not None and abs(r.offset_s - 0.5) < 0.005, r

            peers = json.loads(ntpy_cli("peers", "--socket", str(sock), "--json").stdout)
            tally = {s["address"]: s["tally"] for s in peers["sources"]}
            assert tally["127.0.5.4"] == "x", tally
            assert sorted(tally[a] for a in ("127.0.5.1", "127.0.5.2", "127.0.5.3")) == [
                "*",
                "+",
                "+",
            ], tally
            text = ntpy_cli("peers", "--socket", str(sock)).stdout
            assert "x127.0.5.4" in text and "*127.0.5." in text, text

            d.wait_for_log(r"stepped the clock by \+0\.5")
            assert "panic" not in d.log.lower()
        assert d.proc.returncode == 0
        # The frequency estimate was written at exit, atomically.
        drift = (tmp_path / "ntp.drift").read_text()
        assert abs(float(drift)) < 500


def test_panic_refuses_a_huge_offset(tmp_path: Path) -> None:
    with offset_servers([("127.0.5.21", 3000.0)]) as ups:
        conf = f"server {ups[0].address} port {ups[0].port} iburst minpoll 3\n"
        with running_ntpy(tmp_path, conf, listen=["127.0.5.20:0"]) as d:
            deadline = time.monotonic() + 30
            while d.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert d.proc.returncode == 1, d.log
            assert "exceeds the panic threshold" in d.log


@pytest.mark.parametrize("flag", ["-g"])
def test_dash_g_allows_the_first_big_step(tmp_path: Path, flag: str) -> None:
    with offset_servers([("127.0.5.31", 3000.0)]) as ups:
        conf = f"server {ups[0].address} port {ups[0].port} iburst minpoll 3\n"
        sock = tmp_path / "s.sock"
        with running_ntpy(
            tmp_path, conf, listen=["127.0.5.30:0"], extra=[flag, "--control-socket", str(sock)]
        ) as d:
            wait_synced(sock)
            t1 = ntp_now()
            r = decode_reply(raw_query("127.0.5.30", d.port, 4, transmit=t1) or b"", t1, ntp_now())
            assert r.offset_s is not None and abs(r.offset_s - 3000.0) < 0.01
