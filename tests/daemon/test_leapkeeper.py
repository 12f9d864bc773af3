"""daemon/leapkeeper.py: the leap file's warnings, arming the clock on the last day only,
the smearing server's served state, and the boundary wake-ups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ntpy.clock.leap import SmearedClock
from ntpy.clock.virtual import VirtualClock
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.core.leap import SmearPolicy
from ntpy.core.leapfile import NTP_UNIX_OFFSET_S, render_leap_file
from ntpy.core.system import LocalReference, SystemState
from ntpy.daemon.leapkeeper import LeapKeeper

NS = 1_000_000_000
JAN_2017 = 1_483_228_800


class FakeLoop:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def call_at(self, when: int, callback: Any) -> None:
        self.calls.append(when)


def _keeper(now_s: int, smear: bool = False) -> tuple[LeapKeeper, VirtualClock, list[int]]:
    rt = [now_s * NS]
    clock = VirtualClock(realtime=lambda: rt[0], precision_log=-20)
    opts = SyncOptions(precision=-20, clock_name="virtual", local=LocalReference(10, 0))
    engine = SyncEngine(opts, lambda: 4)
    smeared = SmearedClock(clock, SmearPolicy("noon", 86_400)) if smear else None
    keeper = LeapKeeper(engine, clock, FakeLoop(), clock.now_ns, lambda: None, smeared)  # type: ignore[arg-type]
    return keeper, clock, rt


def _file(tmp_path: Path, expires_unix: int, with_leap: bool = True) -> str:
    entries = [(JAN_2017 - 549 * 86_400 + NTP_UNIX_OFFSET_S, 35)]
    if with_leap:
        entries.append((JAN_2017 + NTP_UNIX_OFFSET_S, 36))
    path = tmp_path / "leap-seconds.list"
    path.write_bytes(render_leap_file(entries, 3_600_000_000, expires_unix + NTP_UNIX_OFFSET_S))
    return str(path)


def test_expired_and_corrupt_files_are_warned_about_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper, _clock, _rt = _keeper(JAN_2017 - 10 * 86_400)
    caplog.set_level(logging.INFO, "ntpy.leap")
    keeper.load(_file(tmp_path, JAN_2017 - 20 * 86_400))
    assert keeper.table is not None and "expired" in caplog.text and "fresh copy" in caplog.text
    caplog.clear()
    path = tmp_path / "leap-seconds.list"
    path.write_bytes(path.read_bytes().replace(b"#@\t", b"#@\t9"))
    keeper.load(str(path))
    assert keeper.table is None and "SHA-1" in caplog.text and "fresh copy" in caplog.text
    caplog.clear()
    keeper.load(str(tmp_path / "missing"))
    assert keeper.table is None and "cannot read it" in caplog.text


def test_the_clock_is_armed_on_the_last_day_and_disarmed_after(tmp_path: Path) -> None:
    keeper, clock, rt = _keeper(JAN_2017 - 2 * 86_400)
    keeper.load(_file(tmp_path, JAN_2017 + 100 * 86_400))
    keeper.update()
    assert keeper.event is not None and keeper.armed == 0
    rt[0] = (JAN_2017 - 86_400) * NS
    keeper.update()
    assert keeper.armed == 1
    rt[0] = JAN_2017 * NS + NS // 2  # the clock reads 23:59:59.5 a second time
    assert clock.now_ns() == JAN_2017 * NS - NS // 2 and clock.leap_applied()
    rt[0] = JAN_2017 * NS + 2 * NS
    keeper.update()
    assert keeper.armed == 0 and keeper.event is None and not clock.leap_applied()


def test_a_smearing_server_does_not_announce(tmp_path: Path) -> None:
    keeper, _clock, _rt = _keeper(JAN_2017 - 5 * 86_400, smear=True)
    keeper.load(_file(tmp_path, JAN_2017 + 100 * 86_400))
    state = SystemState(
        leap=1,
        stratum=2,
        refid=0,
        reference_ns=0,
        root_delay_ns=0,
        root_dispersion_ns=0,
        precision=-20,
    )
    assert keeper.served(state).leap == 0
    keeper.update()
    assert keeper.smeared is not None and keeper.smeared.event == keeper.event
