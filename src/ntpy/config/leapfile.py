"""Reading the ``leapfile``: the one loader ``check-config``, start-up and SIGHUP share.

The parsing and the hash check are the core's (``ntpy.core.leapfile``); this module reads
the file and turns what is wrong with it into a warning at the ``leapfile`` line, with the
fix. A bad leap file never stops the daemon: it goes on with its upstreams' leap votes.
"""

from __future__ import annotations

from ntpy.core.leapfile import (
    FRESH_COPY_HINT,
    MAX_FILE_BYTES,
    LeapFileError,
    LeapTable,
    parse_leap_file,
)

from .errors import ConfigWarning, SourceLocation
from .model import Config


def load_leap_file(path: str) -> LeapTable:
    """Read and parse ``path``; ``LeapFileError`` says what is wrong (I/O included)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LeapFileError(f"cannot read it: {exc.strerror or exc}") from None
    return parse_leap_file(data)


def expiry_warning(path: str, table: LeapTable) -> str:
    """The words for an expired file."""
    return (
        f"leapfile {path} expired (its #@ date has passed): a leap second announced since "
        f"may be missing, so upstream announcements decide; {FRESH_COPY_HINT}"
    )


def corrupt_warning(path: str, error: LeapFileError) -> str:
    return f"leapfile {path} is not used: {error}; {FRESH_COPY_HINT}"


def leap_file_problems(config: Config, now_unix_ns: int) -> list[ConfigWarning]:
    """Warnings about the configured leap file at ``now`` (none when it is fine)."""
    path = config.leapfile
    if not path:
        return []
    loc = config.location_of("leapfile") or SourceLocation("<config>", 0)
    try:
        table = load_leap_file(path)
    except LeapFileError as exc:
        return [ConfigWarning(loc.filename, loc.line, corrupt_warning(path, exc))]
    if table.expired(now_unix_ns):
        return [ConfigWarning(loc.filename, loc.line, expiry_warning(path, table))]
    return []
