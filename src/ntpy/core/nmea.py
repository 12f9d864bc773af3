"""NMEA 0183 time sentences: ``$xxRMC``, ``$xxGGA``, ``$xxZDA`` from any talker (GP, GN,
GL, GA, BD, ...). Sans-IO: lines in, UTC times out.

A GPS sends its sentences for second S shortly after S begins; the shell stamps each line
when it arrives, and the sentence's time minus that stamp (plus ``fudge time2``, the
sentence delay) is the sample. One sample per second: the first time sentence of a second
counts, the other sentences of the same second repeat it.

Rules (the h11 fuzz rule): ``parse`` returns a ``Fix`` or raises ``NmeaError``, whatever the
bytes. A sentence is used only with a good checksum (``*HH``; a sentence without one is
refused: a serial line garbles), a valid status (RMC ``A``, GGA quality > 0) and a time. GGA
carries no date: ``resolve`` takes the day that puts it nearest our clock, as ntpd does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core.timestamps import NS_PER_S

DAY_NS = 86_400 * NS_PER_S
MAX_LINE = 120
"""NMEA says 82 characters; some receivers send longer. Anything longer is noise."""

RMC, GGA, ZDA = 1, 2, 8
"""ntpd's mode bits selecting sentences (mode & 0xF; 0 = any). GLL (4) is not used."""
SENTENCES = {"RMC": RMC, "GGA": GGA, "ZDA": ZDA}


class NmeaError(ValueError):
    """Not a usable time sentence; ``reason`` names the counter (``bad``, ``no_fix``,
    ``ignored``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fix:
    """The time a sentence gives: ``day_ns`` into its UTC day, and its date if it has one."""

    kind: str
    day_ns: int
    date: tuple[int, int, int] | None


def checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    value = 0
    for ch in body.encode("ascii", "replace"):
        value ^= ch
    return value


def sentence(body: str) -> bytes:
    """``$BODY*HH\\r\\n`` (for tests and tools)."""
    return f"${body}*{checksum(body):02X}\r\n".encode("ascii")


def _time_of_day(field: str) -> int:
    if len(field) < 6 or not field[:6].isdigit():
        raise NmeaError("bad", f"bad time field {field!r}")
    hh, mm, ss = int(field[0:2]), int(field[2:4]), int(field[4:6])
    frac_ns = 0
    if len(field) > 6:
        if field[6] != "." or not field[7:].isdigit() or len(field) > 16:
            raise NmeaError("bad", f"bad time field {field!r}")
        digits = field[7:]
        frac_ns = int(digits.ljust(9, "0")[:9]) if digits else 0
    if hh > 23 or mm > 59 or ss > 60:
        raise NmeaError("bad", f"time field out of range {field!r}")
    return ((hh * 60 + mm) * 60 + ss) * NS_PER_S + frac_ns


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (the era arithmetic of
    Howard Hinnant's civil calendar algorithms)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _date(day: int, month: int, year: int) -> tuple[int, int, int]:
    if not (1 <= month <= 12 and 1 <= day <= _month_days(year, month)):
        raise NmeaError("bad", f"bad date {day:02d}/{month:02d}/{year}")
    return year, month, day


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise NmeaError("bad", f"bad {what} {text!r}")
    return int(text)


def parse(line: bytes, wanted: int = 0) -> Fix:
    """The time in one line (with or without its CR LF). ``wanted``: ntpd's sentence bits
    (0: RMC, GGA and ZDA all count)."""
    text = line.strip(b"\r\n \0")
    if len(text) > MAX_LINE:
        raise NmeaError("bad", "line too long")
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        raise NmeaError("bad", "not ASCII") from None
    if not s.startswith("$") or "*" not in s:
        raise NmeaError("bad", "not a checksummed NMEA sentence")
    body, _, given = s[1:].rpartition("*")
    if len(given) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in given):
        raise NmeaError("bad", f"bad checksum field {given!r}")
    if int(given, 16) != checksum(body):
        raise NmeaError("bad", "checksum mismatch")
    fields = body.split(",")
    tag = fields[0]
    kind = tag[2:] if len(tag) == 5 else ""
    bit = SENTENCES.get(kind)
    if bit is None or (wanted and not wanted & bit):
        raise NmeaError("ignored", f"{tag} is not a time sentence used here")
    if kind == "RMC":
        if len(fields) < 10:
            raise NmeaError("bad", "short RMC")
        if fields[2] != "A":
            raise NmeaError("no_fix", "RMC status is not A (no valid fix)")
        d = fields[9]
        if len(d) != 6 or not d.isdigit():
            raise NmeaError("bad", f"bad RMC date {d!r}")
        date = _date(int(d[0:2]), int(d[2:4]), 2000 + int(d[4:6]))
        return Fix(kind, _time_of_day(fields[1]), date)
    if kind == "GGA":
        if len(fields) < 7:
            raise NmeaError("bad", "short GGA")
        if not fields[6].isdigit() or int(fields[6]) == 0:
            raise NmeaError("no_fix", "GGA fix quality 0 (no fix)")
        return Fix(kind, _time_of_day(fields[1]), None)
    if len(fields) < 5:  # ZDA
        raise NmeaError("bad", "short ZDA")
    date = _date(_int(fields[2], "day"), _int(fields[3], "month"), _int(fields[4], "year"))
    return Fix(kind, _time_of_day(fields[1]), date)


def resolve(fix: Fix, near_ns: int) -> int:
    """The fix as Unix ns: its own date, or (GGA) the day that puts it nearest ``near_ns``."""
    if fix.date is not None:
        year, month, day = fix.date
        return days_from_civil(year, month, day) * DAY_NS + fix.day_ns
    base = near_ns - near_ns % DAY_NS + fix.day_ns
    return min((base - DAY_NS, base, base + DAY_NS), key=lambda t: abs(t - near_ns))


class LineBuffer:
    """Bytes from a serial port in, whole lines out; a runaway line is dropped."""

    def __init__(self) -> None:
        self.buf = b""
        self.overruns = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > MAX_LINE * 2:
            self.buf = b""
            self.overruns += 1
        return [line for line in lines if line.strip()]
