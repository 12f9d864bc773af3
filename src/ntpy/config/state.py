"""The mutable builder the directive handlers fill in, and the types they share.

Handlers are small functions ``(state, line) -> None`` registered with a usage string; they
raise :class:`~ntpy.config.values.BadValue` and the dispatcher (``parser.py``) adds the
``file:line`` and "(expected: USAGE)". Only ``finish()`` builds the frozen ``Config``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ConfigWarning, SourceLocation
from .model import (
    AccessRule,
    BroadcastSpec,
    ClockMode,
    DiscardSpec,
    FastpathSpec,
    FilegenSpec,
    HttpEndpointSpec,
    InterfaceRule,
    LeapSmearSpec,
    ListenAddress,
    LocalSpec,
    MakestepSpec,
    MruSpec,
    NtsServerSpec,
    RateLimitSpec,
    RefclockSpec,
    RestrictRule,
    ServerSpec,
    SystemFlags,
    TinkerSpec,
    TosSpec,
    UserSpec,
)
from .values import BadValue, show


@dataclass(frozen=True, slots=True)
class Line:
    """One directive line: where it is, its name (lower-cased) and its arguments."""

    loc: SourceLocation
    name: str
    written: str
    args: tuple[str, ...]


class Args:
    """A cursor over a line's arguments."""

    __slots__ = ("_i", "_tokens")

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tokens
        self._i = 0

    def take(self) -> str | None:
        if self._i >= len(self._tokens):
            return None
        token = self._tokens[self._i]
        self._i += 1
        return token

    def peek(self) -> str | None:
        return self._tokens[self._i] if self._i < len(self._tokens) else None

    def empty(self) -> bool:
        return self._i >= len(self._tokens)

    def expect_end(self) -> None:
        """Reject trailing junk such as ``driftfile /a /b``."""
        extra = self.peek()
        if extra is not None:
            raise BadValue(f"unexpected {show(extra)} after the last argument")


@dataclass(slots=True)
class PendingFudge:
    """Fudge values for one refclock, accumulated until the config is complete."""

    values: dict[str, Any] = field(default_factory=dict)
    location: SourceLocation | None = None


@dataclass(slots=True)
class State:
    """Everything parsed so far."""

    strict: bool
    servers: list[ServerSpec] = field(default_factory=list)
    refclocks: dict[tuple[int, int], RefclockSpec] = field(default_factory=dict)
    fudges: dict[tuple[int, int], PendingFudge] = field(default_factory=dict)
    local: LocalSpec | None = None
    files: dict[str, str] = field(default_factory=dict)
    file_locations: dict[str, SourceLocation] = field(default_factory=dict)
    restricts: list[RestrictRule] = field(default_factory=list)
    access: list[AccessRule] = field(default_factory=list)
    trustedkeys: set[int] = field(default_factory=set)
    requestkey: int | None = None
    controlkey: int | None = None
    statistics: set[str] = field(default_factory=set)
    filegens: dict[str, FilegenSpec] = field(default_factory=dict)
    tos: TosSpec = field(default_factory=TosSpec)
    tos_set: dict[str, SourceLocation] = field(default_factory=dict)
    tinker: TinkerSpec = field(default_factory=TinkerSpec)
    discard: DiscardSpec = field(default_factory=DiscardSpec)
    mru: MruSpec = field(default_factory=MruSpec)
    ratelimit: RateLimitSpec = field(default_factory=RateLimitSpec)
    flags: SystemFlags = field(default_factory=SystemFlags)
    interfaces: list[InterfaceRule] = field(default_factory=list)
    listen: list[ListenAddress] = field(default_factory=list)
    clock: ClockMode = "auto"
    makestep: MakestepSpec | None = None
    leapsmear: LeapSmearSpec | None = None
    broadcastdelay: float | None = None
    broadcasts: list[BroadcastSpec] = field(default_factory=list)
    broadcastclient_at: SourceLocation | None = None
    logconfig: list[str] = field(default_factory=list)
    metrics: HttpEndpointSpec | None = None
    webstatus: HttpEndpointSpec | None = None
    workers: int | None = None
    nts: NtsServerSpec = field(default_factory=NtsServerSpec)
    nts_ca: str | None = None
    user: UserSpec | None = None
    fastpath: FastpathSpec | None = None
    seccomp: int = 0
    rtcsync: bool = True
    includes: list[str] = field(default_factory=list)
    warnings: list[ConfigWarning] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    """Every error so far: the parser reports them all at the end, not just the first."""
    failed: set[str] = field(default_factory=set)
    """Directives with a line in error (their cross-checks would only repeat it)."""
    lines_read: int = 0
    """Lines of the main file and every include read so far (bounded by the parser)."""
    source_typos: list[tuple[SourceLocation, str, str]] = field(default_factory=list)
    """Unknown directives that look like a source directive: (where, as written, guess)."""

    def warn(self, loc: SourceLocation, message: str) -> None:
        """Record a warning; in strict mode every warning is an error instead."""
        if self.strict:
            self.errors.append(ConfigError(loc.filename, loc.line, f"{message} [strict mode]"))
            return
        self.warnings.append(ConfigWarning(loc.filename, loc.line, message))

    def set_file(self, name: str, path: str, loc: SourceLocation) -> None:
        """Set a single-valued path directive; a repeat wins, as in ntpd, with a warning."""
        previous = self.file_locations.get(name)
        if previous is not None:
            self.warn(loc, f"'{name}' was already set at {previous}; this line replaces it")
        self.files[name] = path
        self.file_locations[name] = loc


Handler = Callable[[State, Line], None]


@dataclass(frozen=True, slots=True)
class Directive:
    """A handler plus the one-line usage shown in every error about it, and its manual:
    ``ntpy.conf(5)`` is generated from these entries (``ntpy.cli.manpage``), so the page
    documents exactly what the parser accepts; a test fails on an entry without ``doc``."""

    handler: Handler
    usage: str
    doc: str = ""
    """What the directive does, for the manual (plain text; paragraphs split by a blank
    line)."""
    options: tuple[tuple[str, str], ...] = ()
    """``(option, what it does and its default)`` for every option keyword it takes."""
