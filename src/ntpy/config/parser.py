"""Entry points: :func:`parse_text` and :func:`load`, including ``includefile`` handling.

The parser walks lines in order, dispatches each directive to its handler, and only at the
end builds the frozen :class:`~ntpy.config.model.Config` (refclock ``fudge`` lines may come
before their ``server`` line, so some merging must wait). Any problem becomes a
:class:`ConfigError` naming the file and line — of the include file where it occurred.

A bad line does not stop the walk: every error of the file is collected and raised together
as one :class:`~ntpy.config.errors.ConfigErrors`, so an admin fixes them all in one round
(``check-config``, a start, a reload). Only the include limits stop it at once: they exist to
bound the work a config can cause (a fan-out of includes once expanded to 390k lines and
blocked a SIGHUP for 18 s).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from .directives import DIRECTIVES
from .directives.broadcasting import finish_broadcastclient
from .directives.misc import UNSUPPORTED_NTPD_DIRECTIVES
from .directives.sources import finish_refclocks
from .directives.system import finish_tos
from .errors import ConfigError, ConfigErrors, ConfigWarning, SourceLocation, all_errors
from .files import ReadError, read_text_file
from .lexer import iter_lines, split_lines, tokenize_line
from .model import Config
from .state import Args, Line, State
from .values import BadValue, show

MAX_INCLUDE_DEPTH = 5
"""ntpd: "Include files may be nested to a depth of five" (``miscopt.html``)."""

MAX_INCLUDED_FILES = 100
"""Include files read in total (every ``includefile`` line that is followed counts)."""

MAX_TOTAL_LINES = 100_000
"""Lines read in total, over the main file and every include (typical configs: under 100)."""

MAX_ERRORS = 100
"""Errors collected before the parser gives up (a binary file would yield one per line)."""

INCLUDE_USAGE = "includefile PATH (relative paths are relative to the including file)"

SOURCE_DIRECTIVES = frozenset({"server", "pool", "peer", "local"})
"""Directives that configure a time source: a misspelling of one may leave none."""

_KNOWN_NAMES = sorted({*DIRECTIVES, "includefile", *UNSUPPORTED_NTPD_DIRECTIVES})


class _Abort(Exception):
    """Stop parsing now (a limit was hit); the errors so far are in ``State.errors``."""


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The validated configuration and the warnings produced while reading it."""

    config: Config
    warnings: tuple[ConfigWarning, ...]


def parse_text(
    text: str,
    filename: str = "<string>",
    *,
    strict: bool = False,
    base_dir: str | None = None,
) -> ParseResult:
    """Parse configuration text; ``base_dir`` anchors relative ``includefile`` paths.

    With ``strict=True`` every warning (unknown or unsupported directive, ignored option)
    is raised as a :class:`ConfigError` instead.
    """
    if base_dir is None:
        is_real_file = not (filename.startswith("<") and filename.endswith(">"))
        base_dir = os.path.dirname(os.path.abspath(filename)) if is_real_file else os.getcwd()
    config, warnings, errors = parse_collect(text, filename, strict=strict, base_dir=base_dir)
    if errors:
        raise ConfigErrors(errors)
    return ParseResult(config=config, warnings=warnings)


def parse_collect(
    text: str, filename: str, *, strict: bool, base_dir: str
) -> tuple[Config, tuple[ConfigWarning, ...], list[ConfigError]]:
    """Parse without raising: the config built from the lines that parsed, the warnings and
    every error (callers such as ``ntpy check-config`` add their own checks to the list)."""
    state = State(strict=strict)
    state.includes.append(filename)
    config = Config()
    try:
        _count_lines(state, text, SourceLocation(filename, 0))
        _parse_into(state, text, filename, base_dir, (_identity(filename),))
        config = _finish(state)
    except _Abort:
        pass
    return config, tuple(state.warnings), list(state.errors)


