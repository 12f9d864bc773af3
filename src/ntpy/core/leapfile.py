"""The IETF/NIST/IERS ``leap-seconds.list``: bytes in, a checked table or one error out.

The format (the file's own comments and the IERS README describe it):

* ``#$ NNNN``: when the file was last updated, NTP seconds (since 1900);
* ``#@ NNNN``: when it expires, NTP seconds; after that a new leap second may have been
  announced that this copy does not list;
* data lines ``NTPSECONDS  DTAI  # comment``: from that instant on, TAI - UTC = DTAI;
* ``#h H1 H2 H3 H4 H5``: the SHA-1, in five 32-bit hex groups, of the digits of the ``#$``
  value, the ``#@`` value and the two fields of every data line, in file order (all other
  characters, comments and white space left out). It catches a truncated or edited copy.

Why a parser of our own and not the tz database: the file is the one source that says
when its own knowledge ends (``#@``), and ntpd users already point ``leapfile`` at it.

Any bytes either parse into a ``LeapTable`` or raise ``LeapFileError`` (the fuzz rule).
A hash mismatch is an error (a corrupt file must not move the clock); an expired file
still parses -- ``LeapTable.expired(now)`` says so and the daemon warns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

NTP_UNIX_OFFSET_S = 2_208_988_800
"""Seconds from 1900-01-01 (NTP era 0) to 1970-01-01."""
FRESH_COPY_HINT = (
    "get a fresh copy from https://hpiers.obspm.fr/iers/bul/bulc/ntp/leap-seconds.list "
    "(or https://data.iana.org/time-zones/tzdb/leap-seconds.list; Debian's tzdata package "
    "installs /usr/share/zoneinfo/leap-seconds.list)"
)
"""The fix, said with every warning about the file."""
MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 10_000


class LeapFileError(ValueError):
    """The file is not a usable leap-seconds.list (format, order, or hash)."""


@dataclass(frozen=True, slots=True)
class LeapEntry:
    """From ``at_unix_s`` on (Unix seconds, a UTC midnight), TAI - UTC is ``tai_offset``."""

    at_unix_s: int
    tai_offset: int


@dataclass(frozen=True, slots=True)
class LeapTable:
    """A parsed, hash-checked leap-seconds.list."""

    entries: tuple[LeapEntry, ...]
    updated_unix_s: int
    expires_unix_s: int
    hashed: bool
    """True when the file had a ``#h`` line (and it matched); False: no hash to check."""

    def expired(self, now_unix_ns: int) -> bool:
        """Past the ``#@`` date: a leap announced since may be missing."""
        return now_unix_ns >= self.expires_unix_s * 1_000_000_000

    def next_leap(self, now_unix_ns: int) -> tuple[int, int] | None:
        """The first leap after ``now``: (instant in Unix s, +1 insert / -1 delete)."""
        prev: LeapEntry | None = None
        for entry in self.entries:
            if prev is not None and entry.at_unix_s * 1_000_000_000 > now_unix_ns:
                step = entry.tai_offset - prev.tai_offset
                return entry.at_unix_s, (1 if step > 0 else -1)
            prev = entry
        return None

    def tai_offset(self, now_unix_ns: int) -> int | None:
        """TAI - UTC in force at ``now`` (None before the first entry)."""
        found: int | None = None
        for entry in self.entries:
            if entry.at_unix_s * 1_000_000_000 > now_unix_ns:
                break
            found = entry.tai_offset
        return found


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _number(text: str, lineno: int, what: str) -> int:
    word = text.strip()
    if not word or not word.isascii() or not word.isdigit() or len(word) > 20:
        raise LeapFileError(f"line {lineno}: {what} must be a whole number, got {word[:40]!r}")
    return int(word)


def _hash_groups(text: str, lineno: int) -> str:
    groups = text.split()
    if len(groups) != 5:
        raise LeapFileError(f"line {lineno}: the #h line needs five hex groups")
    out = []
    for g in groups:
        if not g.isascii() or len(g) > 8 or any(c not in "0123456789abcdefABCDEF" for c in g):
            raise LeapFileError(f"line {lineno}: {g[:40]!r} is not a 32-bit hex group")
        out.append(g.lower().rjust(8, "0"))  # some copies drop a group's leading zeros
    return "".join(out)


