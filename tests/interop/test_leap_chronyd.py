"""A real chronyd client (-x) watches ntpy announce a leap second from a leap file.

ntpy serves its local clock on 127.0.152.1 with a leap-seconds.list made here, with a
correct SHA-1, a future expiry and a leap at the end of this month; chronyd polls every
second and ``chronyc ntpdata`` shows the LI of the last reply ("Leap status"). The same
daemon is then reloaded (SIGHUP) with a file that lists no leap this month, a corrupt one,
and the smear: each time chronyd sees what ntpy serves. Nothing touches the real clock:
ntpy runs -x, chronyd -x.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from ntpy.core.leapfile import NTP_UNIX_OFFSET_S, render_leap_file

from .clients import ChronydClient, chronyd_client
from .ntpy_daemon import NtpyProcess, running_ntpy

HOST = "127.0.152.1"
JAN_2017_NTP = 1_483_228_800 + NTP_UNIX_OFFSET_S


def _next_month_start() -> int:
    now = dt.datetime.now(dt.UTC)
    y, m = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(dt.datetime(y, m, 1, tzinfo=dt.UTC).timestamp())


def _leap_file(path: Path, *, leap_this_month: bool) -> None:
    now_ntp = int(time.time()) + NTP_UNIX_OFFSET_S
    entries = [(JAN_2017_NTP - 549 * 86_400, 36), (JAN_2017_NTP, 37)]
    if leap_this_month:
        entries.append((_next_month_start() + NTP_UNIX_OFFSET_S, 38))
    path.write_bytes(render_leap_file(entries, now_ntp - 86_400, now_ntp + 180 * 86_400))


def _leap_status(client: ChronydClient, want: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = client.wait_for_replies(1, timeout_s=timeout_s).get("Leap status", "")
        if seen == want:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"chronyd saw Leap status {seen!r}, wanted {want!r}")


def _reload(ntpy: NtpyProcess, conf: Path, text: str) -> None:
    conf.write_text(text)
    before = ntpy.log.count("configuration reloaded")
    os.kill(ntpy.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while ntpy.log.count("configuration reloaded") <= before:
        assert time.monotonic() < deadline, ntpy.log
        time.sleep(0.05)


@pytest.mark.skipif(
    not shutil.which("chronyd") or not shutil.which("chronyc"), reason="needs chronyd and chronyc"
)
def test_chronyd_sees_the_leap_announced_from_a_leap_file(tmp_path: Path) -> None:
    leapfile = tmp_path / "leap-seconds.list"
    _leap_file(leapfile, leap_this_month=True)
    base = f"server 127.127.1.0\nfudge 127.127.1.0 stratum 10\nleapfile {leapfile}\n"
    conf = tmp_path / "ntp.conf"
    cdir = tmp_path / "c"
    cdir.mkdir()
    with running_ntpy(tmp_path, base, listen=[f"{HOST}:0"]) as ntpy:
        ntpy.wait_for_log(r"leap second pending: insert 23:59:60 UTC at the end of .*leapfile")
        timeline: list[tuple[str, str]] = []
        with chronyd_client(HOST, ntpy.port, cdir, poll=0) as client:
            timeline.append(("leap file, leap this month", _leap_status(client, "Insert second")))
            # a file with no leap this month: SIGHUP re-reads it, the announcement stops
            _leap_file(leapfile, leap_this_month=False)
            _reload(ntpy, conf, base)
            timeline.append(("no leap this month", _leap_status(client, "Normal")))
            ntpy.wait_for_log(r"leap second no longer pending")
            # back again, then a corrupt copy: warned with the fix, and not used
            _leap_file(leapfile, leap_this_month=True)
            _reload(ntpy, conf, base)
            timeline.append(("leap file again", _leap_status(client, "Insert second")))
            leapfile.write_bytes(leapfile.read_bytes().replace(b"#$\t", b"#$\t1"))  # bad SHA-1
            _reload(ntpy, conf, base)
            ntpy.wait_for_log(r"leapfile .* is not used: .*get a fresh copy from https://")
            timeline.append(("corrupt file", _leap_status(client, "Normal")))
        print("LI timeline seen by chronyd:", timeline)
    assert "Traceback" not in ntpy.log


@pytest.mark.skipif(
    not shutil.which("chronyd") or not shutil.which("chronyc"), reason="needs chronyd and chronyc"
)
def test_a_smearing_server_says_so_and_does_not_announce(tmp_path: Path) -> None:
    leapfile = tmp_path / "leap-seconds.list"
    _leap_file(leapfile, leap_this_month=True)
    conf = (
        f"server 127.127.1.0\nfudge 127.127.1.0 stratum 10\nleapfile {leapfile}\nleapsmear noon\n"
    )
    cdir = tmp_path / "c"
    cdir.mkdir()
    with running_ntpy(tmp_path, conf, listen=[f"{HOST.rsplit('.', 1)[0]}.2:0"]) as ntpy:
        ntpy.wait_for_log(r"leapsmear: this server SMEARS leap seconds")
        ntpy.wait_for_log(r"leap second pending: .* smeared over 86400 s")
        with chronyd_client(ntpy.endpoints[0][0], ntpy.port, cdir, poll=0) as client:
            assert _leap_status(client, "Normal") == "Normal"
