"""``ntpy serve -x -F 1`` as a real daemon (issue 16 item 2), on 127.0.148.x.

Proves: with the filter loaded in every process (``Seccomp: 2`` in /proc for the main and
both workers; the upstream in single-process mode on the poll selector), the daemon answers
NTP, synchronizes over NTS to an upstream that is itself filtered (the NTS-KE client thread,
the KE listener and the TLS handshakes run under the filter), serves the control socket
and NTS-KE, reloads on SIGHUP (the config and certificate are re-read; a new server line
opens a socket), restarts a killed worker (fork under the main's filter) and writes the drift
file at a clean exit. And that a forbidden call kills: a worker that calls ``ptrace`` dies
by SIGSYS and the main says why; under ``-1`` the log names the call.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ntpy_daemon import running_ntpy
from .nts_certs import make_ca, make_server_cert

HOST = "127.0.148.1"
UPSTREAM = "127.0.148.2"
KE_MAIN = 14860
KE_UP = 14861
SRC = str(Path(__file__).parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}

pytestmark = pytest.mark.skipif(
    not Path("/usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists()
    and not Path("/lib/x86_64-linux-gnu/libseccomp.so.2").exists(),
    reason="needs libseccomp2",
)


def _seccomp(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    return "?"


def _children(pid: int) -> list[int]:
    return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _query(port: int, host: str = HOST) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x23" + bytes(47), (host, port))
        data, _ = s.recvfrom(512)
    return data


@pytest.fixture
def certs(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca_key, ips=(HOST, UPSTREAM))
    yield ca, cert, key


def test_filtered_daemon_serves_syncs_reloads_and_exits_cleanly(
    tmp_path: Path, certs: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = certs
    nts = f"nts enable\nnts cert {cert}\nnts key {key}\n"
    up_conf = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\ntos coldstart 1\n"
        f"{nts}nts listen {UPSTREAM}:{KE_UP}\nnts cookie {tmp_path}/up-ring.json\n"
    )
    drift = tmp_path / "drift"
    ctl = tmp_path / "ctl.sock"
    with running_ntpy(
        tmp_path,
        up_conf,
        listen=(f"{UPSTREAM}:0",),
        config_name="upstream.conf",
        extra=("-F", "1", "--selector", "poll", "--control-socket", "none"),
    ) as up:
        up.wait_for_log(r"seccomp filter loaded in the main")
        assert _seccomp(up.pid) == "2"
        conf = (
            f"server {UPSTREAM} port {up.port} nts ca {ca} ntsport {KE_UP} iburst "
            "minpoll 4 maxpoll 4\n"
            f"driftfile {drift}\nworkers 2\nseccomp 1\n"
            f"statsdir {tmp_path}/stats/\nstatistics loopstats peerstats\n"
            f"{nts}nts listen {HOST}:{KE_MAIN}\nnts cookie {tmp_path}/ring.json\n"
        )
        (tmp_path / "stats").mkdir()
        with running_ntpy(
            tmp_path, conf, listen=(f"{HOST}:0",), extra=("--control-socket", str(ctl))
        ) as d:
            d.wait_for_log(r"seccomp filter loaded in the main")
            d.wait_for_log(r"RTC: never touched: virtual clock \(-x\)")
            pids = [d.pid, *_children(d.pid)]
            assert len(pids) == 3
            for pid in pids:
                assert _seccomp(pid) == "2", pid
            assert _query(d.port)[0] & 0x07 == 4
            d.wait_for_log(rf"synchronized to {UPSTREAM}", timeout_s=40)
            status = subprocess.run(
                [sys.executable, "-m", "ntpy", "status", "--socket", str(ctl)],
                capture_output=True,
                text=True,
                timeout=10,
                env=ENV,
            )
            assert "synchronised to" in status.stdout, (status.stdout, d.log)
            with socket.create_connection((HOST, KE_MAIN), timeout=5):
                pass  # the KE listener accepts under the filter
            # SIGHUP: re-read config and certificate; a new server line opens a socket.
            (tmp_path / "ntp.conf").write_text(conf + f"server {HOST} port {d.port}\n")
            os.kill(d.pid, signal.SIGHUP)
            d.wait_for_log(r"configuration reloaded from .*applied: sources")
            # A worker killed from outside is restarted by the filtered main (fork).
            victim = _children(d.pid)[0]
            os.kill(victim, signal.SIGKILL)
            d.wait_for_log(r"worker \d restarted", timeout_s=15)
            deadline = time.monotonic() + 20
            while _query(d.port)[1] != 12 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _query(d.port)[1] == 12  # synchronized to the stratum-11 upstream
            for pid in [d.pid, *_children(d.pid)]:
                assert _seccomp(pid) == "2", pid
            assert d.stop() == 0, d.log
        assert "Traceback" not in d.log and "SIGSYS" not in d.log, d.log
        assert up.stop() == 0, up.log
    float(drift.read_text())
    assert any((tmp_path / "stats").iterdir())


_FORBIDDEN = textwrap.dedent(
    """
    import ctypes, logging, os, socket, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from ntpy.daemon.seccomp import confine
    confine(int(sys.argv[1]), sys.argv[2])
    socket.getaddrinfo("localhost", 123, type=socket.SOCK_DGRAM)  # NSS files, netlink
    with open(os.devnull, "w") as f:
        f.write("x")
    print("confined", flush=True)
    ctypes.CDLL(None).ptrace(0, 0, 0, 0)
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize("role", ["main", "worker"])
def test_a_forbidden_call_kills_the_process_by_sigsys(role: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _FORBIDDEN, "1", role],
        capture_output=True,
        text=True,
        timeout=20,
        env=ENV,
    )
    assert "confined" in run.stdout, run.stderr
    assert "survived" not in run.stdout
    assert run.returncode == -signal.SIGSYS