def load(path: str, *, strict: bool = False, check_paths: bool = False) -> ParseResult:
    """Read and parse a configuration file. An unreadable file is a ConfigError at line 0.

    ``check_paths`` also checks what the file names on this machine (keys file, drift file,
    log and statistics directories: see :mod:`ntpy.config.checks`). ``ntpy check-config``,
    ``ntpy serve`` and a reload all ask for it, so they report the same problems. Its
    warnings stay warnings under ``strict``: they describe this machine (a directory not yet
    created), not the file, which may be checked elsewhere before it is deployed.
    """
    try:
        text = read_text_file(path)
    except ReadError as exc:
        raise ConfigError(path, 0, f"cannot read configuration file: {exc}") from None
    base_dir = os.path.dirname(os.path.abspath(path))
    config, warnings, errors = parse_collect(text, path, strict=strict, base_dir=base_dir)
    if check_paths:
        from .checks import check_paths as run_checks

        for problem in run_checks(config):
            if isinstance(problem, ConfigError):
                errors.append(problem)
            else:
                warnings = (*warnings, problem)
    if errors:
        raise ConfigErrors(errors)
    return ParseResult(config=config, warnings=warnings)


def _identity(path: str) -> str:
    if path.startswith("<") and path.endswith(">"):
        return path
    return os.path.realpath(path)


def _record(state: State, error: ConfigError) -> None:
    """Keep ``error`` and go on with the next line, up to :data:`MAX_ERRORS`."""
    state.errors.extend(all_errors(error))
    if len(state.errors) >= MAX_ERRORS:
        state.errors.append(
            ConfigError(error.filename, error.line, f"too many errors ({MAX_ERRORS}); stopping")
        )
        raise _Abort


def _count_lines(state: State, text: str, loc: SourceLocation) -> None:
    """Charge a file's lines to the total; past :data:`MAX_TOTAL_LINES`, stop at once."""
    state.lines_read += len(split_lines(text))
    if state.lines_read > MAX_TOTAL_LINES:
        where = "" if loc.line == 0 else " with this include"
        state.errors.append(
            ConfigError(
                loc.filename,
                loc.line,
                f"the configuration exceeds {MAX_TOTAL_LINES} lines in total{where} (a limit "
                "that bounds the work of a reload); check for include files that fan out",
            )
        )
        raise _Abort


def _parse_into(
    state: State, text: str, filename: str, base_dir: str, stack: tuple[str, ...]
) -> None:
    for number, raw in iter_lines(text):
        try:
            tokens = tokenize_line(raw)
        except BadValue as exc:
            _record(state, ConfigError(filename, number, exc.message))
            continue
        if not tokens:
            continue
        loc = SourceLocation(filename, number)
        line = Line(loc=loc, name=tokens[0].lower(), written=tokens[0], args=tokens[1:])
        try:
            if line.name == "includefile":
                _include(state, line, base_dir, stack)
                continue
            directive = DIRECTIVES.get(line.name)
            if directive is None:
                _unknown(state, line)
                continue
            try:
                directive.handler(state, line)
            except BadValue as exc:
                raise ConfigError(
                    filename, number, f"{exc.message} (expected: {directive.usage})"
                ) from None
        except ConfigError as exc:
            state.failed.add(line.name)
            _record(state, exc)


def suggest_directive(word: str) -> str | None:
    """The known directive ``word`` most likely misspells (``sever`` -> ``server``), if any."""
    matches = difflib.get_close_matches(word.lower(), _KNOWN_NAMES, n=1, cutoff=0.75)
    return matches[0] if matches else None


def _unknown(state: State, line: Line) -> None:
    guess = suggest_directive(line.name)
    hint = f"; did you mean {show(guess)}?" if guess is not None else ""
    state.warn(line.loc, f"unknown directive {show(line.written)} (ignored{hint})")
    if guess in SOURCE_DIRECTIVES:
        state.source_typos.append((line.loc, line.written, guess))


def _include(state: State, line: Line, base_dir: str, stack: tuple[str, ...]) -> None:
    loc = line.loc

    def fail(message: str) -> ConfigError:
        return ConfigError(loc.filename, loc.line, f"{message} (expected: {INCLUDE_USAGE})")

    args = Args(line.args)
    path = args.take()
    if not path:
        raise fail(f"'includefile' needs a path, got {show(path)}")
    try:
        args.expect_end()
    except BadValue as exc:
        raise fail(exc.message) from None
    if "\x00" in path:
        raise fail("the include path contains a NUL character")
    if len(stack) > MAX_INCLUDE_DEPTH:
        raise fail(f"includefile nested deeper than {MAX_INCLUDE_DEPTH} levels")
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))
    identity = _identity(full)
    if identity in stack:
        chain = " -> ".join([*stack[1:], identity]) if len(stack) > 1 else identity
        raise fail(f"includefile {show(path)} would include itself again (cycle: {chain})")
    if len(state.includes) > MAX_INCLUDED_FILES:
        state.errors.append(
            fail(
                f"more than {MAX_INCLUDED_FILES} include files in total (a limit that bounds "
                "the work of a reload); check for include files that fan out"
            )
        )
        raise _Abort
    try:
        text = read_text_file(full)
    except ReadError as exc:
        where = "" if full == path else f" ({show(full, limit=200)})"
        raise fail(f"cannot read include file {show(path)}{where}: {exc}") from None
    state.includes.append(full)
    _count_lines(state, text, loc)
    _parse_into(state, text, full, os.path.dirname(full), (*stack, identity))


