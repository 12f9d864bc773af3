"""The drift file: the clock's frequency error, kept across restarts (ntpd's ``driftfile``).

Without it every start re-learns the frequency from scratch, which takes ntpd-style loops
tens of minutes to hours; with it the clock is within a fraction of a PPM at once. The
format is ntpd's: one line holding the frequency in PPM (``-12.345``). chrony's drift file
(frequency and skew on one line) is accepted too, so a config switched over keeps its value.

Reading never raises: a missing file is normal on first start, and a corrupt one (a crash
of some other writer, a full disk, a stray edit) costs only the head start, so it becomes a
warning and a fresh estimate. Writing is atomic -- temp file in the same directory, fsync,
rename, fsync the directory -- so a power cut leaves either the old value or the new one,
never a truncated file that would then be read as corrupt. A write cut short by a crash or
kill -9 leaves its temp file behind (160 of them after 300 kills), so start-up removes
them -- only names of our own temp-file pattern, next to the drift file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import stat
import tempfile

from ntpy.core.timestamps import NS_PER_S

log = logging.getLogger("ntpy.drift")

MAX_PPM = 500.0
"""ntpd's frequency tolerance: the kernel rejects more, so a larger value is corruption."""
MAX_FILE_BYTES = 4096
WRITE_INTERVAL_NS = 3600 * NS_PER_S
"""ntpd writes the drift file hourly."""
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
"""A plain decimal. Stricter than float(): no 'nan', 'inf', '1_0' or hex."""
_FRESH = "starting with a fresh frequency estimate"
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = re.compile(r"[a-z0-9_]{8}")
"""What ``tempfile.mkstemp`` puts between prefix and suffix (8 of these characters)."""


class DriftFileError(Exception):
    """The drift file could not be written; the message names the file and the cause."""


def format_drift(ppm: float) -> str:
    """The file's content: ntpd's ``%.3f`` and a newline."""
    return f"{ppm:.3f}\n"


def parse_drift(text: str) -> float:
    """The frequency in a drift file's text, or ValueError saying why it is unusable."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError("empty")
    if any(line.strip() for line in lines[1:]):
        raise ValueError("more than one line")
    fields = lines[0].split()
    if len(fields) > 2:
        raise ValueError("more than two fields")
    for field in fields:
        if not _NUMBER.fullmatch(field):
            shown = field if len(field) <= 24 else field[:24] + "..."
            raise ValueError(f"not a number: {shown!r}")
    ppm = float(fields[0])
    if not math.isfinite(ppm):
        raise ValueError("not a finite number")
    if abs(ppm) > MAX_PPM:
        raise ValueError(f"{ppm:.3f} PPM is beyond the +/-{MAX_PPM:.0f} PPM limit")
    return ppm


def read_drift(path: str) -> tuple[float | None, str | None]:
    """(frequency in PPM, None), (None, None) if there is no file, or (None, warning)."""
    try:
        raw = _read_regular_file(path, MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: cannot read drift file ({exc.strerror or exc}); {_FRESH}"
    except Exception as exc:  # e.g. a NUL in the path: still never fatal
        return None, f"{path}: cannot read drift file ({exc}); {_FRESH}"
    reason: str
    if len(raw) > MAX_FILE_BYTES:
        reason = f"larger than {MAX_FILE_BYTES} bytes"
    else:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            reason = "not text"
        else:
            if "\0" in text:
                reason = "not text"
            else:
                try:
                    return parse_drift(text), None
                except ValueError as exc:
                    reason = str(exc)
    return None, f"{path}: corrupt drift file ({reason}); {_FRESH}"


def _read_regular_file(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes; O_NONBLOCK so a FIFO put there cannot hang the daemon."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_drift(path: str, ppm: float) -> None:
    """Replace the drift file atomically; DriftFileError (old file intact) on any failure."""
    if not isinstance(ppm, int | float) or not math.isfinite(ppm) or abs(ppm) > MAX_PPM:
        raise DriftFileError(
            f"{path}: not writing frequency {ppm!r}: expected a finite value within "
            f"+/-{MAX_PPM:.0f} PPM"
        )
    data = format_drift(ppm).encode("ascii")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=directory)
    except OSError as exc:
        raise DriftFileError(
            f"{path}: cannot write drift file: cannot create a temporary file in "
            f"{directory}: {exc.strerror or exc}"
        ) from None
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; the value is not secret
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DriftFileError(
            f"{path}: cannot write drift file: {exc.strerror or exc}; the previous file "
            "is unchanged"
        ) from None
    try:
        _fsync_directory(directory)
    except OSError as exc:
        raise DriftFileError(
            f"{path}: drift file written, but syncing directory {directory} failed: "
            f"{exc.strerror or exc}; the new value may not survive a power failure"
        ) from None


def _temp_prefix(path: str) -> str:
    return f"{_TEMP_PREFIX}{os.path.basename(path)}."


def remove_stale_temp_files(path: str) -> list[str]:
    """Delete temp files that interrupted writes of ``path`` left; returns their names.

    Only at start, before this process writes: a name must be exactly ``write_drift``'s
    pattern (``.BASENAME.XXXXXXXX.tmp``) in the drift file's directory, and a regular file
    (not a symlink) owned by us, so nothing else in a shared directory is touched. Never
    raises: a leftover that cannot be removed only costs a little disk space.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        middle = name[len(prefix) : -len(_TEMP_SUFFIX)]
        if not (
            name.startswith(prefix)
            and name.endswith(_TEMP_SUFFIX)
            and _TEMP_RANDOM.fullmatch(middle)
        ):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(full)
                removed.append(name)
        except OSError:
            continue
    return sorted(removed)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable. Some file systems cannot fsync a directory (EINVAL): fine."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


