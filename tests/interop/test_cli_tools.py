"""``ntpy sync`` (ntpdate) and ``ntpy stat`` (ntpstat) against the real daemon on loopback.

``sync`` runs only with ``--dry-run`` or ``-q``: nothing here may change the clock. The
daemons run on their virtual clock (-x) with their own control sockets.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ntpy_daemon import NtpyProcess, running_ntpy

SRC = str(Path(__file__).resolve().parents[2] / "src")
LOG = r"[ \d]\d [A-Z][a-z]{2} \d\d:\d\d:\d\d ntpy\[\d+\]: "
FAST = ["-p", "2", "-t", "0.2"]


def ntpy(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "ntpy", *args], capture_output=True, text=True, timeout=20, env=env
    )


def start(tmp: Path, config: str) -> Iterator[tuple[NtpyProcess, str]]:
    sock = str(tmp / "ctl" / "ntpy.sock")
    with running_ntpy(tmp, config, extra=["--control-socket", sock]) as d:
        d.wait_for_log(r"control socket ")
        yield d, sock


@pytest.fixture(scope="module")
def local_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NtpyProcess, str]]:
    """Serves its local clock (stratum 10 + 1): synchronised to 'local net'."""
    yield from start(
        tmp_path_factory.mktemp("local"), "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
    )


@pytest.fixture(scope="module")
def unsynced_daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NtpyProcess, str]]:
    """No time source at all: answers with leap alarm, stratum 0, refid INIT."""
    yield from start(tmp_path_factory.mktemp("unsynced"), "# no time source\n")


def test_sync_dry_run_against_the_daemon(local_daemon: tuple[NtpyProcess, str]) -> None:
    d, _ = local_daemon
    res = ntpy("sync", "--dry-run", *FAST, "--port", str(d.port), "127.0.0.1")
    assert res.returncode == 0, res.stderr
    server, notice = res.stdout.splitlines()
    m = re.fullmatch(
        r"server 127\.0\.0\.1, stratum 11, offset (-?\d+\.\d{6}), delay \d\.\d{5}", server
    )
    assert m, server
    assert abs(float(m.group(1))) < 0.001  # the virtual clock is the system clock here
    assert re.fullmatch(LOG + r"adjust time server 127\.0\.0\.1 offset -?\d+\.\d{6} sec", notice)
    assert "--dry-run: the clock was not changed" in res.stderr


def test_sync_query_and_force_step(local_daemon: tuple[NtpyProcess, str]) -> None:
    d, _ = local_daemon
    res = ntpy("sync", "-q", "-b", "-u", *FAST, "--port", str(d.port), "127.0.0.1")
    assert res.returncode == 0, res.stderr
    assert re.search(LOG + r"step time server 127\.0\.0\.1 offset", res.stdout)


def test_sync_drops_an_unsynchronized_server(unsynced_daemon: tuple[NtpyProcess, str]) -> None:
    d, _ = unsynced_daemon
    res = ntpy("sync", "--dry-run", *FAST, "--port", str(d.port), "127.0.0.1")
    assert res.returncode == 1
    assert res.stdout.startswith("server 127.0.0.1, stratum 16, ")
    assert "127.0.0.1: Server dropped: Leap not in sync" in res.stderr
    assert "refid INIT" in res.stderr
    assert re.search(LOG + "no server suitable for synchronization found$", res.stderr, re.M)


def test_sync_without_a_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = ntpy("sync", "-q", *FAST, "--port", str(port), "127.0.0.1")
    assert res.returncode == 1
    assert "server 127.0.0.1, stratum 0, offset 0.000000, delay 0.00000" in res.stdout
    assert "Server dropped: no data" in res.stderr


def test_stat_synchronised_to_local_net(local_daemon: tuple[NtpyProcess, str]) -> None:
    _, sock = local_daemon
    res = ntpy("stat", "--control-socket", sock)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "synchronised to local net at stratum 11"
    assert re.fullmatch(r"   time correct to within \d+ ms", lines[1])
    assert lines[2] == "   polling server every 64 s"


def test_stat_unsynchronised_daemon(unsynced_daemon: tuple[NtpyProcess, str]) -> None:
    _, sock = unsynced_daemon
    res = ntpy("stat", "--control-socket", sock)
    assert res.returncode == 1, res.stderr
    # not "re-starting": with no source at all, the reason says so (issue 11)
    assert res.stdout.splitlines()[:2] == [
        "unsynchronised",
        "  reason: no source: no upstream source in use (none configured or resolved)",
    ]


def test_stat_without_a_daemon(tmp_path: Path) -> None:
    res = ntpy("stat", "--control-socket", str(tmp_path / "ntpy.sock"))
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.startswith("Unable to talk to NTP daemon. Is it running?")
