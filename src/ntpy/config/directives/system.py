"""Discipline and selection knobs: ``tos``, ``tinker``, ``discard``, ``enable``/``disable``,
plus chrony's ``makestep``/``maxdistance`` and ntpy's ``clock``.

Each knob is described once in a table (name -> value parser) so the accepted names, the
ranges and the error messages cannot drift apart. Ranges follow ntpd ``miscopt.html`` where
it gives one, and are otherwise generous sanity bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from ..errors import ConfigError
from ..model import (
    DiscardSpec,
    MakestepSpec,
    MruSpec,
    RateLimitSpec,
    SystemFlags,
    TinkerSpec,
    TosSpec,
)
from ..state import Args, Directive, Line, State
from ..values import BadValue, parse_bool01, parse_float, parse_int, show

ValueParser = Callable[[str | None, str], Any]


def _int(lo: int, hi: int) -> ValueParser:
    return lambda token, what: parse_int(token, what, lo, hi)


def _float(
    lo: float, hi: float | None = None, *, excl: bool = False, unit: str = ""
) -> ValueParser:
    return lambda token, what: parse_float(token, what, lo, hi, lo_exclusive=excl, unit=unit)


def _huffpuff(token: str | None, what: str) -> float:
    value = parse_float(token, what, 0.0, unit="seconds")
    if 0.0 < value < 900.0:
        raise BadValue(f"'{what}' must be 0 (off) or at least 900 seconds, got {show(token)}")
    return value


TOS_OPTIONS: dict[str, ValueParser] = {
    "minclock": _int(1, 255),
    "maxclock": _int(1, 255),
    "minsane": _int(1, 255),
    "mindist": _float(0.0, excl=True, unit="seconds"),
    "maxdist": _float(0.0, excl=True, unit="seconds"),
    "orphan": _int(1, 16),
    "orphanwait": _float(0.0, unit="seconds"),
    "coldstart": parse_bool01,
    "ceiling": _int(1, 16),
    "floor": _int(0, 15),
    "cohort": parse_bool01,
    "beacon": _int(1, 2**31 - 1),
    "bcpollbstep": _int(0, 4),
}

TINKER_OPTIONS: dict[str, ValueParser] = {
    "step": _float(0.0, unit="seconds"),
    "panic": _float(0.0, unit="seconds"),
    "dispersion": _float(0.0, unit="PPM"),
    "stepout": _float(0.0, excl=True, unit="seconds"),
    "allan": _float(0.0, 30.0, unit="(log2 seconds)"),
    "huffpuff": _huffpuff,
    "freq": _float(-500.0, 500.0, unit="PPM"),
    "stepback": _float(0.0, unit="seconds"),
    "stepfwd": _float(0.0, unit="seconds"),
    "panicexit": parse_bool01,
    "maxslewrate": _float(0.0, 83_333.333, excl=True, unit="PPM"),
}

DISCARD_OPTIONS: dict[str, ValueParser] = {
    "average": _int(0, 16),
    "minimum": _int(0, 3600),
    "monitor": _int(0, 2**31 - 1),
}

MRU_OPTIONS: dict[str, ValueParser] = {
    "maxdepth": _int(1, 1 << 24),
    "maxmem": _int(64, 1 << 22),
    "mindepth": _int(0, 1 << 24),
    "maxage": _int(0, 2**31 - 1),
    "minage": _int(0, 2**31 - 1),
    "initalloc": _int(0, 1 << 24),
    "initmem": _int(0, 1 << 22),
    "incalloc": _int(0, 1 << 24),
    "incmem": _int(0, 1 << 22),
}

RATELIMIT_OPTIONS: dict[str, ValueParser] = {
    "interval": _int(-10, 17),
    "burst": _int(1, 255),
    "leak": _int(1, 16),
    "ipv6prefix": _int(0, 128),
}

SYSTEM_FLAG_NAMES = tuple(f.name for f in fields(SystemFlags))


def _key_values(line: Line, table: dict[str, ValueParser]) -> list[tuple[str, Any]]:
    args = Args(line.args)
    if args.empty():
        raise BadValue(f"'{line.name}' needs at least one option")
    result: list[tuple[str, Any]] = []
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        parser = table.get(option)
        if parser is None:
            raise BadValue(f"unknown {line.name} option {show(word)}; valid: {', '.join(table)}")
        result.append((option, parser(args.take(), option)))
    return result


def handle_tos(state: State, line: Line) -> None:
    tos = state.tos
    for option, value in _key_values(line, TOS_OPTIONS):
        tos = replace(tos, **{option: value})
        _mark_set(state, option, line)
    _check_while_reading(state, tos)
    state.tos = tos


def _mark_set(state: State, option: str, line: Line) -> None:
    # Re-insert so the dict's order is "least recently set first".
    state.tos_set.pop(option, None)
    state.tos_set[option] = line.loc


TOS_ORDER = (
    ("floor", "ceiling", False),
    ("minclock", "maxclock", True),
    ("mindist", "maxdist", True),
)
"""Pairs that must be ordered: (low, high, may be equal)."""


def tos_problem(
    tos: TosSpec, explicit: frozenset[str] | None = None
) -> tuple[str, str, str] | None:
    """The first violated ordering as ``(low, high, message)``, or ``None``.

    While reading, only knobs the admin has set (``explicit``) are compared, so
    ``tos mindist 2`` followed by ``tos maxdist 3`` is fine; the final check (``explicit``
    is ``None``) compares against the defaults too.
    """
    for low, high, equal_ok in TOS_ORDER:
        if explicit is not None and not (low in explicit and high in explicit):
            continue
        lo_value, hi_value = getattr(tos, low), getattr(tos, high)
        if lo_value > hi_value or (lo_value == hi_value and not equal_ok):
            relation = "must not exceed" if equal_ok else "must be below"
            return low, high, f"'{low}' ({lo_value}) {relation} '{high}' ({hi_value})"
    return None


def _check_while_reading(state: State, tos: TosSpec) -> None:
    problem = tos_problem(tos, frozenset(state.tos_set))
    if problem is not None:
        raise BadValue(problem[2])


def finish_tos(state: State) -> None:
    """Final cross-check, blamed on the last line that set one of the offending knobs."""
    problem = tos_problem(state.tos)
    if problem is None:
        return
    low, high, message = problem
    # At least one of the pair was set explicitly, or the defaults themselves would clash.
    recent = [k for k in state.tos_set if k in (low, high)]
    loc = state.tos_set[recent[-1]]
    usage = DIRECTIVES["tos"].usage
    raise ConfigError(loc.filename, loc.line, f"{message} (expected: {usage})")


def handle_tinker(state: State, line: Line) -> None:
    tinker = state.tinker
    for option, value in _key_values(line, TINKER_OPTIONS):
        tinker = replace(tinker, **{option: value})
    if tinker.freq is not None and "driftfile" in state.files:
        state.warn(line.loc, "'tinker freq' overrides the frequency read from the driftfile")
    state.tinker = tinker


def handle_discard(state: State, line: Line) -> None:
    discard = state.discard
    for option, value in _key_values(line, DISCARD_OPTIONS):
        discard = replace(discard, **{option: value})
    state.discard = discard


def handle_mru(state: State, line: Line) -> None:
    mru = state.mru
    for option, value in _key_values(line, MRU_OPTIONS):
        if option in ("maxdepth", "maxmem"):
            mru = replace(mru, **{option: value})
    state.mru = mru


def handle_ratelimit(state: State, line: Line) -> None:
    spec = state.ratelimit
    for option, value in _key_values(line, RATELIMIT_OPTIONS):
        spec = replace(spec, **{option: value})
    state.ratelimit = spec


def handle_enable_disable(state: State, line: Line) -> None:
    on = line.name == "enable"
    args = Args(line.args)
    if args.empty():
        raise BadValue(f"'{line.name}' needs at least one flag")
    flags = state.flags
    while not args.empty():
        word = args.take() or ""
        name = word.lower()
        if name not in SYSTEM_FLAG_NAMES:
            raise BadValue(
                f"unknown flag {show(word)}; valid flags: {', '.join(SYSTEM_FLAG_NAMES)}"
            )
        flags = replace(flags, **{name: on})
    state.flags = flags


def handle_makestep(state: State, line: Line) -> None:
    args = Args(line.args)
    threshold = parse_float(args.take(), "threshold", 0.0, lo_exclusive=True, unit="seconds")
    limit = parse_int(args.take(), "limit", -1, 2**31 - 1)
    args.expect_end()
    state.makestep = MakestepSpec(threshold=threshold, limit=limit)


def handle_maxdistance(state: State, line: Line) -> None:
    args = Args(line.args)
    value = parse_float(args.take(), "maxdistance", 0.0, lo_exclusive=True, unit="seconds")
    args.expect_end()
    tos = replace(state.tos, maxdist=value)
    _mark_set(state, "maxdist", line)
    _check_while_reading(state, tos)
    state.tos = tos


def handle_clock(state: State, line: Line) -> None:
    args = Args(line.args)
    word = args.take()
    mode = word.lower() if word is not None else None
    if mode == "auto":
        state.clock = "auto"
    elif mode == "system":
        state.clock = "system"
    elif mode == "virtual":
        state.clock = "virtual"
    else:
        raise BadValue(f"'clock' needs auto, system or virtual, got {show(word)}")
    args.expect_end()


_ENABLE_USAGE = "{} " + "|".join(SYSTEM_FLAG_NAMES) + " ..."


def _defaults(spec: object, docs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Option docs with each default read from the model's dataclass, so the manual cannot
    drift from the parser's defaults."""
    out = []
    for name, text in docs.items():
        value = getattr(spec, name, None)
        shown = "not set" if value is None else value
        out.append((f"{name} VALUE", f"{text} (default {shown})"))
    return tuple(out)