def test_level_minus_one_logs_the_call_by_name() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _FORBIDDEN, "-1", "main"],
        capture_output=True,
        text=True,
        timeout=20,
        env=ENV,
    )
    assert run.returncode == -signal.SIGSYS
    assert "forbidden system call ptrace (number 101)" in run.stderr, run.stderr


def test_a_worker_killed_by_the_filter_is_reported(tmp_path: Path) -> None:
    """A worker making a forbidden call (a test-only ptrace from a worker's loop is not
    reachable from outside, so the worker here is stopped by the same filter in the main
    being asked to run a forbidden call: SIGSYS from the kernel) -- the main names it."""
    conf = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\nworkers 2\n"
    with running_ntpy(
        tmp_path,
        conf,
        listen=(f"{HOST}:0",),
        extra=("-F", "1", "--control-socket", "none"),
    ) as d:
        d.wait_for_log(r"seccomp filter loaded in the main")
        victim = _children(d.pid)[0]
        os.kill(victim, signal.SIGSYS)  # the signal a seccomp kill delivers
        d.wait_for_log(r"was killed by SIGSYS \(a system call outside the seccomp filter")
        d.wait_for_log(r"worker \d restarted", timeout_s=15)
        assert d.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_single_process_select_loop_dropped_with_web_and_logfile(tmp_path: Path) -> None:
    """The other modes: one process on the select loop, ``-u nobody`` then the filter, the
    HTTP listeners (a page and a scrape), the log file reopened on SIGHUP, SIGUSR1."""
    base = Path(tempfile.mkdtemp(prefix="ntpy-seccomp-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        logfile = state / "ntpy.log"
        logfile.touch()
        os.chown(logfile, 65534, 65534)  # created by root it would stop the start (runas)
        conf = (
            "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\ntos coldstart 1\n"
            f"driftfile {state}/drift\nlogfile {logfile}\nworkers 1\n"
            f"webstatus {HOST}:18123\nmetrics {HOST}:19123\n"
        )
        with running_ntpy(
            base,
            conf,
            listen=(f"{HOST}:0",),
            extra=("-F", "1", "-u", "nobody", "--selector", "select", "--control-socket", "none"),
        ) as d:
            deadline = time.monotonic() + 10
            while "seccomp filter loaded" not in _read(logfile) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _seccomp(d.pid) == "2"
            assert _query(d.port)[0] & 0x07 == 4
            for port, path in ((18123, "/"), (18123, "/api/status"), (19123, "/metrics")):
                with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
                    assert r.status == 200
            os.kill(d.pid, signal.SIGUSR1)
            os.rename(logfile, str(logfile) + ".1")
            os.kill(d.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "configuration reloaded" not in _read(logfile) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "configuration reloaded" in _read(logfile)
            assert _query(d.port)[0] & 0x07 == 4
            assert d.stop() == 0, d.log + _read(logfile)
        text = _read(Path(str(logfile) + ".1")) + _read(logfile)
        assert "Traceback" not in text and "counters:" in text, text
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
