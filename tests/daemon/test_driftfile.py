"""Drift file: ntpd's format, reading that never raises, writing that is atomic."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntpy.daemon import driftfile
from ntpy.daemon.driftfile import (
    DriftFileError,
    DriftWriter,
    format_drift,
    read_drift,
    write_drift,
)

HOUR = 3600 * 1_000_000_000


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "ntp.drift")


# -- reading -------------------------------------------------------------------------


def test_missing_file_is_quiet(tmp_path: Path) -> None:
    assert read_drift(str(tmp_path / "ntp.drift")) == (None, None)


@pytest.mark.parametrize(
    ("content", "ppm"),
    [
        (b"-12.345\n", -12.345),
        (b"-12.345", -12.345),
        (b"0.000\n", 0.0),
        (b"  7.5  \n", 7.5),
        (b"500\n", 500.0),
        (b"-500.000\n", -500.0),
        (b"+1.5e1\n", 15.0),
        (b"12.345678\n", 12.345678),  # NTPsec writes 6 decimals
        (b"-12.345678 0.123456\n", -12.345678),  # chrony: frequency and skew
        (b"3.25\r\n", 3.25),
        (b"3.25\n\n", 3.25),
    ],
)
def test_valid_files(tmp_path: Path, content: bytes, ppm: float) -> None:
    path = tmp_path / "ntp.drift"
    path.write_bytes(content)
    assert read_drift(str(path)) == (ppm, None)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (b"abc\n", "not a number: 'abc'"),
        (b"nan\n", "not a number: 'nan'"),
        (b"inf\n", "not a number: 'inf'"),
        (b"-Infinity\n", "not a number"),
        (b"1e999\n", "not a finite number"),
        (b"600\n", "600.000 PPM is beyond the +/-500 PPM limit"),
        (b"-500.001\n", "beyond"),
        (b"1_0\n", "not a number"),
        (b"0x10\n", "not a number"),
        (b"12.3abc\n", "not a number"),
        (b"1.0\n2.0\n", "more than one line"),
        (b"1 2 3\n", "more than two fields"),
        (b"1.0 x\n", "not a number: 'x'"),
        (b"\x00\x01\xff\xfe", "not text"),
        (b"1.0\x00\n", "not text"),
        ("\u22125.0\n".encode(), "not text"),  # a Unicode minus sign
        (b"1" * 5000, "larger than 4096 bytes"),
    ],
)
def test_corrupt_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "ntp.drift"
    path.write_bytes(content)
    ppm, warning = read_drift(str(path))
    assert ppm is None and warning is not None
    assert warning.startswith(f"{path}: corrupt drift file (")
    assert reason in warning
    assert warning.endswith("); starting with a fresh frequency estimate")


def test_unreadable_path_is_a_warning(tmp_path: Path) -> None:
    ppm, warning = read_drift(str(tmp_path))  # a directory
    assert ppm is None and warning is not None and "cannot read drift file" in warning
    ppm, warning = read_drift("/tmp/bad\0path")
    assert ppm is None and warning is not None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening a FIFO for reading would block without O_NONBLOCK
    ppm, warning = read_drift(str(fifo))
    assert ppm is None and warning == (
        f"{fifo}: cannot read drift file (not a regular file); "
        "starting with a fresh frequency estimate"
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64) | st.text(alphabet="0123456789+-.eE \n\tnaif_x", max_size=24))
def test_any_content_reads_or_warns_never_raises(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "ntp.drift"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    ppm, warning = read_drift(str(path))
    if ppm is None:
        assert warning is not None and "corrupt drift file" in warning
    else:
        assert warning is None and math.isfinite(ppm) and abs(ppm) <= 500


# -- writing -------------------------------------------------------------------------


def test_format_is_ntpds() -> None:
    assert format_drift(-12.3456) == "-12.346\n"
    assert format_drift(0) == "0.000\n"
    assert format_drift(499.9999) == "500.000\n"


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(min_value=-499.999, max_value=499.999))
def test_round_trip(tmp_path: Path, ppm: float) -> None:
    path = str(tmp_path / "ntp.drift")
    write_drift(path, ppm)
    got, warning = read_drift(path)
    assert warning is None and got is not None and abs(got - ppm) <= 0.0005


def test_write_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "ntp.drift"
    path.write_text("1.000\n")
    write_drift(str(path), -12.345)
    assert path.read_text() == "-12.345\n"
    assert leftovers(tmp_path) == []
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 500.5, -1e9])
def test_refuses_values_it_could_not_read_back(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "ntp.drift"
    path.write_text("1.000\n")
    with pytest.raises(DriftFileError, match="not writing frequency"):
        write_drift(str(path), bad)
    assert path.read_text() == "1.000\n"


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_failure_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "ntp.drift"
    path.write_text("1.000\n")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(DriftFileError) as info:
        write_drift(str(path), 2.5)
    monkeypatch.undo()
    assert str(info.value) == (
        f"{path}: cannot write drift file: No space left on device; the previous file is unchanged"
    )
    assert path.read_text() == "1.000\n"
    assert leftovers(tmp_path) == []


def test_directory_sync_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(directory: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(driftfile, "_fsync_directory", fail)
    path = tmp_path / "ntp.drift"
    with pytest.raises(DriftFileError, match="written, but syncing directory"):
        write_drift(str(path), 2.5)
    assert path.read_text() == "2.500\n"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DriftFileError, match=r"cannot create a temporary file in .*/nodir"):
        write_drift(str(tmp_path / "nodir" / "ntp.drift"), 1.0)


# -- the write policy ----------------------------------------------------------------


def test_writer_is_due_hourly(tmp_path: Path) -> None:
    w = DriftWriter(str(tmp_path / "ntp.drift"))
    t0 = 5 * HOUR
    assert not w.due(t0)  # the first call starts the clock
    assert not w.due(t0 + HOUR - 1)
    assert w.due(t0 + HOUR)
    assert w.write(-3.25, t0 + HOUR)
    assert not w.due(t0 + 2 * HOUR - 1)
    assert w.due(t0 + 2 * HOUR)
    assert (tmp_path / "ntp.drift").read_text() == "-3.250\n"


def test_writer_skips_unchanged_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[float] = []
    monkeypatch.setattr(driftfile, "write_drift", lambda path, ppm: written.append(ppm))
    w = DriftWriter(str(tmp_path / "ntp.drift"))
    w.loaded(-3.25)
    assert w.write(-3.2501, 0)  # same to three decimals as the file already holds
    assert w.write(-3.3, HOUR)
    assert w.write_at_exit(-3.3)
    assert written == [-3.3] and w.writes == 1


def test_writer_logs_failures_and_retries_next_hour(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = DriftWriter(str(tmp_path / "nodir" / "ntp.drift"))
    with caplog.at_level(logging.WARNING, logger="ntpy.drift"):
        assert not w.write(1.0, 10 * HOUR)
    assert w.failures == 1 and "cannot write drift file" in caplog.text
    assert not w.due(10 * HOUR + 1)  # not retried on every tick
    assert w.due(11 * HOUR)


def test_write_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "ntp.drift"
    w = DriftWriter(str(path))
    assert not w.write_at_exit(None)
    assert not path.exists()
    assert w.write_at_exit(12.0)
    assert path.read_text() == "12.000\n"
    assert not w.write_at_exit(float("nan"))
    assert path.read_text() == "12.000\n"


def test_writer_rejects_bad_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DriftWriter(str(tmp_path / "d"), interval_ns=0)


# -- temp files left by interrupted writes (issue 11: 160 after 300 kill -9s) --------


def test_start_removes_temp_files_of_interrupted_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ntp.drift"
    write_drift(str(path), 1.5)

    def killed(fd: int) -> None:  # kill -9 between writing the temp file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            write_drift(str(path), 2.5)
    monkeypatch.undo()
    assert len(leftovers(tmp_path)) == 3
    with caplog.at_level(logging.INFO, logger="ntpy.drift"):
        DriftWriter(str(path)).loaded(read_drift(str(path))[0])
    assert leftovers(tmp_path) == []
    assert "removed 3 temp file(s)" in caplog.text
    assert path.read_text() == "1.500\n"


def test_cleanup_touches_only_our_own_pattern(tmp_path: Path) -> None:
    path = tmp_path / "ntp.drift"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("keep")
    ours = [".ntp.drift.abcd_123.tmp", ".ntp.drift.zzzzzzzz.tmp"]
    others = [
        ".ntp.drift.short.tmp",  # not 8 random characters
        ".ntp.drift.ABCDEFGH.tmp",  # not mkstemp's alphabet
        "ntp.drift.abcdefgh.tmp",  # no leading dot
        ".other.drift.abcdefgh.tmp",  # another file's temp
        ".ntp.drift.abcdefgh.tmp.bak",
        "ntp.drift.tmp",
    ]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".ntp.drift.linklink.tmp").symlink_to(outside / "target")
    (tmp_path / ".ntp.drift.dirdirdi.tmp").mkdir()
    assert driftfile.remove_stale_temp_files(str(path)) == sorted(ours)
    left = set(leftovers(tmp_path))
    assert set(others) | {".ntp.drift.linklink.tmp", ".ntp.drift.dirdirdi.tmp"} <= left
    assert (outside / "target").read_text() == "keep"


def test_cleanup_of_a_missing_directory_is_quiet(tmp_path: Path) -> None:
    assert driftfile.remove_stale_temp_files(str(tmp_path / "nodir" / "ntp.drift")) == []
