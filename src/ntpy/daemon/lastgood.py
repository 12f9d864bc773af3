"""The last time this clock was known good, kept next to the drift file (``DRIFT.lastgood``).

Why: at start the daemon must tell a clock that was synchronized a moment ago (a reboot)
from one that lost its RTC and reads 1986. The file holds one integer, the clock's Unix time
in ns at the last moment it was synchronized; it is written at the first synchronization,
with each hourly drift-file write while synchronized, and at exit, atomically (temp file,
fsync, rename, fsync the directory) so a power cut leaves the old time or the new one.
``core/clockguard.py`` judges the clock against it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time

log = logging.getLogger("ntpy.drift")

SUFFIX = ".lastgood"
MAX_BYTES = 64


def lastgood_path(driftfile: str) -> str:
    return driftfile + SUFFIX


def read_lastgood(path: str) -> tuple[int | None, str | None]:
    """(Unix ns, None), (None, None) without a file, or (None, warning) for a bad one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: cannot read the last-good time: {exc.strerror or exc}"
    text = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_BYTES or not text.isdigit():
        return None, f"{path}: not a last-good time (one integer, Unix ns); ignored"
    return int(text), None


def write_lastgood(path: str, unix_ns: int) -> None:
    """Replace the file atomically; OSError (old file intact) on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, f"{unix_ns}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)


def describe_time(unix_ns: int) -> str:
    """A Unix time for the admin: ISO date and time, UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_ns // 1_000_000_000))


class LastGood:
    """Saves the clock's time while synchronized: first sync, hourly, at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        self.failures = 0

    def save(self, synced: bool, now_ns: int) -> bool:
        """Write ``now_ns`` if the clock is synchronized now; True if written."""
        if not synced:
            return False
        try:
            write_lastgood(self.path, now_ns)
        except OSError as exc:
            self.failures += 1
            log.warning("%s: cannot save the last-good time: %s", self.path, exc.strerror or exc)
            return False
        self.written = True
        return True

    def first_sync(self, synced: bool, now_ns: int) -> None:
        """Called every state refresh: writes once, at the first synchronization."""
        if not self.written and synced:
            self.save(True, now_ns)