class DriftWriter:
    """When to save the frequency: hourly while running, and once more at exit.

    Timers run on monotonic time (DESIGN rule 3). A failed write is logged and retried at
    the next hour, never every tick, and an unchanged value (to ntpd's three decimals) is
    not rewritten, sparing flash storage a write per hour on a stable clock.
    """

    def __init__(self, path: str, interval_ns: int = WRITE_INTERVAL_NS) -> None:
        if interval_ns <= 0:
            raise ValueError("interval_ns must be positive")
        self.path = path
        self.interval_ns = interval_ns
        self._next_ns: int | None = None
        self._last_text: str | None = None
        self.writes = 0
        self.failures = 0

    def loaded(self, ppm: float | None) -> None:
        """Tell the writer what was read at start, so an unchanged value is not rewritten;
        also the moment to remove temp files that interrupted writes left behind."""
        self._last_text = None if ppm is None else format_drift(ppm)
        removed = remove_stale_temp_files(self.path)
        if removed:
            log.info(
                "drift file %s: removed %d temp file(s) left by interrupted writes",
                self.path,
                len(removed),
            )

    def due(self, now_mono_ns: int) -> bool:
        """True once per interval; the first call only starts the clock."""
        if self._next_ns is None:
            self._next_ns = now_mono_ns + self.interval_ns
            return False
        return now_mono_ns >= self._next_ns

    def write(self, ppm: float, now_mono_ns: int) -> bool:
        """Write now (typically when ``due``); True if the file holds ``ppm`` afterwards."""
        self._next_ns = now_mono_ns + self.interval_ns
        return self._write(ppm)

    def write_at_exit(self, ppm: float | None) -> bool:
        """The final save at shutdown; nothing to do if no frequency was ever estimated."""
        if ppm is None:
            return False
        return self._write(ppm)

    def _write(self, ppm: float) -> bool:
        text = format_drift(ppm) if math.isfinite(ppm) else None
        if text is not None and text == self._last_text:
            return True
        try:
            write_drift(self.path, ppm)
        except DriftFileError as exc:
            self.failures += 1
            log.warning("%s", exc)
            return False
        self._last_text = text
        self.writes += 1
        return True