_TOS_DOCS = {
    "minclock": "survivors kept by clustering",
    "maxclock": "most sources used (pool members beyond it are not added)",
    "minsane": "truechimers needed to synchronize",
    "mindist": "least root distance a source counts with, s",
    "maxdist": "root distance above which a source is not selectable, and held time stops "
    "being served, s",
    "orphan": "orphan mode stratum: serve the local time at this stratum when no source "
    "is left (16 = off)",
    "orphanwait": "seconds the upstreams must be lost before the local or orphan clock takes over",
    "coldstart": "1 = the local or orphan clock may serve before this run was ever "
    "synchronized (and no last-good file vouches for the clock); 0 = it waits",
    "ceiling": "sources at this stratum or above are not selectable",
    "floor": "sources below this stratum are not selectable",
    "cohort": "ntpd's same-stratum rule: accepted",
    "beacon": "ntpd's manycast/orphan beacon interval: accepted",
    "bcpollbstep": "ntpd's broadcast poll step: accepted",
}
_TINKER_DOCS = {
    "step": "offsets beyond this are stepped (once they persist for stepout), s",
    "panic": "a first offset beyond this is refused unless -g; 0 = no limit, s",
    "dispersion": "dispersion growth rate, PPM",
    "stepout": "seconds an offset beyond step must persist before the step",
    "allan": "Allan intercept, log2 s",
    "huffpuff": "huff-n'-puff window, s (0 = off)",
    "freq": "initial frequency, PPM (else the drift file's)",
    "stepback": "step threshold backward, s (default: step)",
    "stepfwd": "step threshold forward, s (default: step)",
    "panicexit": "ntpy's own: 1 = exit on a later offset beyond panic, as ntpd; 0 = ignore "
    "that source and hold over",
    "maxslewrate": "ntpy's own, as chrony's maxslewrate: the fastest the system clock is "
    "slewed (tick length plus frequency), PPM, up to 83333.333",
}
_DISCARD_DOCS = {
    "average": "least mean interval of a limited client, log2 s",
    "minimum": "least interval between two requests of a limited client, s",
    "monitor": "ntpd's MRU sampling knob: accepted",
}
_RATELIMIT_DOCS = {
    "interval": "mean interval, log2 s (default: discard average)",
    "burst": "requests a quiet client may send at once",
    "leak": "log2 of the share of over-limit requests still answered",
    "ipv6prefix": "IPv6 clients are counted per prefix of this length",
}
_MRU_DOCS = {
    "maxdepth": "entries in the client table (default 65536 when neither is set)",
    "maxmem": "size of the client table, KiB (the smaller of the two wins)",
    **{
        name: "sizes ntpd's growing list: accepted, unused"
        for name in ("mindepth", "maxage", "minage", "initalloc", "initmem", "incalloc", "incmem")
    },
}
_FLAG_DOCS = {
    "auth": "ntpd: authenticate peers before mobilizing them",
    "bclient": "listen for broadcast servers (same as 'broadcastclient')",
    "calibrate": "ntpd: calibrate reference clocks",
    "kernel": "ntpd: use the kernel discipline",
    "mode7": "ntpd: answer ntpdc's mode 7 (ntpy never does)",
    "monitor": "ntpd: keep the MRU list",
    "ntp": "ntpd: discipline the clock",
    "stats": "ntpd: write the statistics files",
    "unpeer_crypto_early": "ntpd: Autokey",
    "unpeer_crypto_nak_early": "ntpd: Autokey",
    "unpeer_digest_early": "ntpd: drop a peer early on a bad digest",
    "peer_clear_digest_early": "ntpd: clear a peer early on a bad digest",
}

