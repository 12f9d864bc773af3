"""Where the daemon's log lines go: stderr, the journal, a ``logfile``, and reopening it.

Three situations, decided once in ``LogSetup.configure``:

- **Plain stderr** (a terminal, a pipe, a container log): each line carries a timestamp and
  ``ntpy[PID]``, because nothing downstream adds them.
- **systemd's journal**: systemd sets ``JOURNAL_STREAM=DEV:INODE`` for the stream it connects
  to stderr. If that names *our* stderr (a child whose stderr was redirected inherits the
  variable, so the inode check matters), journald already records time, pid and unit, so the
  line is just the message, prefixed with ``<N>`` -- the syslog priority, as in sd-daemon(3) --
  so ``journalctl -p warning`` still works. Every line of a multi-line message (a traceback)
  gets the prefix: journald splits on newlines and would file the rest at the default level.
- **``logfile PATH``** (ntpd's directive): lines are appended to the file; in the foreground
  they also go to stderr. A file that cannot be opened is one warning, then stderr -- a daemon
  that will not start because of its log file helps nobody keep time.

``reopen()`` is for SIGHUP after logrotate moved the file: the next line goes to a fresh file at
the configured path. The new file is opened *before* the old one is closed, so a reopen that
fails (directory gone, privileges dropped) keeps logging to the old file instead of losing lines.
Call it from the event loop, not from inside a Python signal handler: the handler would run
between two bytecodes of an ``emit`` in progress on the same thread.

A log file that stops taking lines (disk full, ``logfile /dev/full``, an I/O error) must not
cost more than the lines themselves: ``logging`` would print a 25-line traceback to stderr
per line, or nothing at all when stderr goes nowhere. Instead the lost lines are counted and
one warning on stderr says how many, at most once a minute, plus one when the file takes
lines again; the daemon keeps serving either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from ntpy.core.timestamps import NS_PER_S

__all__ = [
    "LEVELS",
    "JournalFormatter",
    "LogSetup",
    "ReopenableFileHandler",
    "on_journal",
    "parse_level",
    "syslog_priority",
]

PLAIN_FORMAT = "%(asctime)s ntpy[%(process)d]: %(levelname)s %(message)s"
"""Lines for stderr and the log file (ntpd's shape: time, name[pid], message)."""

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
"""Accepted level names (case-insensitive)."""

LOST_WARNING_INTERVAL_NS = 60 * NS_PER_S
"""At most one 'log lines lost' warning per this interval."""


def parse_level(level: str) -> int:
    """The ``logging`` level for a name in LEVELS; ValueError names the choices otherwise."""
    try:
        return LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}"
        ) from None


def syslog_priority(levelno: int) -> int:
    """The syslog priority (RFC 5424 severity) for a ``logging`` level number.

    Levels between the standard ones round down to the less severe priority, so a custom
    level 25 is ``info`` (6), not ``warning``.
    """
    if levelno >= logging.CRITICAL:
        return 2  # crit
    if levelno >= logging.ERROR:
        return 3  # err
    if levelno >= logging.WARNING:
        return 4  # warning
    if levelno >= logging.INFO:
        return 6  # info
    return 7  # debug


