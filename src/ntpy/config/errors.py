"""The one error type and the one warning type of the configuration parser.

Every problem the parser finds is reported against a ``file:line`` so the admin can jump
straight to it; the daemon and ``ntpy check-config`` print ``str(error)`` unchanged.
Following h11's rule, parsing a config either succeeds or raises :class:`ConfigError` —
never ``ValueError``, ``KeyError`` or ``OSError`` — so callers need exactly one ``except``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a directive was written; kept on model objects for later runtime messages."""

    filename: str
    line: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}"


class ConfigError(Exception):
    """A configuration that cannot be used, with the ``file:line`` that caused it.

    ``line`` is 1-based; 0 means the problem concerns the whole file (e.g. unreadable).
    """

    filename: str
    line: int
    message: str

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.message}"

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, int, str]]:
        # Exceptions pickle through ``args``; ours has three, so say so explicitly.
        return (type(self), (self.filename, self.line, self.message))


class ConfigErrors(ConfigError):
    """Every error found in one run, so the admin fixes them all at once, not one per run.

    It is a :class:`ConfigError` (``filename``/``line``/``message`` are the first error's), so
    callers still need one ``except``; ``str()`` gives one ``file:line: message`` per line.
    """

    errors: tuple[ConfigError, ...]

    def __init__(self, errors: list[ConfigError] | tuple[ConfigError, ...]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = errors[0]
        super().__init__(first.filename, first.line, first.message)
        self.errors = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)

    def __reduce__(self) -> tuple[type[ConfigErrors], tuple[tuple[ConfigError, ...]]]:  # type: ignore[override]
        return (type(self), (self.errors,))


def all_errors(error: ConfigError) -> tuple[ConfigError, ...]:
    """The individual errors inside ``error`` (itself, unless it is a :class:`ConfigErrors`)."""
    return error.errors if isinstance(error, ConfigErrors) else (error,)


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something the parser accepted but ignored or adjusted; shown to the admin."""

    filename: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.message}"
