"""``ntpy serve -x -u nobody`` as a real daemon (issue 16 item 1), on 127.0.146.x.

Proves, from /proc and from the wire: every process (main and workers) runs as
nobody:nogroup with no capability at all under -x; it answers NTP and the control socket
after the drop; SIGHUP reloads the config; the drift file and the last-good time are written
at exit by the dropped process (owned by nobody); an unwritable state directory and an
unknown user stop the start before anything binds, naming the path and the fix.
Needs root (to drop); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ntpy_daemon import running_ntpy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

NOBODY = 65534
HOST = "127.0.146.1"
UPSTREAM = "127.0.146.2"


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's own tmp dirs are root's 0700), with a
    state directory that belongs to nobody; removed after."""
    base = Path(tempfile.mkdtemp(prefix="ntpy-privdrop-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"
        state.mkdir()
        os.chown(state, NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _query(port: int, host: str = HOST) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x23" + bytes(47), (host, port))
        data, _ = s.recvfrom(512)
    return data


def test_dropped_daemon_runs_as_nobody_everywhere_and_keeps_working(world: Path) -> None:
    state = world / "state"
    drift = state / "drift"
    ctl = world / "ctl.sock"
    with running_ntpy(
        world,
        listen=(f"{UPSTREAM}:0",),
        config_name="upstream.conf",
        extra=("--control-socket", "none"),
    ) as upstream:
        conf = (
            f"server {UPSTREAM} port {upstream.port} iburst minpoll 4 maxpoll 4\n"
            "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
            f"driftfile {drift}\nworkers 2\n"
        )
        with running_ntpy(
            world,
            conf,
            listen=(f"{HOST}:0",),
            extra=("-u", "nobody:nogroup", "--control-socket", str(ctl)),
        ) as d:
            d.wait_for_log(r"running as nobody:nogroup .*capabilities kept: none")
            pids = [d.pid, *_children(d.pid)]
            assert len(pids) == 3  # the main and two workers
            for pid in pids:
                st = _status(pid)
                assert st["Uid"].split() == [str(NOBODY)] * 4, (pid, st["Uid"])
                assert st["Gid"].split() == [str(NOBODY)] * 4, (pid, st["Gid"])
                assert st["Groups"].split() == [str(NOBODY)]
                assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (pid, st)
            reply = _query(d.port)
            # answers; never from the local clock (that would be stratum 11): before the
            # first sync it is held back (stratum 0); with iburst on a quick machine the
            # upstream may already be selected (stratum 12)
            assert reply[0] & 0x07 == 4 and reply[1] in (0, 12), reply[:2].hex()
            assert os.stat(ctl).st_uid == NOBODY
            status = subprocess.run(
                [sys.executable, "-m", "ntpy", "status", "--socket", str(ctl)],
                capture_output=True,
                text=True,
                timeout=10,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
            )
            # the control socket answers after the drop, with the state of the moment
            assert status.stdout.startswith("unsynchronised") or status.stdout.startswith(
                f"synchronised to NTP server ({UPSTREAM})"
            ), (status.stdout, status.stderr)
            d.wait_for_log(rf"synchronized to {UPSTREAM}", timeout_s=30)
            os.kill(d.pid, signal.SIGHUP)
            d.wait_for_log(r"configuration reloaded from .*: no live changes")
            deadline = time.monotonic() + 20  # the workers see the new state within 1 s
            while _query(d.port)[1] != 12 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _query(d.port)[1] == 12  # synchronized to the stratum-11 upstream
            assert d.stop() == 0
        assert "Traceback" not in d.log, d.log
    st_drift = os.stat(drift)
    assert st_drift.st_uid == NOBODY and stat.S_ISREG(st_drift.st_mode)
    float(drift.read_text())
    lastgood = Path(str(drift) + ".lastgood")
    assert lastgood.stat().st_uid == NOBODY
    assert abs(int(lastgood.read_text()) - time.time_ns()) < 60 * 10**9


def test_unwritable_state_directory_refuses_before_binding(world: Path) -> None:
    root_only = world / "rootonly"
    root_only.mkdir(mode=0o755)
    conf = world / "ntp.conf"
    conf.write_text(f"server 127.127.1.0\ndriftfile {root_only}/drift\nuser nobody\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntpy",
            "serve",
            "-x",
            "-c",
            str(conf),
            "-l",
            f"{HOST}:0",
            "--control-socket",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    assert run.returncode == 1
    assert f"nobody cannot write {root_only}" in run.stderr
    assert f"fix: chown nobody:nogroup {root_only}" in run.stderr
    assert "listening on" not in run.stderr


def test_unknown_user_refuses_before_binding(world: Path) -> None:
    conf = world / "ntp.conf"
    conf.write_text("server 127.127.1.0\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntpy",
            "serve",
            "-x",
            "-c",
            str(conf),
            "-l",
            f"{HOST}:0",
            "--control-socket",
            "none",
            "-u",
            "ntpy-no-such-user",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    assert run.returncode == 1
    assert "no user 'ntpy-no-such-user'" in run.stderr and "useradd" in run.stderr
    assert "listening on" not in run.stderr
