"""Entry points: :func:`parse_text` and :func:`load`, including ``includefile`` handling.

The parser walks lines in order, dispatches each directive to its handler, and only at the
end builds the frozen :class:`~ntpy.config.model.Config` (refclock ``fudge`` lines may come
before their ``server`` line, so some merging must wait). Any problem becomes a
:class:`ConfigError` naming the file and line — of the include file where it occurred.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .directives import DIRECTIVES
from .directives.sources import finish_refclocks
from .directives.system import finish_tos
from .errors import ConfigError, ConfigWarning, SourceLocation
from .files import ReadError, read_text_file
from .lexer import iter_lines, tokenize_line
from .model import Config
from .state import Args, Line, State
from .values import BadValue, show

MAX_INCLUDE_DEPTH = 5
"""ntpd: "Include files may be nested to a depth of five" (``miscopt.html``)."""

INCLUDE_USAGE = "includefile PATH (relative paths are relative to the including file)"


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
    state = State(strict=strict)
    state.includes.append(filename)
    _parse_into(state, text, filename, base_dir, (_identity(filename),))
    config = _finish(state)
    return ParseResult(config=config, warnings=tuple(state.warnings))


def load(path: str, *, strict: bool = False) -> ParseResult:
    """Read and parse a configuration file. An unreadable file is a ConfigError at line 0."""
    try:
        text = read_text_file(path)
    except ReadError as exc:
        raise ConfigError(path, 0, f"cannot read configuration file: {exc}") from None
    return parse_text(text, path, strict=strict, base_dir=os.path.dirname(os.path.abspath(path)))


def _identity(path: str) -> str:
    if path.startswith("<") and path.endswith(">"):
        return path
    return os.path.realpath(path)


def _parse_into(
    state: State, text: str, filename: str, base_dir: str, stack: tuple[str, ...]
) -> None:
    for number, raw in iter_lines(text):
        try:
            tokens = tokenize_line(raw)
        except BadValue as exc:
            raise ConfigError(filename, number, exc.message) from None
        if not tokens:
            continue
        loc = SourceLocation(filename, number)
        line = Line(loc=loc, name=tokens[0].lower(), written=tokens[0], args=tokens[1:])
        if line.name == "includefile":
            _include(state, line, base_dir, stack)
            continue
        directive = DIRECTIVES.get(line.name)
        if directive is None:
            state.warn(loc, f"unknown directive {show(line.written)} (ignored)")
            continue
        try:
            directive.handler(state, line)
        except BadValue as exc:
            raise ConfigError(
                filename, number, f"{exc.message} (expected: {directive.usage})"
            ) from None


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
    try:
        text = read_text_file(full)
    except ReadError as exc:
        where = "" if full == path else f" ({show(full, limit=200)})"
        raise fail(f"cannot read include file {show(path)}{where}: {exc}") from None
    state.includes.append(full)
    _parse_into(state, text, full, os.path.dirname(full), (*stack, identity))


def _finish(state: State) -> Config:
    refclocks = finish_refclocks(state)
    finish_tos(state)
    keyed = [s for s in state.servers if s.key is not None]
    for server in keyed:
        if server.location is None:  # pragma: no cover - parser always sets it
            continue
        if "keys" not in state.files:
            state.warn(server.location, f"'key {server.key}' needs a 'keys FILE' line")
        elif server.key not in state.trustedkeys:
            state.warn(server.location, f"key {server.key} is not listed in 'trustedkey'")
    return Config(
        servers=tuple(state.servers),
        refclocks=refclocks,
        local=state.local,
        driftfile=state.files.get("driftfile"),
        logfile=state.files.get("logfile"),
        leapfile=state.files.get("leapfile"),
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
        logconfig=tuple(state.logconfig),
        metrics=state.metrics,
        webstatus=state.webstatus,
        workers=state.workers,
        includes=tuple(state.includes),
    )