def _client_key_problem(state: State, key: int | None) -> str | None:
    """Why a source's ``key N`` cannot sign its requests (None if it can, as far as the
    config text tells: that the keys file holds key N is checked with the files, in
    ``checks``). ntpd uses a key only if ``trustedkey`` lists it; so does ntpy."""
    if key is None:
        return None
    if "keys" not in state.files:
        return (
            f"no keys file: add 'keys FILE' with key {key} in it (e.g. '{key} SHA1 "
            f"<40 hex digits>') and 'trustedkey {key}'"
        )
    if key not in state.trustedkeys:
        return f"key {key} is not trusted: add 'trustedkey {key}'"
    return None


def _finish(state: State) -> Config:
    refclocks = finish_refclocks(state)
    try:
        if not state.failed & {"tos", "maxdistance"}:  # else the cross-check only echoes it
            finish_tos(state)
    except ConfigError as exc:
        _record(state, exc)
    for server in state.servers:
        problem = _client_key_problem(state, server.key)
        if problem is not None and server.location is not None:
            loc = server.location
            what = f"'{server.kind} {server.address} key {server.key}'"
            _record(state, ConfigError(loc.filename, loc.line, f"{what}: {problem}"))
    for spec in state.broadcasts:
        problem = _client_key_problem(state, spec.key)
        if problem is not None and spec.location is not None:
            loc = spec.location
            what = f"'broadcast {spec.address} key {spec.key}'"
            _record(state, ConfigError(loc.filename, loc.line, f"{what}: {problem}"))
    finish_broadcastclient(state)
    has_source = bool(
        state.servers
        or refclocks
        or state.local
        or "orphan" in state.tos_set
        or state.flags.bclient
    )
    if not has_source:
        for loc, written, guess in state.source_typos:
            _record(
                state,
                ConfigError(
                    loc.filename,
                    loc.line,
                    f"unknown directive {show(written)}; did you mean '{guess}'? With this line "
                    "ignored no time source is configured",
                ),
            )
    return Config(
        servers=tuple(state.servers),
        refclocks=refclocks,
        local=state.local,
        driftfile=state.files.get("driftfile"),
        logfile=state.files.get("logfile"),
        leapfile=state.files.get("leapfile"),
        leapsmear=state.leapsmear,
        pidfile=state.files.get("pidfile"),
        restricts=tuple(state.restricts),
        access=tuple(state.access),
        keys=state.files.get("keys"),
        trustedkeys=frozenset(state.trustedkeys),
        requestkey=state.requestkey,
        controlkey=state.controlkey,
        statsdir=state.files.get("statsdir"),
        statistics=frozenset(state.statistics),
        filegens=tuple(state.filegens.values()),
        tos=state.tos,
        tinker=state.tinker,
        discard=state.discard,
        mru=state.mru,
        ratelimit=state.ratelimit,
        flags=state.flags,
        interfaces=tuple(state.interfaces),
        listen=tuple(state.listen),
        clock=state.clock,
        makestep=state.makestep,
        broadcastdelay=state.broadcastdelay,
        broadcasts=tuple(state.broadcasts),
        logconfig=tuple(state.logconfig),
        metrics=state.metrics,
        webstatus=state.webstatus,
        workers=state.workers,
        nts=state.nts,
        nts_ca=state.nts_ca,
        user=state.user,
        fastpath=state.fastpath,
        seccomp=state.seccomp,
        rtcsync=state.rtcsync,
        includes=tuple(state.includes),
        file_locations=tuple(state.file_locations.items()),
    )
