"""Time sources: ``server``/``pool``/``peer``, refclocks with ``fudge``, and ``local``.

A ``server 127.127.T.U`` line is a reference clock (type T, unit U), not a network
source, so it goes to ``State.refclocks``; ``fudge`` lines are kept aside and merged when
the whole configuration is known, because ntpd lets ``fudge`` come before ``server``.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

from ntpy.core import ntsaead
from ntpy.core.refclock import DRIVERS

from ..errors import SourceLocation
from ..model import (
    LOCAL_CLOCK_DEFAULT_REFID,
    LOCAL_CLOCK_DEFAULT_STRATUM,
    LOCAL_CLOCK_DRIVER,
    REFCLOCK_DEFAULT_STRATUM,
    Family,
    LocalSpec,
    RefclockSpec,
    ServerKind,
    ServerSpec,
)
from ..state import Args, Directive, Line, PendingFudge, State
from ..values import (
    BadValue,
    looks_numeric,
    numeric_hint,
    parse_bool01,
    parse_float,
    parse_host,
    parse_int,
    parse_ip,
    show,
)

REFCLOCK_NET = IPv4Network("127.127.0.0/16")

SERVER_FLAGS = frozenset(
    {
        "iburst",
        "burst",
        "prefer",
        "noselect",
        "true",
        "xleave",
        "autokey",
        "preempt",
        "nts",
        "noval",
    }
)
"""Options without a value. ``nts`` and ``noval`` are NTPsec's; the rest are ntpd's."""

NTS_OPTIONS = frozenset({"noval", "ca", "aead", "ntsport"})
"""Options that only mean something with ``nts``."""

SERVER_INT_OPTIONS: dict[str, tuple[int, int]] = {
    "minpoll": (3, 17),
    "maxpoll": (3, 17),
    "key": (1, 65535),
    "version": (1, 4),
    "port": (1, 65535),
    "maxsources": (1, 16),
    "ttl": (0, 255),
    "mode": (0, 255),
    "ntsport": (1, 65535),
}
"""Options with an integer value and their ranges (poll in log2 s, per ntp.conf(5))."""

SERVER_FLOAT_OPTIONS = frozenset({"bias"})
SERVER_TEXT_OPTIONS = frozenset({"ca", "aead"})

FUDGE_USAGE = (
    "fudge 127.127.T.U [stratum N] [refid TEXT] [time1 SECONDS] [time2 VALUE] "
    "[flag1 0|1] [flag2 0|1] [flag3 0|1] [flag4 0|1]"
)


SERVER_OPTION_DOCS: tuple[tuple[str, str], ...] = (
    ("-4, -6", "resolve the name to IPv4 (-4) or IPv6 (-6) addresses only"),
    (
        "iburst",
        "send a burst of 6 requests when the server is unreachable: synchronized "
        "within seconds of start-up (recommended)",
    ),
    ("burst", "a burst of 8 requests at every poll (only with the server's consent)"),
    ("prefer", "prefer this source among equally good ones"),
    ("noselect", "poll and show it, never follow it"),
    ("true", "ntpd's truechimer override: accepted, selection is not overridden"),
    (
        "xleave",
        "interleaved mode (as chrony): ask for the true transmit time of the server's "
        "previous reply (and use the kernel's of our requests); basic mode whenever the "
        "server does not interleave. Works with key N and nts",
    ),
    ("autokey", "Autokey (RFC 5906): accepted and ignored; use nts"),
    ("preempt", "ntpd's preemptable association: accepted"),
    (
        "minpoll N, maxpoll N",
        "poll interval bounds, log2 seconds (3..17; default 6 and 10: 64 s and 1024 s)",
    ),
    (
        "key N",
        "sign requests with symmetric key N and use only replies whose MAC verifies "
        "(N must be in the keys file and in trustedkey)",
    ),
    ("version N", "NTP version of the requests, 1..4 (default 4)"),
    ("port N", "ntpy's own: the server's UDP port (default 123)"),
    ("ttl N, mode N", "broadcast/manycast settings: accepted, unused"),
    ("bias SECONDS", "ntpd's offset correction for this source, -1..1 (default 0)"),
    (
        "nts",
        "authenticate with NTS (RFC 8915): a TLS 1.3 key exchange (port 4460), then "
        "cookies on every request; unauthenticated replies are never used",
    ),
    ("noval", "with nts: do not validate the server's certificate (warned about: testing only)"),
    ("ca FILE|DIR", "with nts: trusted CA certificates (default: 'nts ca', else the system's)"),
    ("aead NAME", "with nts: the AEAD to ask for (default: the best both sides have)"),
    ("ntsport N", "with nts: the key exchange port (default 4460)"),
)
"""The options of server, pool and peer for the manual (a test checks every option of the
parser is here)."""


def _usage(kind: str) -> str:
    extra = " [maxsources N]" if kind == "pool" else ""
    return (
        f"{kind} [-4|-6] ADDRESS [iburst] [burst] [prefer] [noselect] [true] [xleave] "
        f"[minpoll N] [maxpoll N] [key N] [version N] [port N]{extra} "
        "[nts [noval] [ca FILE|DIR] [aead NAME] [ntsport N]]"
    )


def _option_words() -> frozenset[str]:
    return SERVER_FLAGS | frozenset(SERVER_INT_OPTIONS) | SERVER_FLOAT_OPTIONS | SERVER_TEXT_OPTIONS


def _take_family(args: Args) -> Family | None:
    family: Family | None = None
    while args.peek() in ("-4", "-6"):
        family = 4 if args.take() == "-4" else 6
    return family


def handle_server(state: State, line: Line) -> None:
    kind = cast(ServerKind, line.name)
    args = Args(line.args)
    family = _take_family(args)
    address = args.take()
    if address is None:
        raise BadValue(f"'{kind}' needs an address")
    if address.lower() in _option_words():
        raise BadValue(f"'{kind}' needs an address before its options, got {show(address)}")
    ip = parse_ip(address)
    if isinstance(ip, IPv4Address) and ip in REFCLOCK_NET:
        _refclock(state, line, kind, ip, family, args)
        return
    host = parse_host(address, f"'{kind}'")
    if ip is not None and family is not None and ip.version != family:
        raise BadValue(f"-{family} contradicts the IPv{ip.version} address {show(address)}")
    values: dict[str, Any] = {}
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option in SERVER_FLAGS:
            values[option] = True
        elif option in SERVER_INT_OPTIONS:
            lo, hi = SERVER_INT_OPTIONS[option]
            values[option] = parse_int(args.take(), option, lo, hi)
        elif option in SERVER_FLOAT_OPTIONS:
            values[option] = parse_float(args.take(), option, -1.0, 1.0, unit="seconds")
        elif option in SERVER_TEXT_OPTIONS:
            values[option] = _text_option(option, args.take())
        else:
            raise BadValue(f"unknown option {show(word)} for '{kind}'")
    _check_server_values(state, line.loc, kind, values)
    spec = ServerSpec(kind=kind, address=host, family=family, location=line.loc)
    spec = replace(spec, **values)
    if spec.minpoll > spec.maxpoll:
        raise BadValue(f"'minpoll' ({spec.minpoll}) must not exceed 'maxpoll' ({spec.maxpoll})")
    for other in state.servers:
        if (other.kind, other.address, other.port) == (kind, host, spec.port):
            state.warn(line.loc, f"duplicate {kind} {show(host)} (first at {other.location})")
            break
    state.servers.append(spec)


def _text_option(option: str, token: str | None) -> str:
    if token is None or token.lower() in _option_words():
        what = "a CA file or directory" if option == "ca" else "an AEAD name"
        raise BadValue(f"'{option}' needs {what}, got {show(token)}")
    if option == "aead":
        try:
            ntsaead.by_name(token)
        except ValueError as exc:
            raise BadValue(str(exc)) from None
    return token


def _check_nts_values(state: State, loc: SourceLocation, kind: str, values: dict[str, Any]) -> None:
    """NTS options need ``nts``; ``nts`` and ``key N`` exclude each other; ``noval`` is
    accepted loudly (a client that verifies nothing can be fed any time)."""
    nts_only = sorted(NTS_OPTIONS & values.keys())
    if nts_only and "nts" not in values:
        raise BadValue(f"{', '.join(repr(o) for o in nts_only)}: only with 'nts'; add 'nts'")
    if "nts" not in values:
        return
    if kind == "peer":
        raise BadValue("'nts' is for 'server' and 'pool' lines, not 'peer'")
    if "key" in values:
        raise BadValue("'nts' and 'key N' exclude each other: NTS brings its own keys; drop one")
    if values.get("noval"):
        state.warn(
            loc,
            "'noval': the NTS server's certificate is NOT verified -- anyone on the path can "
            "give this source any time; use it for testing only",
        )


def _check_server_values(
    state: State, loc: SourceLocation, kind: str, values: dict[str, Any]
) -> None:
    _check_nts_values(state, loc, kind, values)
    if "maxsources" in values and kind != "pool":
        raise BadValue("'maxsources' is only valid on 'pool' lines")
    if kind == "peer":
        for option in ("iburst", "burst"):
            if option in values:
                state.warn(loc, f"'{option}' has no effect on 'peer' lines (ignored)")
    if "autokey" in values:
        state.warn(loc, "ntpy does not implement Autokey; 'autokey' is ignored (use 'key N')")
    if "mode" in values:
        del values["mode"]
        state.warn(loc, "'mode' only applies to reference clocks (ignored)")
    if "ttl" in values:
        state.warn(loc, "'ttl' only applies to broadcast/manycast, which ntpy lacks (ignored)")
    if values.get("xleave") and values.get("version", 4) != 4:
        state.warn(
            loc,
            f"'xleave' needs NTP version 4 (servers interleave only v4 requests); with "
            f"'version {values['version']}' basic mode is used: drop 'version' or 'xleave'",
        )


def _refclock(
    state: State,
    line: Line,
    kind: str,
    ip: IPv4Address,
    family: Family | None,
    args: Args,
) -> None:
    if kind != "server":
        raise BadValue(f"reference clock {ip} can only be configured with 'server', not '{kind}'")
    if family == 6:
        raise BadValue(f"-6 contradicts the reference clock address {ip}")
    driver, unit = _driver_unit(ip)
    values: dict[str, Any] = {}
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option in ("iburst", "burst"):
            state.warn(line.loc, f"'{option}' has no effect on a reference clock (ignored)")
        elif option in ("prefer", "noselect", "true"):
            values[option] = True
        elif option in ("minpoll", "maxpoll", "mode"):
            lo, hi = SERVER_INT_OPTIONS[option]
            values[option] = parse_int(args.take(), option, lo, hi)
        elif option in _option_words():
            raise BadValue(f"{show(word)} is not valid for reference clock {ip}")
        else:
            raise BadValue(f"unknown option {show(word)} for 'server'")
    spec = replace(RefclockSpec(driver=driver, unit=unit, location=line.loc), **values)
    if spec.minpoll > spec.maxpoll:
        raise BadValue(f"'minpoll' ({spec.minpoll}) must not exceed 'maxpoll' ({spec.maxpoll})")
    existing = state.refclocks.get((driver, unit))
    if existing is not None:
        raise BadValue(f"reference clock {ip} is already configured at {existing.location}")
    state.refclocks[(driver, unit)] = spec


def _driver_unit(ip: IPv4Address) -> tuple[int, int]:
    _, _, driver, unit = ip.packed
    if driver == 0:
        raise BadValue(f"{ip}: reference clock type 0 does not exist (types start at 1)")
    return driver, unit


def handle_fudge(state: State, line: Line) -> None:
    args = Args(line.args)
    address = args.take()
    ip = parse_ip(address) if address is not None else None
    if not (isinstance(ip, IPv4Address) and ip in REFCLOCK_NET):
        if address is not None and looks_numeric(address) and ip is None:
            hint = numeric_hint(address, example="127.127.1.0")
            raise BadValue(f"'fudge' needs a reference clock address 127.127.T.U; {hint}")
        raise BadValue(f"'fudge' needs a reference clock address 127.127.T.U, got {show(address)}")
    key = _driver_unit(ip)
    pending = state.fudges.setdefault(key, PendingFudge())
    if pending.location is None:
        pending.location = line.loc
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option == "stratum":
            pending.values["stratum"] = parse_int(args.take(), "stratum", 0, 15)
        elif option == "refid":
            pending.values["refid"] = parse_refid(args.take())
        elif option in ("time1", "time2"):
            pending.values[option] = parse_float(args.take(), option)
        elif option in ("flag1", "flag2", "flag3", "flag4"):
            pending.values[option] = parse_bool01(args.take(), option)
        else:
            raise BadValue(f"unknown fudge option {show(word)}")


def parse_refid(token: str | None) -> str:
    if (
        token is None
        or not 1 <= len(token) <= 4
        or not token.isascii()
        or not token.isprintable()
        or " " in token
    ):
        raise BadValue(f"'refid' needs 1 to 4 printable ASCII characters, got {show(token)}")
    return token


def handle_local(state: State, line: Line) -> None:
    args = Args(line.args)
    spec = LocalSpec(location=line.loc)
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option == "stratum":
            spec = replace(spec, stratum=parse_int(args.take(), "stratum", 1, 15))
        elif option == "orphan":
            spec = replace(spec, orphan=True)
        elif option == "distance":
            distance = parse_float(args.take(), "distance", 0.0, lo_exclusive=True, unit="seconds")
            spec = replace(spec, distance=distance)
        elif option == "activate":
            activate = parse_float(args.take(), "activate", 0.0, unit="seconds")
            spec = replace(spec, activate=activate)
        else:
            raise BadValue(f"unknown option {show(word)} for 'local'")
    if state.local is not None:
        state.warn(line.loc, f"'local' was already given at {state.local.location}; this line wins")
    state.local = spec


def finish_refclocks(state: State) -> tuple[RefclockSpec, ...]:
    """Apply fudges to their clocks; warn about fudges for clocks never configured."""
    for key, pending in state.fudges.items():
        if key not in state.refclocks and pending.location is not None:
            state.warn(
                pending.location,
                f"fudge for 127.127.{key[0]}.{key[1]}, which no 'server' line configures (ignored)",
            )
    result = []
    for key, spec in state.refclocks.items():
        if spec.driver != LOCAL_CLOCK_DRIVER and spec.driver not in DRIVERS:
            if spec.location is not None:
                state.warn(
                    spec.location,
                    f"reference clock type {spec.driver} ({spec.address}) is not one ntpy "
                    "has (1 local, 20 NMEA, 22 PPS, 28 SHM; 'refclock sock'): ignored",
                )
            continue
        values = dict(state.fudges[key].values) if key in state.fudges else {}
        values.setdefault("stratum", _default_stratum(spec.driver))
        values.setdefault("refid", _default_refid(spec.driver))
        result.append(replace(spec, **values))
    return tuple(result)


def _default_stratum(driver: int) -> int:
    if driver == LOCAL_CLOCK_DRIVER:
        return LOCAL_CLOCK_DEFAULT_STRATUM
    return REFCLOCK_DEFAULT_STRATUM


def _default_refid(driver: int) -> str | None:
    if driver == LOCAL_CLOCK_DRIVER:
        return LOCAL_CLOCK_DEFAULT_REFID
    known = DRIVERS.get(driver)
    return known.refid if known is not None else None


DIRECTIVES: dict[str, Directive] = {
    "server": Directive(
        handle_server,
        _usage("server"),
        "An upstream NTP server to synchronize to (a name is resolved once; an unresolvable "
        "one is retried from 1 min, doubling to 1 h). 127.127.T.U is reference clock type "
        "T unit U: see fudge and refclock.",
        SERVER_OPTION_DOCS,
    ),
    "pool": Directive(
        handle_server,
        _usage("pool"),
        "A pool name: up to maxsources of its addresses are used as servers, and a member "
        "that is unreachable, refuses service or is a falseticker is replaced by a fresh "
        "address.",
        (*SERVER_OPTION_DOCS, ("maxsources N", "addresses used at once (1..16, default 4)")),
    ),
    "peer": Directive(
        handle_server,
        _usage("peer"),
        "A symmetric active association (RFC 5905 mode 1) with another server: we send it "
        "mode 1 packets carrying our system variables, it answers in mode 2 (or mode 1), "
        "and each side can synchronize to the other and serves it. Its samples count as a "
        "server's; a peer synchronized to us (its refid is our address) or to the source "
        "we follow is a timing loop and never selected ('loop' in ntpy peers). With 'key N' "
        "both directions are signed and only authentic answers count. Mode 1 from hosts "
        "not configured here never mobilizes anything: it is answered in mode 2 (refused "
        "under 'restrict ... nopeer' unless it has a valid MAC), and cannot steer our clock.",
        SERVER_OPTION_DOCS,
    ),
    "fudge": Directive(
        handle_fudge,
        FUDGE_USAGE,
        "Settings of a reference clock driver (ntpd's; 'refclock' takes the same options). "
        "The local clock 127.127.1.U serves at its stratum + 1 (default 5, ntpd's) and, with "
        "upstreams configured, takes over only after they have been lost for 'tos "
        "orphanwait'. 127.127.28.U is gpsd's shared memory (SHM), 127.127.20.U a serial NMEA "
        "GPS, 127.127.22.U a kernel PPS device: see refclock.",
        (
            ("stratum N", "the clock's stratum, 0..15 (local clock default 5; others 0)"),
            ("refid TEXT", "up to 4 characters (defaults: LOCL, SHM, GPS, PPS, SOCK)"),
            (
                "time1 SECONDS",
                "offset added to every sample of SHM, PPS and SOCK clocks",
            ),
            ("time2 VALUE", "NMEA: the sentence delay added to every sample"),
            (
                "flag1..flag4 0|1",
                "driver flags: accepted; flag3 (PPS kernel hardpps) is not supported",
            ),
        ),
    ),
    "local": Directive(
        handle_local,
        "local [stratum N] [orphan] [distance SECONDS] [activate SECONDS]",
        "chrony's local reference: serve the system clock at stratum N when no upstream is "
        "selectable (refid 127.127.1.1).",
        (
            ("stratum N", "the stratum served, 1..15 (default 10)"),
            (
                "orphan",
                "chrony's orphan mode: of several local servers the one with the "
                "smallest reference ID wins",
            ),
            (
                "distance SECONDS",
                "root distance below which an upstream is preferred to the "
                "local reference (default 1)",
            ),
            (
                "activate SECONDS",
                "chrony's activation rule: the local reference is armed only after ntpy was "
                "synchronized with a root distance below SECONDS",
            ),
        ),
    ),
}