class JournalFormatter(logging.Formatter):
    """``<N>message`` on every line: journald strips the prefix and keeps N as the priority."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def on_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True if ``stream`` is the journal stream systemd announced in ``JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real fd (StringIO, closed, ...)
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler in append mode whose file can be swapped for a fresh one at its path.

    A line the file refuses (OSError) is counted in ``lost`` and reported through
    ``notice`` -- at most once per ``interval_ns``, and once more when writing works again --
    instead of logging's traceback per line.
    """

    def __init__(
        self,
        path: str,
        *,
        notice: Callable[[str], None] | None = None,
        interval_ns: int = LOST_WARNING_INTERVAL_NS,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        # delay=False: an unopenable file must fail here, where configure() can report it.
        super().__init__(path, mode="a", encoding="utf-8")
        self.lost = 0
        """Lines that could not be written, in all."""
        self._notice = notice if notice is not None else _write_stderr
        self._interval_ns = interval_ns
        self._monotonic_ns = monotonic_ns
        self._unreported = 0
        self._warned_ns: int | None = None
        """When the last warning went out; None while the file works."""
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)
        if not self._failed and self._warned_ns is not None:
            lost, self._unreported, self._warned_ns = self._unreported, 0, None
            self._notice(
                f"logfile {self.baseFilename} is writable again; "
                f"{lost} more log line(s) lost since the last warning, {self.lost} in all"
            )

    def handleError(self, record: logging.LogRecord) -> None:
        """The file refused the line: count it, warn if the last warning is old enough."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a bad format string: logging's own report
            super().handleError(record)
            return
        self._failed = True
        self.lost += 1
        self._unreported += 1
        now = self._monotonic_ns()
        if self._warned_ns is not None and now - self._warned_ns < self._interval_ns:
            return
        since = "" if self._warned_ns is None else " since the last warning"
        lost, self._unreported, self._warned_ns = self._unreported, 0, now
        self._notice(
            f"cannot write logfile {self.baseFilename}: {exc.strerror or exc}; "
            f"{lost} log line(s) lost{since}; still serving "
            f"(next report in {self._interval_ns // NS_PER_S} s at the earliest)"
        )

    def reopen(self) -> None:
        """Open the path again and switch to it; OSError (old file still in use) on failure."""
        fresh = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, fresh
        finally:
            self.release()
        if old is not None:
            with contextlib.suppress(OSError):  # its buffered tail may not fit (disk full)
                old.close()

    def close(self) -> None:
        """Close, even if the last buffered lines cannot be written (the file is full)."""
        with contextlib.suppress(OSError):
            super().close()


def _write_stderr(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"ntpy: {message}\n")
        sys.stderr.flush()


class LogSetup:
    """Owns the handlers it installs on one logger (the root logger by default).

    ``configure`` may be called again (e.g. after a config reload); it replaces only its own
    handlers, so handlers someone else installed (pytest's caplog, a test's) stay in place.
    """

    def __init__(
        self,
        *,
        foreground: bool = True,
        stream: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``foreground``: also log to stderr when a log file is in use (``ntpy serve`` always
        runs in the foreground). ``stream`` defaults to ``sys.stderr`` as of ``configure``;
        ``environ`` to ``os.environ``."""
        self._foreground = foreground
        self._stream = stream
        self._environ = environ
        self._logger = logger if logger is not None else logging.getLogger()
        self._handlers: list[logging.Handler] = []
        self._file: ReopenableFileHandler | None = None
        self._stderr: logging.Handler | None = None
        self._logfile: str | None = None
        self.journal = False
        """True when stderr is systemd's journal stream (set by ``configure``)."""

    @property
    def logfile(self) -> str | None:
        """The configured log file path (even if it could not be opened), or None."""
        return self._logfile

    @property
    def file_open(self) -> bool:
        """True while lines are being written to the log file."""
        return self._file is not None

    def configure(self, level: str, logfile: str | None) -> None:
        """Install handlers for ``level`` (a LEVELS name) and the optional ``logfile``.

        Raises ValueError for an unknown level, before changing anything. A log file that
        cannot be opened is logged as one warning and stderr is used instead.
        """
        levelno = parse_level(level)
        self.close()
        stream = self._stream if self._stream is not None else sys.stderr
        self.journal = on_journal(
            stream, self._environ if self._environ is not None else os.environ
        )
        self._logger.setLevel(levelno)
        self._logfile = logfile or None
        error: OSError | None = None
        if self._logfile is not None:
            try:
                self._install_file(self._logfile)
            except OSError as exc:
                error = exc
        if self._file is None or self._foreground:
            self._install_stderr(stream)
        if error is not None:
            self._logger.warning(
                "cannot open logfile %s: %s; logging to stderr instead",
                self._logfile,
                error.strerror or error,
            )

    def reopen(self) -> None:
        """Start a fresh log file at the configured path (SIGHUP after logrotate).

        Without a log file this does nothing. If the file could not be opened before, this
        tries again (and, in the background, stops the stderr fallback once it succeeds).
        On failure the old file (or stderr) stays in use and a warning says so.
        """
        if self._logfile is None:
            return
        try:
            if self._file is not None:
                self._file.reopen()
                return
            self._install_file(self._logfile)
        except OSError as exc:
            where = "the previous file" if self._file is not None else "stderr"
            self._logger.warning(
                "cannot reopen logfile %s: %s; still logging to %s",
                self._logfile,
                exc.strerror or exc,
                where,
            )
            return
        if not self._foreground and self._stderr is not None:
            self._remove(self._stderr)
            self._stderr = None
        self._logger.info("logging to %s again", self._logfile)

    def close(self) -> None:
        """Remove and close every handler this LogSetup installed."""
        for handler in list(self._handlers):
            self._remove(handler)
        self._file = None
        self._stderr = None

    def _install_file(self, path: str) -> None:
        handler = ReopenableFileHandler(path, notice=self._notice)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        self._add(handler)
        self._file = handler

    def _install_stderr(self, stream: TextIO) -> None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            JournalFormatter() if self.journal else logging.Formatter(PLAIN_FORMAT)
        )
        self._add(handler)
        self._stderr = handler

    def _notice(self, message: str) -> None:
        """A warning about the log file itself, straight to stderr (in the stderr format):
        through the logger it would go back to the file that is failing."""
        stream = self._stream if self._stream is not None else sys.stderr
        record = self._logger.makeRecord(
            self._logger.name, logging.WARNING, __file__, 0, message, (), None
        )
        fmt = JournalFormatter() if self.journal else logging.Formatter(PLAIN_FORMAT)
        with contextlib.suppress(OSError, ValueError):
            stream.write(fmt.format(record) + "\n")
            stream.flush()

    def _add(self, handler: logging.Handler) -> None:
        self._logger.addHandler(handler)
        self._handlers.append(handler)

    def _remove(self, handler: logging.Handler) -> None:
        self._logger.removeHandler(handler)
        self._handlers.remove(handler)
        handler.close()  # closes a file; a StreamHandler leaves its stream (stderr) open
