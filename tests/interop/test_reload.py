"""SIGHUP on the real daemon: the edited ntp.conf is applied live where it can be (access
rules, in every worker), a broken edit changes nothing, and the log file is reopened for
logrotate. Each outcome is one clear log line."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from .clients import raw_query
from .ntpy_daemon import running_ntpy

BASE = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
CLIENT = "127.0.0.1"


def answered(port: int) -> bool:
    return raw_query(CLIENT, port, 4, timeout_s=0.3) is not None


def reload_and_wait(d: object, pattern: str) -> str:
    d.wait_for_log(r"ready: answering")  # type: ignore[attr-defined]
    seen = len(d.lines)  # type: ignore[attr-defined]
    os.kill(d.pid, signal.SIGHUP)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in d.lines[seen:]:  # type: ignore[attr-defined]
            if re.search(pattern, line):
                return str(line)
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} after SIGHUP:\n{d.log}")  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_restrict_change_applies_on_sighup_in_every_worker(tmp_path: Path, workers: str) -> None:
    with running_ntpy(tmp_path, BASE, extra=["--workers", workers]) as d:
        conf = tmp_path / "ntp.conf"
        assert answered(d.port)
        conf.write_text(BASE + f"restrict {CLIENT} ignore\n")
        line = reload_and_wait(d, r"configuration reloaded from .*applied: restricts")
        assert "restart" not in line
        time.sleep(0.3)  # the workers apply it from their channel
        # Several queries: with 2 workers, a client always reaches the same one; all refuse.
        assert not any(answered(d.port) for _ in range(3)), d.log
        conf.write_text(BASE)
        reload_and_wait(d, r"configuration reloaded from .*applied: restricts")
        time.sleep(0.3)
        assert answered(d.port), d.log


def test_broken_edit_changes_nothing_and_names_the_line(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, BASE) as d:
        conf = tmp_path / "ntp.conf"
        conf.write_text(BASE + "restrict 127.0.0.1 ignore\nserver\n")
        line = reload_and_wait(d, r"config reload failed")
        assert "ntp.conf:4" in line and "running configuration stays" in line
        assert answered(d.port)  # the restrict line before the error was not applied


def test_restart_only_settings_are_named(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, BASE) as d:
        (tmp_path / "ntp.conf").write_text(BASE + "tos maxdist 2\n")
        line = reload_and_wait(d, r"configuration reloaded")
        assert "no live changes" in line and "restart ntpy to apply: tos" in line


def test_sighup_reopens_a_rotated_logfile(tmp_path: Path) -> None:
    logfile = tmp_path / "ntpy.log"
    with running_ntpy(tmp_path, BASE + f"logfile {logfile}\n") as d:
        deadline = time.monotonic() + 5
        while not (logfile.exists() and logfile.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        rotated = tmp_path / "ntpy.log.1"
        logfile.rename(rotated)  # what logrotate does before it signals the daemon
        reload_and_wait(d, r"configuration reloaded")
        deadline = time.monotonic() + 5
        while not logfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "configuration reloaded" in logfile.read_text()
        assert "starting" in rotated.read_text()
