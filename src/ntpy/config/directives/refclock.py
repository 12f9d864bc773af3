"""NTPsec's ``refclock NAME [unit U] [options]`` and what ntpy knows of refclock drivers.

``refclock shm unit 0 refid GPS`` means ``server 127.127.28.0`` plus ``fudge 127.127.28.0
refid GPS``: the server half goes to ``State.refclocks``, the fudge half to ``State.fudges``,
so both spellings merge by the same rules (``finish_refclocks`` in ``sources.py``).
``refclock sock PATH`` is ntpy's name for chrony's SOCK protocol (ntpd has no such driver;
it is type 0 inside ntpy, shown as ``SOCK(U)``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ntpy.core.refclock import BY_KEYWORD, DRIVERS, NMEA, PPS, SOCK

from ..model import LOCAL_CLOCK_DRIVER, RefclockSpec
from ..state import Args, Directive, Line, PendingFudge, State
from ..values import BadValue, parse_bool01, parse_float, parse_int, show
from .sources import parse_refid

SUPPORTED = frozenset({LOCAL_CLOCK_DRIVER, *DRIVERS})
"""Driver types ntpy runs: the local clock, SHM, NMEA, PPS and SOCK."""
BAUDS = (4800, 9600, 19200, 38400, 57600, 115200)
MODE_BAUD = {0x00: 4800, 0x10: 9600, 0x20: 19200, 0x30: 38400, 0x40: 57600, 0x50: 115200}
"""ntpd's NMEA mode bits 4..6 (mode & 0x70) to the serial speed."""

USAGE = (
    "refclock shm|nmea|pps|sock|local [unit U] [path PATH] [baud N] [mode N] [minpoll N] "
    "[prefer] [noselect] [time1 S] [time2 S] [stratum N] [refid TEXT] [flag1..flag4 0|1]"
)

OPTION_DOCS: tuple[tuple[str, str], ...] = (
    (
        "shm",
        "ntpd's shared memory driver (type 28) as gpsd writes it: segment key 0x4E545030+U, "
        "modes 0 and 1 (gpsd: unit 0 is its first GPS's serial time, unit 1 its PPS); "
        "units 0 and 1 need ntpy to run as root; refid SHM unless fudged",
    ),
    (
        "nmea",
        "a serial GPS (type 20): $xxRMC, $xxGGA and $xxZDA sentences of any talker, checksum "
        "required; path /dev/gpsU by default; refid GPS; time2 is the sentence delay",
    ),
    (
        "pps",
        "a kernel PPS device (type 22, /dev/ppsU) read with PPS_FETCH: the second's start "
        "only, so it is used only while another truechimer (a prefer one, if any) gives the "
        "seconds; refid PPS; flag3 (kernel hardpps) is not supported",
    ),
    (
        "sock PATH",
        "ntpy's name for chrony's SOCK protocol: ntpy binds the datagram socket PATH, which "
        "gpsd writes to when it exists as /run/chrony.DEV.sock before gpsd opens DEV; gpsd "
        "sends PPS edges there; refid SOCK",
    ),
    ("unit U", "the unit, 0..255 (default 0)"),
    ("path PATH", "the device or socket instead of the driver's default"),
    ("baud N", "nmea: serial speed (4800 default; else from mode & 0x70 as ntpd)"),
    ("mode N", "nmea: ntpd's mode (sentence bits 1 RMC, 2 GGA, 8 ZDA; speed bits 0x70)"),
    ("minpoll N", "poll interval, log2 s (default 4: a median of 16 samples)"),
    ("prefer, noselect", "as on server lines; a prefer source gives a PPS clock its seconds"),
    ("time1 S", "offset added to every sample (nmea: to its PPS, unused)"),
    ("time2 S", "nmea: the sentence delay added to every sample; others: unused"),
    ("stratum N, refid TEXT", "the clock's stratum (default 0: served as 1) and refid"),
)


