"""The real ntpy daemon on loopback, exercised with raw packets and ``ntpy query``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .clients import decode_reply, ntp_now, raw_query
from .ntpy_daemon import running_ntpy

UNSYNCED_CONF = "# no time source at all\ndriftfile /nonexistent/ntp.drift\n"


def ask(
    port: int, version: int = 4, mode: int = 3, host: str = "127.0.0.1", extra: bytes = b""
) -> bytes | None:
    return raw_query(host, port, version, mode, extra)


def run_ntpy(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.run(
        [sys.executable, "-m", "ntpy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("selector", ["default", "poll"])
def test_serves_all_versions(tmp_path: Path, selector: str) -> None:
    with running_ntpy(tmp_path, extra=["--selector", selector]) as d:
        assert ("PollSelector" in d.log) == (selector == "poll")
        for version in (1, 2, 3, 4):
            t1 = ntp_now()
            reply = raw_query("127.0.0.1", d.port, version, 0 if version == 1 else 3, transmit=t1)
            t4 = ntp_now()
            assert reply is not None, f"no reply to v{version}"
            r = decode_reply(reply, t1, t4)
            assert r.ok, r
            assert (reply[0] >> 3) & 7 == version and reply[0] & 7 == 4
            assert r.stratum == 11 and r.leap == 0
            assert reply[12:16] == bytes([127, 127, 1, 0])  # ntpd: refclock address above stratum 1
            # The true offset is 0 (the virtual clock is the system clock here); a measured
            # one can be off by up to half the round trip, which a loaded machine stretches.
            assert r.offset_s is not None and r.delay_s is not None
            assert abs(r.offset_s) < max(0.001, r.delay_s / 2 + 0.0002), r
            assert r.delay_s is not None and 0 <= r.delay_s < 0.01
            assert reply[3] >= 0xE0  # precision is a measured negative power of two (< 2^-8 s)


def test_unsynchronized_daemon_says_so(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, UNSYNCED_CONF) as d:
        reply = ask(d.port)
        assert reply is not None
        assert reply[0] >> 6 == 3 and reply[1] == 0 and reply[12:16] == b"INIT"
        res = run_ntpy("query", f"127.0.0.1:{d.port}", "--json", "--tries", "1")
        assert res.returncode == 1
        assert json.loads(res.stdout)["leap"] == 3
        assert "not synchronized" in res.stderr


def test_ntpy_query_json(tmp_path: Path) -> None:
    with running_ntpy(tmp_path) as d:
        res = run_ntpy("query", f"127.0.0.1:{d.port}", "--json", "--samples", "3")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["ok"] and out["stratum"] == 11 and out["leap"] == 0
        assert abs(out["offset"]) < 0.001 and out["refid"] == "127.127.1.0"
        plain = run_ntpy("query", f"127.0.0.1:{d.port}")
        assert plain.returncode == 0 and "stratum 11" in plain.stdout


def test_query_reports_no_server(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        res = run_ntpy("query", f"127.0.0.1:{port}", "--timeout", "0.3", "--tries", "1")
    assert res.returncode == 1 and "no reply" in res.stderr


def test_wildcard_socket_replies_from_the_address_asked(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, listen=["0.0.0.0:0"]) as d:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
            s.sendto(bytes([0x23]) + bytes(47), ("127.0.0.77", d.port))
            data, src = s.recvfrom(1024)
        # Without IP_PKTINFO the kernel would pick 127.0.0.1 as the source.
        assert src == ("127.0.0.77", d.port)
        assert data[0] & 7 == 4


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this host")
    with running_ntpy(tmp_path, listen=["[::1]:0"]) as d:
        reply = raw_query("::1", d.port, 4)
        assert reply is not None and reply[1] == 11


def test_drops_are_counted_and_garbage_does_not_kill_it(tmp_path: Path) -> None:
    with running_ntpy(tmp_path) as d:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            target = ("127.0.0.1", d.port)
            s.sendto(bytes([0x27]) + bytes(47), target)  # mode 7
            s.sendto(bytes([0x16, 2, 0, 1]) + bytes(8), target)  # mode 6 READSTAT
            s.sendto(b"\x23" * 20, target)  # truncated header
            s.sendto(bytes([0x24]) + bytes(47), target)  # a server reply: never answered
            s.sendto(bytes([0x2B]) + bytes(47), target)  # version 5
            s.sendto(os.urandom(9000), target)  # oversize datagram
        assert ask(d.port) is not None  # still serving
        rc = d.stop()
        assert rc == 0
        summary = d.wait_for_log(r"counters: answered=")
        for name in (
            "drop_mode7=1",
            "mode6_answered=1",  # ntpq's READSTAT from localhost is served
            "drop_too_short=1",
            "drop_not_request=1",
            "drop_bad_version=1",
            "drop_oversize=1",
            "answered=1",
        ):
            assert name in summary, summary


def test_listen_conflict_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        conf = tmp_path / "ntp.conf"
        conf.write_text("server 127.127.1.0\n")
        res = run_ntpy("serve", "-x", "--config", str(conf), "--listen", f"127.0.0.1:{port}")
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in res.stderr


def test_bad_config_is_file_line_error(tmp_path: Path) -> None:
    conf = tmp_path / "ntp.conf"
    conf.write_text("server 127.127.1.0\nserver example.org minpoll banana\n")
    res = run_ntpy("serve", "-x", "--config", str(conf), "--listen", "127.0.0.1:0")
    assert res.returncode == 2
    assert f"{conf}:2:" in res.stderr and "minpoll" in res.stderr