DIRECTIVES: dict[str, Directive] = {
    "tos": Directive(
        handle_tos,
        "tos " + " ".join(f"[{k} VALUE]" for k in TOS_OPTIONS),
        "ntpd's selection and orphan settings. A later line changes only the options it names.",
        _defaults(TosSpec(), _TOS_DOCS),
    ),
    "tinker": Directive(
        handle_tinker,
        "tinker " + " ".join(f"[{k} VALUE]" for k in TINKER_OPTIONS),
        "ntpd's clock discipline settings: when to step, when to refuse an offset (panic).",
        _defaults(TinkerSpec(), _TINKER_DOCS),
    ),
    "discard": Directive(
        handle_discard,
        "discard [average N] [minimum N] [monitor N]",
        "The rates of the rate limiter for clients restricted with 'limited'.",
        _defaults(DiscardSpec(), _DISCARD_DOCS),
    ),
    "ratelimit": Directive(
        handle_ratelimit,
        "ratelimit [interval LOG2-SECONDS] [burst N] [leak LOG2] [ipv6prefix BITS]",
        "chrony's form of the rate limiter's settings: token buckets in a fixed-memory "
        "table, with a random leak so a spoofed flood cannot silence its victim.",
        _defaults(RateLimitSpec(), _RATELIMIT_DOCS),
    ),
    "mru": Directive(
        handle_mru,
        "mru [maxdepth ENTRIES] [maxmem KIB] [mindepth N] [maxage S] [minage S] ...",
        "The size of the rate limiter's client table (fixed in size, so a flood cannot grow it).",
        _defaults(MruSpec(), _MRU_DOCS),
    ),
    "enable": Directive(
        handle_enable_disable,
        _ENABLE_USAGE.format("enable"),
        "ntpd's system flags, accepted so ntpd configs load; ntpy does not act on them (its "
        "clock discipline, statistics and client table follow their own directives).",
        tuple(
            (f, f"{_FLAG_DOCS[f]} (default {'on' if getattr(SystemFlags(), f) else 'off'})")
            for f in SYSTEM_FLAG_NAMES
        ),
    ),
    "disable": Directive(
        handle_enable_disable,
        _ENABLE_USAGE.format("disable"),
        "Switch ntpd's system flags off: accepted, not acted on (the flags: see enable).",
    ),
    "makestep": Directive(
        handle_makestep,
        "makestep THRESHOLD-SECONDS LIMIT (-1 = no limit)",
        "chrony's: step the clock when the offset exceeds THRESHOLD during the first LIMIT "
        "clock updates (-1: at any time); otherwise offsets are slewed.",
    ),
    "maxdistance": Directive(
        handle_maxdistance,
        "maxdistance SECONDS",
        "chrony's name for 'tos maxdist': the root distance above which a source is not "
        "selectable (default 1.5).",
    ),
    "clock": Directive(
        handle_clock,
        "clock auto|system|virtual",
        "ntpy's own: which clock to discipline and serve. system: the kernel clock "
        "(adjtimex, needs CAP_SYS_TIME); virtual: a software offset and frequency over it, "
        "never touching the system clock (as 'ntpy serve -x'); auto (default): system "
        "with CAP_SYS_TIME, else virtual.",
    ),
}

# Keep the table and the model in step.
assert set(TOS_OPTIONS) <= {f.name for f in fields(TosSpec)}
assert set(TINKER_OPTIONS) <= {f.name for f in fields(TinkerSpec)}
assert set(DISCARD_OPTIONS) <= {f.name for f in fields(DiscardSpec)}
