"""The real NTPsec ``ntpq`` against the real daemon, over mode 6 on UDP port 123.

ntpq cannot be pointed at another port, so each daemon listens on its own 127.0.66.x:123
(the tests run as root). Checked: ``ntpq -p`` (READSTAT + READVAR per association) shows
the local clock and an upstream with the tallies, reach and offsets ntpy has; ``rv`` shows
the system variables; ``as`` the association list; ``rv 0 stratum`` one variable;
``restrict ... noquery`` makes the server silent (ntpq times out; kept short).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .clients import NTPQ_PATH, missing_binaries
from .ntpy_daemon import running_ntpy
from .upstream import offset_servers

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        bool(missing_binaries("/usr/bin/python3", NTPQ_PATH)), reason="NTPsec ntpq not installed"
    ),
]

LOCAL = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"


def ntpq(host: str, *args: str, timeout_ms: int | None = None) -> str:
    """Run ntpq (numeric) with raw arguments; stdout+stderr. ``timeout_ms`` shortens its
    5 s (x2 with the retry) wait for an answer."""
    argv = ["/usr/bin/python3", NTPQ_PATH, "-n"]
    if timeout_ms is not None:
        argv += ["-c", f"timeout {timeout_ms}"]
    argv += [*args, host]
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout + proc.stderr


def wait_for(fetch: Callable[[], str], pattern: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    out = ""
    while time.monotonic() < deadline:
        out = fetch()
        if re.search(pattern, out, re.MULTILINE):
            return out
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in ntpq output:\n{out}")


def rv_values(text: str) -> dict[str, str]:
    """ntpq's cooked ``rv`` output -> {name: value} (values with spaces keep their head)."""
    out: dict[str, str] = {}
    for item in re.split(r",\s*", text.replace("\n", " ")):
        name, sep, value = item.strip().partition("=")
        if sep:
            out[name.split()[-1]] = value.strip()
    return out


def test_ntpq_sees_the_local_clock_as_system_peer(tmp_path: Path) -> None:
    host = "127.0.66.1"
    with running_ntpy(tmp_path, LOCAL, listen=[f"{host}:123"]) as d:
        peers = wait_for(lambda: ntpq(host, "-p"), r"^\*LOCAL\(0\)")
        line = next(s for s in peers.splitlines() if s.startswith("*LOCAL(0)"))
        assert re.match(r"^\*LOCAL\(0\)\s+\.LOCL\.\s+10 l\s+\S+\s+64\s+377\s", line), peers
        assert "remote" in peers and "refid" in peers

        rv = ntpq(host, "-c", "rv")
        assert re.search(r"associd=0 status=05\w\w leap_none, sync_local", rv), rv
        v = rv_values(rv)
        assert v["stratum"] == "11" and v["refid"] == "127.127.1.0" and v["leap"] == "00"
        assert v["peer"] == "65535" and v["version"].startswith('"ntpy ')
        for name in ("offset", "frequency", "sys_jitter", "clk_jitter", "clk_wander"):
            float(v[name])
        assert re.match(r"[0-9a-f]{8}\.[0-9a-f]{8} \d{4}-", v["clock"]), rv

        assoc = ntpq(host, "-c", "as")
        assert re.search(r"^\s+1 65535\s+961a\s+yes\s+yes\s+none\s+sys\.peer", assoc, re.M), assoc

        assert ntpq(host, "-c", "rv 0 stratum").strip() == "stratum=11"
        two = ntpq(host, "-c", "rv 0 stratum,refid")
        assert two.strip() == "stratum=11, refid=127.127.1.0", two
        assert "UNKNOWNVAR" in ntpq(host, "-c", "rv 0 nosuchvar")
        assert "BADOP" in ntpq(host, "-c", "mrulist")
        d.stop()
        summary = d.wait_for_log("counters: answered=")
        assert "mode6_answered=" in summary and "mode6_error" not in summary


def test_ntpq_shows_an_upstream_server_as_system_peer(tmp_path: Path) -> None:
    host = "127.0.66.2"
    with offset_servers([("127.0.66.3", 0.02)]) as ups:
        up = ups[0]
        conf = LOCAL + f"server {up.address} port {up.port} iburst minpoll 3 maxpoll 3\n"
        with running_ntpy(tmp_path, conf, listen=[f"{host}:123"]):
            peers = wait_for(lambda: ntpq(host, "-p"), r"^\*127\.0\.66\.3 ")
            line = next(s for s in peers.splitlines() if s.startswith("*127.0.66.3"))
            fields = line.split()
            # remote refid st t when poll reach delay offset jitter
            assert fields[1] == ".GPS." and fields[2] == "1" and fields[3] == "u", line
            assert fields[5] == "8" and int(fields[6], 8) > 0, line
            delay, offset, jitter = (float(x) for x in fields[7:10])
            assert 0 <= delay < 50 and abs(offset) < 50 and jitter >= 0, line
            local = next(s for s in peers.splitlines() if "LOCAL(0)" in s)
            assert local.startswith(" LOCAL(0)"), peers  # standby: no tally

            v = rv_values(ntpq(host, "-c", "rv"))
            assert v["stratum"] == "2" and v["refid"] == "127.0.66.3", v
            assert abs(float(v["frequency"])) < 500_000 and v["peer"] == "1", v
            assert abs(float(v["offset"])) < 100 and v["tc"] == "3", v

            up_vars = rv_values(ntpq(host, "-c", "rv 1"))
            assert up_vars["srcadr"] == "127.0.66.3" and up_vars["srcport"] == str(up.port)
            assert up_vars["refid"] == "GPS" and up_vars["stratum"] == "1"
            assert int(up_vars["reach"], 8) > 0 and up_vars["flash"].startswith("00 ok")


def test_noquery_makes_ntpq_time_out(tmp_path: Path) -> None:
    host = "127.0.66.4"
    conf = LOCAL + "restrict default noquery\n"
    with running_ntpy(tmp_path, conf, listen=[f"{host}:123"]) as d:
        start = time.monotonic()
        out = ntpq(host, "-c", "rv", timeout_ms=200)
        assert "timed out" in out, out
        assert time.monotonic() - start < 10
        d.stop()
        summary = d.wait_for_log("counters: answered=")
        assert "drop_mode6_noquery=" in summary and "mode6_answered" not in summary