def handle_refclock(state: State, line: Line) -> None:
    args = Args(line.args)
    name = (args.take() or "").lower()
    driver = 1 if name == "local" else (BY_KEYWORD[name].type if name in BY_KEYWORD else None)
    if driver is None:
        known = ", ".join(sorted([*BY_KEYWORD, "local"]))
        raise BadValue(f"unknown refclock {show(name or None)}: ntpy has {known}")
    values: dict[str, Any] = {}
    fudge: dict[str, Any] = {}
    unit = 0
    if driver == SOCK and (args.peek() or "").startswith("/"):
        values["path"] = args.take()
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option == "unit":
            unit = parse_int(args.take(), "unit", 0, 255)
        elif option in ("path", "ppspath"):
            values["path"] = _path(args.take(), option)
        elif option == "baud":
            values["baud"] = parse_int(args.take(), "baud", 300, 115200)
            if values["baud"] not in BAUDS:
                raise BadValue(f"'baud' must be one of {', '.join(map(str, BAUDS))}")
        elif option in ("mode", "minpoll", "maxpoll"):
            values[option] = parse_int(args.take(), option, *_RANGES[option])
        elif option in ("prefer", "noselect", "true"):
            values[option] = True
        elif option in ("iburst", "burst"):
            state.warn(line.loc, f"'{option}' has no effect on a reference clock (ignored)")
        elif option == "stratum":
            fudge["stratum"] = parse_int(args.take(), "stratum", 0, 15)
        elif option == "refid":
            fudge["refid"] = parse_refid(args.take())
        elif option in ("time1", "time2"):
            fudge[option] = parse_float(args.take(), option, -10.0, 10.0, unit="seconds")
        elif option in ("flag1", "flag2", "flag3", "flag4"):
            fudge[option] = parse_bool01(args.take(), option)
        else:
            raise BadValue(f"unknown option {show(word)} for 'refclock {name}'")
    if driver == SOCK and "path" not in values:
        raise BadValue("'refclock sock' needs the socket's path, e.g. /run/chrony.ttyS0.sock")
    spec = replace(RefclockSpec(driver=driver, unit=unit, location=line.loc), **values)
    if "minpoll" not in values:
        spec = replace(spec, minpoll=4, maxpoll=max(4, spec.maxpoll if "maxpoll" in values else 4))
    if spec.minpoll > spec.maxpoll:
        raise BadValue(f"'minpoll' ({spec.minpoll}) must not exceed 'maxpoll' ({spec.maxpoll})")
    existing = state.refclocks.get((driver, unit))
    if existing is not None:
        raise BadValue(
            f"reference clock {spec.address} is already configured at {existing.location}"
        )
    state.refclocks[(driver, unit)] = spec
    if fudge:
        pending = state.fudges.setdefault((driver, unit), PendingFudge())
        pending.values.update(fudge)
        if pending.location is None:
            pending.location = line.loc


_RANGES = {"mode": (0, 255), "minpoll": (3, 17), "maxpoll": (3, 17)}


def _path(token: str | None, option: str) -> str:
    if not token or "\x00" in token:
        raise BadValue(f"'{option}' needs a path, got {show(token)}")
    return token


def nmea_baud(spec: RefclockSpec) -> int:
    """The NMEA serial speed: ``baud``, else ntpd's mode bits, else 4800."""
    if spec.baud is not None:
        return spec.baud
    return MODE_BAUD.get((spec.mode or 0) & 0x70, 4800)


def default_path(spec: RefclockSpec) -> str | None:
    """ntpd's device names: /dev/gpsU for NMEA, /dev/ppsU for PPS."""
    if spec.path is not None:
        return spec.path
    if spec.driver == NMEA:
        return f"/dev/gps{spec.unit}"
    if spec.driver == PPS:
        return f"/dev/pps{spec.unit}"
    return None


DIRECTIVES: dict[str, Directive] = {
    "refclock": Directive(
        handle_refclock,
        USAGE,
        "A reference clock in NTPsec's syntax (the same clocks as 'server 127.127.T.U' with "
        "'fudge'): gpsd's shared memory (shm, type 28), a serial NMEA GPS (nmea, type 20), "
        "a kernel PPS device (pps, type 22), chrony's SOCK protocol (sock) or the local "
        "clock (local, type 1). Each is polled every 2**minpoll s; the samples of a poll go "
        "through a median filter (the middle 60% are averaged) and the result takes part in "
        "selection like any source: stratum 0 clocks make ntpy a stratum 1 server. "
        "Unreadable, stale or bad samples are counted and dropped; a clock without samples "
        "becomes unreachable.",
        OPTION_DOCS,
    ),
}
