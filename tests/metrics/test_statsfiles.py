"""Statistics files: ntpd's line formats, file generations, links and failure handling.

Expected lines are written out by hand from ntpd's printf formats (``ntp_util.c``):
loopstats ``"%lu %s %.9f %.3f %.9f %.6f %d"``, peerstats ``"%lu %s %s %x %.9f %.9f %.9f
%.9f"``, time as ``ulfptoa(now, 3)``. NTPsec's own parser (``ntp.statfiles``, Debian's
python3-ntp) reads the files back when it is installed.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.config import Config, parse_text
from ntpy.core.actions import LoopStats, PeerStats
from ntpy.metrics.statsfiles import (
    FilePlan,
    StatsFiles,
    day_and_seconds,
    enabled_names,
    format_loopstats,
    format_peerstats,
    format_record,
    generation_suffix,
    plan_files,
    seconds9,
)

NS = 1_000_000_000
DAY_NS = 86_400 * NS
NTPSEC_PYTHON = "/usr/bin/python3"
NTPSEC_STATFILES = Path("/usr/lib/python3/dist-packages/ntp/statfiles.py")


def utc_ns(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, ns: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * NS + ns


# 2026-11-22 05:07:07.123 UTC is MJD 61366, 18427.123 s past midnight.
T0 = utc_ns(2026, 11, 22, 5, 7, 7, 123_000_000)


def loop(time_ns: int = T0, **kw: object) -> LoopStats:
    fields: dict[str, object] = dict(
        offset_ns=1234, frequency_ppb=-12345.0, jitter_ns=456, wander_ppb=1.0, poll=6
    )
    fields.update(kw)
    return LoopStats(time_ns=time_ns, **fields)  # type: ignore[arg-type]


def peer(time_ns: int = T0, **kw: object) -> PeerStats:
    fields: dict[str, object] = dict(
        source_id=1,
        address="192.168.1.1",
        status=0x9614,
        offset_ns=-12345,
        delay_ns=234567,
        dispersion_ns=12345,
        jitter_ns=3456,
    )
    fields.update(kw)
    return PeerStats(time_ns=time_ns, **fields)  # type: ignore[arg-type]


def config(text: str) -> Config:
    return parse_text(text).config


# ------------------------------------------------------------------------ formats


def test_day_and_seconds_matches_the_ntpd_example() -> None:
    assert day_and_seconds(T0) == (61366, "18427.123")
    assert day_and_seconds(0) == (40587, "0.000")  # 1970-01-01 is MJD 40587
    assert day_and_seconds(utc_ns(2000, 1, 1)) == (51544, "0.000")


def test_seconds_round_to_milliseconds_like_ulfptoa() -> None:
    midnight = utc_ns(2026, 11, 22)
    assert day_and_seconds(midnight + 1_499_999)[1] == "0.001"
    assert day_and_seconds(midnight + 1_500_000)[1] == "0.002"
    assert day_and_seconds(midnight + 59 * NS + 999_600_000)[1] == "60.000"
    # ntpd prints 86400.000 in the last half millisecond of a day (same MJD): so do we.
    assert day_and_seconds(midnight + DAY_NS - 1) == (61366, "86400.000")


def test_loopstats_line_is_ntpds() -> None:
    assert format_loopstats(loop()) == "61366 18427.123 0.000001234 -12.345 0.000000456 0.001000 6"
    line = format_loopstats(loop(offset_ns=-2_500_000_000, frequency_ppb=500_000.0, poll=10))
    assert line == "61366 18427.123 -2.500000000 500.000 0.000000456 0.001000 10"


def test_peerstats_line_is_ntpds() -> None:
    assert (
        format_peerstats(peer())
        == "61366 18427.123 192.168.1.1 9614 -0.000012345 0.000234567 0.000012345 0.000003456"
    )
    v6 = format_peerstats(peer(address="2001:db8::1", status=0x1A))
    assert v6.split()[2:4] == ["2001:db8::1", "1a"]


def test_odd_addresses_cannot_break_the_columns() -> None:
    line = format_peerstats(peer(address="bad host\nname"))
    assert "\n" not in line and len(line.split()) == 8
    assert format_peerstats(peer(address="")).split()[2] == "-"


def test_format_record_dispatches_and_rejects_other_objects() -> None:
    assert format_record(loop())[0] == "loopstats"
    assert format_record(peer())[0] == "peerstats"
    with pytest.raises(TypeError):
        format_record("nope")  # type: ignore[arg-type]


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_seconds9_equals_printf(ns: int) -> None:
    assert seconds9(ns) == "%.9f" % (ns / 1e9) or (ns < 0 and seconds9(ns) == "-0.000000000")


records = st.one_of(
    st.builds(
        LoopStats,
        time_ns=st.integers(min_value=0, max_value=2**64 * NS // 2**32),
        offset_ns=st.integers(min_value=-(2**63), max_value=2**63),
        frequency_ppb=st.floats(allow_nan=True, allow_infinity=True),
        jitter_ns=st.integers(min_value=0, max_value=2**63),
        wander_ppb=st.floats(),
        poll=st.integers(min_value=-10, max_value=17),
    ),
    st.builds(
        PeerStats,
        time_ns=st.integers(min_value=0, max_value=2**64 * NS // 2**32),
        source_id=st.integers(min_value=0, max_value=1000),
        address=st.text(max_size=40),
        status=st.integers(min_value=0, max_value=0xFFFF),
        offset_ns=st.integers(min_value=-(2**63), max_value=2**63),
        delay_ns=st.integers(min_value=-(2**40), max_value=2**40),
        dispersion_ns=st.integers(min_value=0, max_value=2**40),
        jitter_ns=st.integers(min_value=0, max_value=2**40),
    ),
)


@settings(max_examples=300)
@given(records)
def test_any_record_renders_to_one_line_with_the_right_fields(rec: LoopStats | PeerStats) -> None:
    name, line = format_record(rec)
    assert len(line.splitlines()) == 1
    fields = line.split()
    assert len(fields) == (7 if name == "loopstats" else 8)
    whole, _, millis = fields[1].partition(".")
    assert len(millis) == 3
    # ntpviz's conversion: Unix time = 86400 * MJD + seconds - 3506716800 (MJD 40587 * 86400).
    unix_ms = (86400 * int(fields[0]) - 3506716800) * 1000 + int(whole) * 1000 + int(millis)
    assert abs(unix_ms * 1_000_000 - rec.time_ns) <= 500_000


# ------------------------------------------------------------------------ generations


@pytest.mark.parametrize(
    ("filetype", "when", "suffix"),
    [
        ("none", T0, ""),
        ("day", T0, ".20261122"),
        ("month", T0, ".202611"),
        ("year", T0, ".2026"),
        ("week", T0, ".2026w47"),
        # ISO weeks: 2027-01-01 (a Friday) is in week 53 of 2026; 2029-12-31 in 2030's week 1.
        ("week", utc_ns(2027, 1, 1, 12), ".2026w53"),
        ("week", utc_ns(2029, 12, 31), ".2030w01"),
        ("day", utc_ns(1999, 12, 31, 23, 59, 59, 999_999_999), ".19991231"),
    ],
)
def test_generation_suffixes(filetype: str, when: int, suffix: str) -> None:
    assert generation_suffix(filetype, when, pid=42, uptime_s=0) == suffix


def test_pid_and_age_suffixes() -> None:
    assert generation_suffix("pid", T0, pid=4242, uptime_s=0) == ".#4242"
    assert generation_suffix("age", T0, pid=1, uptime_s=5) == ".a00000000"
    assert generation_suffix("age", T0, pid=1, uptime_s=86_400 * 2 + 7) == ".a00172800"
    with pytest.raises(ValueError, match="unknown filegen type"):
        generation_suffix("fortnight", T0, pid=1, uptime_s=0)
    with pytest.raises(ValueError, match="unknown filegen type"):
        FilePlan("loopstats", "/x", filetype="hourly")


# ------------------------------------------------------------------------ config rules


def test_statistics_enables_and_filegen_overrides() -> None:
    c = config(
        "statsdir /s\nstatistics loopstats peerstats clockstats\n"
        "filegen peerstats disable\nfilegen sysstats enable\nfilegen loopstats type week\n"
    )
    assert enabled_names(c) == ["clockstats", "loopstats", "sysstats"]
    assert enabled_names(config("statsdir /s\n")) == []


def test_plans_follow_filegen_options(caplog: pytest.LogCaptureFixture) -> None:
    c = config(
        "statsdir /var/log/ntpstats\nstatistics loopstats peerstats rawstats\n"
        "filegen loopstats file loops type month nolink\n"
        "filegen peerstats file ../../etc/passwd\n"
    )
    with caplog.at_level(logging.INFO):
        plans = plan_files(c)
    assert plans == [
        FilePlan("loopstats", "/var/log/ntpstats/loops", "month", False),
        FilePlan("peerstats", "/var/log/ntpstats/peerstats", "day", True),
    ]
    assert "rawstats: not produced by ntpy" in caplog.text
    assert "leaves the statistics directory" in caplog.text
    # ntpd concatenates statsdir and the file name: a leading '/' stays inside statsdir.
    abs_file = config("statsdir /d\nstatistics loopstats\nfilegen loopstats file /x/y\n")
    assert plan_files(abs_file)[0].path == "/d/x/y"


def test_nothing_to_write_gives_none(caplog: pytest.LogCaptureFixture) -> None:
    assert StatsFiles.from_config(config("server 127.0.0.1\n")) is None
    assert StatsFiles.from_config(config("statsdir /tmp\nstatistics clockstats\n")) is None
    with caplog.at_level(logging.WARNING):
        assert StatsFiles.from_config(config("statistics loopstats\n")) is None
    assert "no 'statsdir' is set" in caplog.text


# ------------------------------------------------------------------------ writing


def stats_in(tmp_path: Path, extra: str = "", **kw: object) -> StatsFiles:
    text = f"statsdir {tmp_path}\nstatistics loopstats peerstats\n{extra}"
    plans = plan_files(config(text))
    return StatsFiles(plans, **kw)  # type: ignore[arg-type]


def test_lines_are_on_disk_before_close(tmp_path: Path) -> None:
    s = stats_in(tmp_path)
    s.record(loop())
    s.record(peer())
    # Not closed, not flushed by us: another reader sees the lines (a killed daemon keeps them).
    assert (tmp_path / "loopstats.20261122").read_text() == format_loopstats(loop()) + "\n"
    assert (tmp_path / "peerstats.20261122").read_text() == format_peerstats(peer()) + "\n"
    assert os.readlink(tmp_path / "loopstats") == "loopstats.20261122"
    assert s.lines_written() == {"loopstats": 1, "peerstats": 1}
    s.close()
    s.close()  # idempotent


def test_rotation_at_utc_midnight_keeps_every_line(tmp_path: Path) -> None:
    s = stats_in(tmp_path)
    start = utc_ns(2026, 12, 31, 22, 0)
    times = [start + i * 7 * 60 * NS for i in range(40)]  # 22:00 .. 02:33 next day
    for t in times:
        s.record(loop(t))
        s.record(peer(t + 1))
    # A late record stamped before midnight still goes to the old day's file.
    late = utc_ns(2026, 12, 31, 23, 59, 59)
    s.record(loop(late))
    s.close()
    old = (tmp_path / "loopstats.20261231").read_text().splitlines()
    new = (tmp_path / "loopstats.20270101").read_text().splitlines()
    assert len(old) + len(new) == len(times) + 1
    assert {ln.split()[0] for ln in old} == {str(day_and_seconds(start)[0])}
    assert {ln.split()[0] for ln in new} == {str(day_and_seconds(start)[0] + 1)}
    assert old[-1] == format_loopstats(loop(late))
    assert sum(1 for t in times if t < utc_ns(2027, 1, 1)) + 1 == len(old)
    peers = list(tmp_path.glob("peerstats.*"))
    assert sorted(p.name for p in peers) == ["peerstats.20261231", "peerstats.20270101"]
    # The plain names point at the newest generation opened (the late record reopened the
    # old one; ntpd does the same).
    assert os.readlink(tmp_path / "peerstats") == "peerstats.20270101"
    assert os.readlink(tmp_path / "loopstats") == "loopstats.20261231"


def test_link_moves_an_old_plain_file_aside_and_replaces_hard_links(tmp_path: Path) -> None:
    (tmp_path / "loopstats").write_text("old ntpd data\n")
    (tmp_path / "peerstats.20200101").write_text("x\n")
    os.link(tmp_path / "peerstats.20200101", tmp_path / "peerstats")  # ntpd's hard link
    s = stats_in(tmp_path, pid=77)
    s.record(loop())
    s.record(peer())
    s.close()
    assert (tmp_path / "loopstats.77C0").read_text() == "old ntpd data\n"
    assert os.readlink(tmp_path / "loopstats") == "loopstats.20261122"
    assert os.readlink(tmp_path / "peerstats") == "peerstats.20261122"
    assert (tmp_path / "peerstats.20200101").read_text() == "x\n"
    assert not list(tmp_path.glob("*ntpy-link*"))


def test_nolink_and_type_none(tmp_path: Path) -> None:
    s = stats_in(tmp_path, "filegen loopstats nolink type year\nfilegen peerstats type none\n")
    s.record(loop())
    s.record(peer())
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loopstats.2026", "peerstats"]
    assert not (tmp_path / "peerstats").is_symlink()


def test_filegen_file_name_and_pid_type(tmp_path: Path) -> None:
    s = stats_in(tmp_path, "filegen loopstats file loops type pid\n", pid=99)
    s.record(loop())
    s.close()
    assert (tmp_path / "loops.#99").exists()
    assert os.readlink(tmp_path / "loops") == "loops.#99"


def test_age_generation_uses_daemon_uptime(tmp_path: Path) -> None:
    clock = [0]
    s = stats_in(tmp_path, "filegen loopstats type age nolink\n", monotonic_ns=lambda: clock[0])
    s.record(loop())
    clock[0] = 86_400 * NS + 5
    s.record(loop())
    s.close()
    names = sorted(p.name for p in tmp_path.glob("loopstats*"))
    assert names == ["loopstats.a00000000", "loopstats.a00086400"]


def test_announce_names_the_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = stats_in(tmp_path)
    with caplog.at_level(logging.INFO):
        s.announce(T0)
    assert f"loopstats -> {tmp_path}/loopstats.20261122" in caplog.text
    assert f"peerstats -> {tmp_path}/peerstats.20261122" in caplog.text


# ------------------------------------------------------------------------ failures


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_missing_dir_warns_once_counts_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    statsdir = tmp_path / "missing"
    c = config(f"statsdir {statsdir}\nstatistics loopstats peerstats\n")
    with caplog.at_level(logging.INFO):
        s = StatsFiles.from_config(c)
        assert s is not None
        for i in range(20):
            s.record(loop(T0 + i * NS))
            s.record(peer(T0 + i * NS))
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "does not exist" in warned[0], warned
    assert s.failures["loopstats_open"] == 20 and s.failures["peerstats_dropped"] == 20
    statsdir.mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        s.record(loop())
    assert "writing" in caplog.text and "again" in caplog.text
    assert (statsdir / "loopstats.20261122").read_text().count("\n") == 1
    s.close()


def test_statsdir_that_is_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bogus = tmp_path / "file"
    bogus.write_text("")
    with caplog.at_level(logging.WARNING):
        s = StatsFiles.from_config(config(f"statsdir {bogus}\nstatistics loopstats\n"))
        assert s is not None
        s.record(loop())
        s.record(loop())
    assert len(warnings_of(caplog)) == 1 and "is not a directory" in caplog.text


def test_open_failure_at_run_time_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "loopstats.20261122").mkdir()  # the generation file cannot be opened
    s = stats_in(tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            s.record(loop())
    assert len(warnings_of(caplog)) == 1 and "cannot open" in caplog.text
    assert s.failures["loopstats_open"] == 5


def test_write_failure_is_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    os.symlink("/dev/full", tmp_path / "loopstats")  # every write fails with ENOSPC
    s = stats_in(tmp_path, "filegen loopstats type none\n")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            s.record(loop())
    assert s.failures["loopstats_write"] == 5
    assert len(warnings_of(caplog)) == 1 and "cannot write" in caplog.text
    s.close()


def test_rotation_open_failure_keeps_writing_the_old_file(tmp_path: Path) -> None:
    s = stats_in(tmp_path, "filegen peerstats disable\n")
    s.record(loop(utc_ns(2026, 11, 22, 23)))
    (tmp_path / "loopstats.20261123").mkdir()  # tomorrow's file cannot be opened
    s.record(loop(utc_ns(2026, 11, 23, 1)))
    s.close()
    assert (tmp_path / "loopstats.20261122").read_text().count("\n") == 2
    assert s.failures["loopstats_open"] == 1


# ------------------------------------------------------------------------ NTPsec parser


def ntpsec_parse(statsdir: Path) -> dict[str, object]:
    """Read ``statsdir`` with NTPsec's ntp.statfiles (under the system Python)."""
    script = (
        "import json, sys\n"
        "from ntp.statfiles import NTPStats\n"
        "s = NTPStats(sys.argv[1])\n"
        "print(json.dumps({'loop': s.loopstats, 'peer': s.peerstats,"
        " 'peers': sorted(s.peersplit())}))\n"
    )
    res = subprocess.run(
        [NTPSEC_PYTHON, "-c", script, str(statsdir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out: dict[str, object] = json.loads(res.stdout)
    return out


needs_ntpsec = pytest.mark.skipif(
    not (NTPSEC_STATFILES.exists() and shutil.which(NTPSEC_PYTHON)),
    reason="NTPsec's python3-ntp (ntp.statfiles) is not installed",
)


@needs_ntpsec
def test_ntpsec_statfiles_reads_our_files(tmp_path: Path) -> None:
    now = time.time_ns()
    s = stats_in(tmp_path)
    for i in range(5):
        t = now - (5 - i) * 64 * NS
        s.record(loop(t, offset_ns=-1500 * i))
        s.record(peer(t, address="127.0.0.1"))
        s.record(peer(t, address="::1", status=0x1314))
    s.close()
    parsed = ntpsec_parse(tmp_path)
    loops = parsed["loop"]
    assert isinstance(loops, list) and len(loops) == 5
    first = loops[0]
    # NTPStats replaces MJD+seconds by Unix ms and seconds; the rest are our fields.
    assert abs(first[0] - (now - 5 * 64 * NS) // 1_000_000) <= 1
    assert first[2:] == ["0.000000000", "-12.345", "0.000000456", "0.001000", "6"]
    assert parsed["peers"] == ["127.0.0.1", "::1"]
    peers = parsed["peer"]
    assert isinstance(peers, list) and len(peers) == 10
    assert all(len(row) == 8 for row in peers)
