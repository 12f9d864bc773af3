"""``ntpy doctor`` against a real daemon (``-x``) on 127.0.154.x (issue 16 item 7).

A good server -- four upstreams (ntpy's own responder on 127.0.154.2-5), ``restrict default
kod limited ...``, a valid leap file made here, a drift file its user can write, ``-u
nobody``, answering on 127.0.154.1:123 -- gets exit 0. A bad one -- one upstream, no kod or
limited, an expired leap file, a drift file in a missing directory, running as root, and a
configured listen address nobody answers on -- gets exit 2, each finding with its fix, in
the text and in ``--json``. Needs root (port 123, the drop); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ntpy.core.leapfile import NTP_UNIX_OFFSET_S, render_leap_file

from .ntpy_daemon import running_ntpy
from .upstream import offset_servers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="port 123 and -u nobody need root")

HOST = "127.0.154.1"
UPSTREAMS = ["127.0.154.2", "127.0.154.3", "127.0.154.4", "127.0.154.5"]
SILENT = "127.0.154.6"
NOBODY = 65534
SRC = str(Path(__file__).resolve().parents[2] / "src")
DAY = 86_400


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory nobody can traverse, with a state directory nobody owns."""
    path = Path(tempfile.mkdtemp(prefix="ntpy-doctor-"))
    try:
        os.chmod(path, 0o755)
        (path / "state").mkdir()
        os.chown(path / "state", NOBODY, NOBODY)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def leap_file(path: Path, expires_in_days: int) -> None:
    now = int(time.time()) + NTP_UNIX_OFFSET_S
    entries = [(3_692_217_600, 37)]  # 2017-01-01, TAI-UTC 37 s
    path.write_bytes(render_leap_file(entries, now - 200 * DAY, now + expires_in_days * DAY))


def ntpy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "ntpy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_until(sock: Path, ready: int, timeout_s: float = 60.0) -> None:
    """Until the daemon is synchronised and ``ready`` upstreams have answered."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        res = ntpy("status", "--socket", str(sock), "--json")
        last = res.stdout + res.stderr
        if res.returncode == 0:
            sources = json.loads(res.stdout)["sources"]
            if sum(1 for s in sources if s["reach"]) >= ready:
                return
        time.sleep(0.5)
    raise AssertionError(f"not synchronised to {ready} upstreams; last status: {last}")


def test_doctor_on_a_good_server_exits_0(base: Path) -> None:
    leap = base / "leap-seconds.list"
    leap_file(leap, expires_in_days=150)
    with offset_servers([(a, 0.0) for a in UPSTREAMS]) as ups:
        conf = "".join(
            f"server {u.address} port {u.port} iburst minpoll 3 maxpoll 4\n" for u in ups
        )
        conf += (
            "restrict default kod limited nomodify notrap nopeer noquery\n"
            f"driftfile {base}/state/ntp.drift\nleapfile {leap}\n"
            f"listen {HOST}\nworkers 1\n"
        )
        sock = base / "ntpy.sock"
        with running_ntpy(
            base,
            conf,
            listen=(),
            expect_endpoints=1,
            extra=["-u", "nobody", "--control-socket", str(sock)],
        ) as daemon:
            wait_until(sock, ready=4)
            text = ntpy("doctor", "--config", str(base / "ntp.conf"), "--socket", str(sock))
            print(text.stdout)
            assert text.returncode == 0, text.stdout + text.stderr
            assert "runs as nobody" in text.stdout and f"pid {daemon.pid}" in text.stdout
            assert f"{HOST}:123 answers NTP" in text.stdout
            assert "4 upstream sources" in text.stdout
            js = ntpy("doctor", "--config", str(base / "ntp.conf"), "--socket", str(sock), "--json")
            print(js.stdout)
            doc = json.loads(js.stdout)
            assert js.returncode == 0 and doc["exit"] == 0
            assert {f["severity"] for f in doc["findings"]} == {"ok"}


def test_doctor_on_a_bad_server_exits_2_with_every_finding_and_fix(base: Path) -> None:
    leap = base / "leap-seconds.list"
    leap_file(leap, expires_in_days=-3)
    with offset_servers([(UPSTREAMS[0], 0.0)]) as ups:
        conf = (
            f"server {ups[0].address} port {ups[0].port} iburst minpoll 3 maxpoll 4\n"
            "restrict default nomodify notrap\n"
            f"driftfile {base}/missing/ntp.drift\nleapfile {leap}\n"
            f"listen {HOST}\nlisten {SILENT}\nworkers 1\n"
        )
        sock = base / "ntpy.sock"
        # the unit overrides the config's addresses: the daemon answers only on HOST
        with running_ntpy(
            base, conf, listen=(f"{HOST}:123",), extra=["--control-socket", str(sock)]
        ) as daemon:
            wait_until(sock, ready=1)
            args = ["doctor", "--config", str(base / "ntp.conf"), "--socket", str(sock)]
            text = ntpy(*args)
            print(text.stdout)
            assert text.returncode == 2, text.stdout + text.stderr
            js = ntpy(*args, "--json")
            print(js.stdout)
            assert js.returncode == 2
    doc = json.loads(js.stdout)
    assert doc["exit"] == 2
    bad = {(f["check"], f["severity"]): f for f in doc["findings"] if f["severity"] != "ok"}
    expected = {
        ("upstreams", "warning"): "1 upstream source",
        ("restrict", "warning"): "no kod and no limited",
        ("user", "warning"): f"the daemon (pid {daemon.pid}) runs as root",
        ("driftfile", "error"): f"directory {base}/missing does not exist",
        ("leapfile", "error"): "expired",
        ("port", "error"): f"nothing answers NTP on {SILENT}:123",
    }
    for key, words in expected.items():
        assert key in bad, f"no {key} finding in {doc}"
        assert words in bad[key]["message"] and bad[key]["fix"], bad[key]
        assert bad[key]["message"] in text.stdout and f"fix: {bad[key]['fix']}" in text.stdout
    ok_ports = [f for f in doc["findings"] if f["check"] == "port" and f["severity"] == "ok"]
    assert [f["message"] for f in ok_ports] == [f"{HOST}:123 answers NTP"]
