"""Log routing: stderr format, journald priority prefixes, the logfile, and reopen()."""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from ntpy.daemon.logsetup import (
    JournalFormatter,
    LogSetup,
    ReopenableFileHandler,
    on_journal,
    parse_level,
    syslog_priority,
)

PLAIN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ntpy\[(\d+)\]: (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)
_names = itertools.count()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger, so the tests neither see nor disturb pytest's root handlers."""
    log = logging.getLogger(f"test_logsetup.{next(_names)}")
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@pytest.fixture
def journal_stream(tmp_path: Path) -> Iterator[tuple[TextIO, dict[str, str]]]:
    """A real file standing in for journald's socket, and the JOURNAL_STREAM naming it."""
    with open(tmp_path / "journal", "w+", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        yield stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def read(stream: TextIO) -> str:
    if isinstance(stream, io.StringIO):
        return stream.getvalue()
    stream.flush()
    stream.seek(0)
    return stream.read()


def test_plain_stderr_lines_carry_time_and_pid(logger: logging.Logger) -> None:
    err = io.StringIO()
    setup = LogSetup(stream=err, environ={}, logger=logger)
    setup.configure("info", None)
    logger.info("hello %s", "world")
    logger.debug("hidden")
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    match = PLAIN_LINE.match(lines[0])
    assert match is not None, lines[0]
    assert int(match.group(1)) == os.getpid()
    assert lines[0].endswith("INFO hello world")
    assert not setup.journal


def test_levels_are_validated_before_anything_changes(logger: logging.Logger) -> None:
    err = io.StringIO()
    setup = LogSetup(stream=err, environ={}, logger=logger)
    setup.configure("WARNING", None)
    with pytest.raises(ValueError, match=r"unknown log level 'loud'.*debug, info"):
        setup.configure("loud", None)
    logger.warning("still here")
    assert "still here" in err.getvalue()
    assert logger.level == logging.WARNING
    assert parse_level(" Debug ") == logging.DEBUG


def test_logfile_appends_and_foreground_also_writes_stderr(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "ntpy.log"
    path.write_text("earlier line\n")
    err = io.StringIO()
    setup = LogSetup(stream=err, environ={}, logger=logger)
    setup.configure("info", str(path))
    logger.info("to both")
    assert setup.file_open
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"
    assert PLAIN_LINE.match(lines[1]) and lines[1].endswith("to both")
    assert err.getvalue().endswith("INFO to both\n")


def test_logfile_in_background_is_the_only_output(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "ntpy.log"
    err = io.StringIO()
    LogSetup(foreground=False, stream=err, environ={}, logger=logger).configure("info", str(path))
    logger.info("file only")
    assert "file only" in path.read_text()
    assert err.getvalue() == ""


@pytest.mark.parametrize("foreground", [True, False])
def test_unopenable_logfile_is_one_warning_then_stderr(
    tmp_path: Path, logger: logging.Logger, foreground: bool
) -> None:
    path = tmp_path / "missing-dir" / "ntpy.log"
    err = io.StringIO()
    setup = LogSetup(foreground=foreground, stream=err, environ={}, logger=logger)
    setup.configure("info", str(path))
    logger.info("carry on")
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert "WARNING cannot open logfile" in lines[0]
    assert str(path) in lines[0] and "No such file or directory" in lines[0]
    assert lines[1].endswith("INFO carry on")
    assert not setup.file_open
    assert setup.logfile == str(path)


def test_journal_lines_have_priority_prefix_and_no_timestamp(
    logger: logging.Logger, journal_stream: tuple[TextIO, dict[str, str]]
) -> None:
    stream, environ = journal_stream
    setup = LogSetup(stream=stream, environ=environ, logger=logger)
    setup.configure("debug", None)
    assert setup.journal
    logger.debug("d")
    logger.info("i")
    logger.warning("first\nsecond")
    logger.error("e")
    logger.critical("c")
    assert read(stream) == "<7>d\n<6>i\n<4>first\n<4>second\n<3>e\n<2>c\n"


def test_journal_traceback_lines_keep_the_priority(
    logger: logging.Logger, journal_stream: tuple[TextIO, dict[str, str]]
) -> None:
    stream, environ = journal_stream
    LogSetup(stream=stream, environ=environ, logger=logger).configure("info", None)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    lines = read(stream).splitlines()
    assert lines[0] == "<3>failed"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in lines)


@pytest.mark.parametrize("value", ["", "1", "x:y", "1:2:3", "0:0"])
def test_journal_stream_must_name_our_stderr(
    logger: logging.Logger, journal_stream: tuple[TextIO, dict[str, str]], value: str
) -> None:
    """An inherited JOURNAL_STREAM after stderr was redirected elsewhere must not count."""
    stream, _ = journal_stream
    assert not on_journal(stream, {"JOURNAL_STREAM": value})
    setup = LogSetup(stream=stream, environ={"JOURNAL_STREAM": value}, logger=logger)
    setup.configure("info", None)
    logger.info("plain")
    assert not setup.journal
    assert PLAIN_LINE.match(read(stream))


def test_journal_check_without_a_file_descriptor() -> None:
    assert not on_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_journal_with_logfile_keeps_full_lines_in_the_file(
    tmp_path: Path, logger: logging.Logger, journal_stream: tuple[TextIO, dict[str, str]]
) -> None:
    stream, environ = journal_stream
    path = tmp_path / "ntpy.log"
    LogSetup(stream=stream, environ=environ, logger=logger).configure("info", str(path))
    logger.warning("both")
    assert read(stream) == "<4>both\n"
    assert PLAIN_LINE.match(path.read_text())


def test_reopen_after_rotation_starts_a_fresh_file(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "ntpy.log"
    setup = LogSetup(foreground=False, stream=io.StringIO(), environ={}, logger=logger)
    setup.configure("info", str(path))
    logger.info("before rotation")
    path.rename(tmp_path / "ntpy.log.1")  # what logrotate does
    logger.info("still old file")
    setup.reopen()
    logger.info("after rotation")
    old = (tmp_path / "ntpy.log.1").read_text()
    assert "before rotation" in old and "still old file" in old
    assert "after rotation" not in old
    assert "after rotation" in path.read_text()
    assert "before rotation" not in path.read_text()


def test_failed_reopen_keeps_the_old_file(tmp_path: Path, logger: logging.Logger) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    err = io.StringIO()
    setup = LogSetup(foreground=False, stream=err, environ={}, logger=logger)
    setup.configure("info", str(logdir / "ntpy.log"))
    logdir.rename(tmp_path / "gone")
    setup.reopen()
    logger.info("not lost")
    text = (tmp_path / "gone" / "ntpy.log").read_text()
    assert "cannot reopen logfile" in text and "still logging to the previous file" in text
    assert "not lost" in text
    assert err.getvalue() == ""
    assert setup.file_open


def test_reopen_retries_a_logfile_that_failed_at_start(
    tmp_path: Path, logger: logging.Logger
) -> None:
    logdir = tmp_path / "logs"
    err = io.StringIO()
    setup = LogSetup(foreground=False, stream=err, environ={}, logger=logger)
    setup.configure("info", str(logdir / "ntpy.log"))
    setup.reopen()  # still missing: a warning, stderr stays
    assert "still logging to stderr" in err.getvalue()
    logdir.mkdir()
    setup.reopen()
    logger.info("into the file")
    assert setup.file_open
    assert "into the file" in (logdir / "ntpy.log").read_text()
    assert "into the file" not in err.getvalue()  # background: stderr fallback ended


def test_reopen_without_logfile_is_a_no_op(logger: logging.Logger) -> None:
    err = io.StringIO()
    setup = LogSetup(stream=err, environ={}, logger=logger)
    setup.configure("info", None)
    setup.reopen()
    assert err.getvalue() == ""


def test_configure_again_replaces_only_its_own_handlers(
    tmp_path: Path, logger: logging.Logger
) -> None:
    foreign = logging.StreamHandler(io.StringIO())
    logger.addHandler(foreign)
    err = io.StringIO()
    setup = LogSetup(stream=err, environ={}, logger=logger)
    setup.configure("info", str(tmp_path / "a.log"))
    setup.configure("info", None)
    logger.info("once")
    assert err.getvalue().count("once") == 1
    assert "once" not in (tmp_path / "a.log").read_text()
    assert foreign in logger.handlers
    setup.close()
    assert logger.handlers == [foreign]


def test_default_logger_is_root_and_close_restores_it() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    setup = LogSetup(stream=io.StringIO(), environ={})
    try:
        setup.configure("error", None)
        assert len(root.handlers) == len(before[0]) + 1
    finally:
        setup.close()
        root.setLevel(before[1])
    assert root.handlers == before[0]


def test_syslog_priority_rounds_custom_levels_down() -> None:
    assert syslog_priority(logging.INFO + 5) == 6
    assert syslog_priority(logging.WARNING + 1) == 4
    assert syslog_priority(logging.CRITICAL + 10) == 2
    assert syslog_priority(1) == 7
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert JournalFormatter().format(record) == "<3>a\n<3>b"


# A log file that stops taking lines (issue 11: /dev/full printed a traceback per line).


class FullDisk(io.StringIO):
    """A log file stand-in that fails with ENOSPC while ``full`` is set."""

    full = True

    def write(self, s: str) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return super().write(s)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_is_one_warning_not_a_traceback_per_line(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    err = io.StringIO()
    setup = LogSetup(foreground=False, stream=err, environ={}, logger=logger)
    setup.configure("info", "/dev/full")
    for i in range(50):
        logger.info("line %d", i)  # and the caller carries on: nothing is raised
    warnings = read(err).splitlines()
    assert len(warnings) == 1
    assert PLAIN_LINE.match(warnings[0])
    assert (
        "cannot write logfile /dev/full: No space left on device; 1 log line(s) lost"
        in (warnings[0])
    )
    assert "Logging error" not in capsys.readouterr().err
    setup.close()


def test_lost_lines_are_reported_once_per_interval_and_on_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [0]
    notices: list[str] = []
    handler = ReopenableFileHandler(
        str(tmp_path / "log"), notice=notices.append, interval_ns=60, monotonic_ns=lambda: now[0]
    )
    disk = FullDisk()
    handler.setStream(disk)
    record = logging.makeLogRecord({"msg": "tick", "levelno": logging.INFO})
    for _ in range(10):
        handler.handle(record)
        now[0] += 1
    assert len(notices) == 1 and "1 log line(s) lost;" in notices[0]
    now[0] = 61
    handler.handle(record)
    assert len(notices) == 2 and "10 log line(s) lost since the last warning" in notices[1]
    handler.handle(record)
    disk.full = False
    handler.handle(record)
    assert (
        "writable again; 1 more log line(s) lost since the last warning, 12 in all" in (notices[2])
    )
    assert disk.getvalue() == "tick\n"
    assert handler.lost == 12
    disk.full = True
    handler.handle(record)  # a new outage warns at once
    assert len(notices) == 4 and "1 log line(s) lost;" in notices[3]
    assert "Logging error" not in capsys.readouterr().err
    handler.setStream(io.StringIO())
    handler.close()


def test_a_format_bug_is_still_reported_by_logging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notices: list[str] = []
    handler = ReopenableFileHandler(str(tmp_path / "log"), notice=notices.append)
    handler.handle(logging.makeLogRecord({"msg": "%d", "args": ("x",)}))
    assert notices == [] and handler.lost == 0
    assert "Logging error" in capsys.readouterr().err
    handler.close()