def parse_leap_file(data: bytes) -> LeapTable:
    """Parse and check ``data``; raise ``LeapFileError`` saying what is wrong."""
    if len(data) > MAX_FILE_BYTES:
        raise LeapFileError(f"over {MAX_FILE_BYTES} bytes: not a leap-seconds.list")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise LeapFileError(f"not ASCII text (byte {exc.start})") from None
    updated: int | None = None
    expires: int | None = None
    want_hash: str | None = None
    hashed_text: list[str] = []
    entries: list[LeapEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if want_hash is not None and line and not line.startswith("#"):
            raise LeapFileError(f"line {lineno}: data after the #h line")
        if line.startswith("#$"):
            if updated is not None:
                raise LeapFileError(f"line {lineno}: a second #$ (update) line")
            updated = _number(line[2:], lineno, "the #$ update time")
            hashed_text.append(_digits(line[2:]))
        elif line.startswith("#@"):
            if expires is not None:
                raise LeapFileError(f"line {lineno}: a second #@ (expiry) line")
            expires = _number(line[2:], lineno, "the #@ expiry time")
            hashed_text.append(_digits(line[2:]))
        elif line.startswith("#h"):
            if want_hash is not None:
                raise LeapFileError(f"line {lineno}: a second #h (hash) line")
            want_hash = _hash_groups(line[2:], lineno)
        elif line.startswith("#") or not line:
            continue
        else:
            fields = line.split("#", 1)[0].split()
            if len(fields) != 2:
                raise LeapFileError(
                    f"line {lineno}: a data line is 'NTPSECONDS TAIOFFSET [# comment]'"
                )
            at = _number(fields[0], lineno, "the NTP time")
            dtai = _number(fields[1], lineno, "the TAI offset")
            if entries and at <= entries[-1].at_unix_s + NTP_UNIX_OFFSET_S:
                raise LeapFileError(f"line {lineno}: times must increase")
            if entries and abs(dtai - entries[-1].tai_offset) != 1:
                raise LeapFileError(f"line {lineno}: the TAI offset must change by one second")
            if at % 86_400:
                raise LeapFileError(f"line {lineno}: a leap happens at a UTC midnight")
            if len(entries) >= MAX_ENTRIES:
                raise LeapFileError(f"over {MAX_ENTRIES} data lines")
            entries.append(LeapEntry(at - NTP_UNIX_OFFSET_S, dtai))
            hashed_text.append(fields[0] + fields[1])
    if updated is None or expires is None:
        raise LeapFileError("no #$ (update) or #@ (expiry) line: not a leap-seconds.list")
    if not entries:
        raise LeapFileError("no data lines")
    if want_hash is not None:
        got = hashlib.sha1("".join(hashed_text).encode("ascii"), usedforsecurity=False)
        if got.hexdigest() != want_hash:
            raise LeapFileError("the SHA-1 on the #h line does not match: the file is corrupt")
    return LeapTable(
        entries=tuple(entries),
        updated_unix_s=updated - NTP_UNIX_OFFSET_S,
        expires_unix_s=expires - NTP_UNIX_OFFSET_S,
        hashed=want_hash is not None,
    )


def render_leap_file(entries: list[tuple[int, int]], updated_ntp: int, expires_ntp: int) -> bytes:
    """A well-formed file with its hash: for tests and for a hand-made table.

    ``entries`` are (NTP seconds, TAI offset)."""
    lines = [f"#$\t{updated_ntp}", f"#@\t{expires_ntp}"]
    lines += [f"{at}\t{dtai}\t# leap" for at, dtai in entries]
    digits = str(updated_ntp) + str(expires_ntp) + "".join(f"{a}{d}" for a, d in entries)
    h = hashlib.sha1(digits.encode("ascii"), usedforsecurity=False).hexdigest()
    lines.append("#h\t" + " ".join(h[i : i + 8] for i in range(0, 40, 8)))
    return ("\n".join(lines) + "\n").encode("ascii")
