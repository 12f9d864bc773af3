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
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import decode_reply, ntp_now, raw_query
from .ntpy_daemon import NtpyProcess, running_ntpy
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


def test_panic_refuses_a_huge_offset_on_the_first_update(tmp_path: Path) -> None:
    """The first-sync rule is ntpd's and unchanged: without -g, exit."""
    with offset_servers([("127.0.5.21", 3000.0)]) as ups:
        conf = f"server {ups[0].address} port {ups[0].port} iburst minpoll 3\n"
        with running_ntpy(tmp_path, conf, listen=["127.0.5.20:0"]) as d:
            deadline = time.monotonic() + 30
            while d.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert d.proc.returncode == 1, d.log
            assert "exceeds the panic threshold" in d.log


def _sync_then_jump(tmp_path: Path, address: str, conf_extra: str = "") -> Iterator[NtpyProcess]:
    """Sync a daemon to one upstream, then move that upstream +3600 s; yields the daemon
    once its sync was seen (the jump is made before yielding)."""
    with offset_servers([(address, 0.0)]) as ups:
        conf = f"server {address} port {ups[0].port} iburst minpoll 3 maxpoll 3\n" + conf_extra
        sock = tmp_path / "s.sock"
        listen = address.rsplit(".", 1)[0] + ".40:0"
        with running_ntpy(
            tmp_path, conf, listen=[listen], extra=["--control-socket", str(sock)]
        ) as d:
            wait_synced(sock)
            time.sleep(16)  # past the iburst: the source's statistics see a clean jump
            ups[0].offset_ns = 3600 * 1_000_000_000
            yield d


def test_later_panic_offset_holds_over_instead_of_exiting(tmp_path: Path) -> None:
    """Regression: after sync, one upstream jumping +3600 s made the daemon exit, taking
    the service down for every client. Now the source is marked, one error is logged, and
    the daemon keeps serving its held time."""
    sock = tmp_path / "s.sock"
    for d in _sync_then_jump(tmp_path, "127.0.101.31"):
        d.wait_for_log(r"source 127\.0\.101\.31: offset \+3600\.\d+ s exceeds the panic", 40)
        time.sleep(12)  # more polls of the wild source: still running, logged once
        assert d.proc.poll() is None, d.log
        assert d.log.count("exceeds the panic threshold") == 1, d.log
        assert "ERROR source 127.0.101.31" in d.log, d.log
        peers = json.loads(ntpy_cli("peers", "--socket", str(sock), "--json").stdout)
        assert peers["sources"][0]["state"] == "panic", peers
        t1 = ntp_now()
        r = decode_reply(raw_query("127.0.101.40", d.port, 4, transmit=t1) or b"", t1, ntp_now())
        assert r.leap == 0 and r.stratum == 2, r  # holdover: still within maxdist
        assert r.offset_s is not None and abs(r.offset_s) < 0.01, r


def test_panicexit_keeps_ntpds_exit(tmp_path: Path) -> None:
    for d in _sync_then_jump(tmp_path, "127.0.101.51", "tinker panicexit 1\n"):
        deadline = time.monotonic() + 40
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
