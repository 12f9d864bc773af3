"""``ntpy serve`` without ``--config`` as a real process (issue 11): it reads the default
config file (``NTPY_DEFAULT_CONFIG`` stands in for /etc/ntp.conf), logs which config it runs,
logs the local clock's stratum as the file wrote it, and refuses a broken file. Loopback
block 127.0.105.x."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .ntpy_daemon import running_ntpy

LISTEN = ("127.0.105.1:0",)
EXTRA = ("--control-socket", "none")


def test_default_file_is_used_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc-ntp.conf"
    conf.write_text("server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n")
    monkeypatch.setenv("NTPY_DEFAULT_CONFIG", str(conf))
    with running_ntpy(tmp_path, None, listen=LISTEN, extra=EXTRA) as d:
        d.wait_for_log(rf"configuration: {conf}")
        d.wait_for_log(r"local clock 127\.127\.1\.0 at stratum 10 \(served as 11\)")


def test_builtin_config_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTPY_DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    with running_ntpy(tmp_path, None, listen=LISTEN, extra=EXTRA) as d:
        d.wait_for_log(r"configuration: built-in default config \(no .*absent\.conf\)")


def test_broken_default_file_refuses_to_start(tmp_path: Path) -> None:
    conf = tmp_path / "etc-ntp.conf"
    conf.write_text("sever 0.pool.ntp.org iburst\n")
    env = dict(os.environ, NTPY_DEFAULT_CONFIG=str(conf))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    res = subprocess.run(
        [sys.executable, "-m", "ntpy", "serve", "-x", "--listen", LISTEN[0], *EXTRA],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert res.returncode == 2, res.stderr
    assert f"{conf}:1: " in res.stderr and "did you mean 'server'?" in res.stderr
