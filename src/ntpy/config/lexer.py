"""Split ``ntp.conf`` text into lines of whitespace-separated tokens.

Rules (ntpd's, plus leniency for files edited on other systems): ``#`` starts a comment
anywhere outside double quotes; ``"..."`` makes one token that may contain spaces or ``#``
(ntpd allows quoted file names); CRLF and lone CR end lines like LF; tabs and other ASCII
whitespace separate tokens. Line numbers count LF-separated lines, as editors do.
"""

from __future__ import annotations

from collections.abc import Iterator

from .values import BadValue

_SPACE = frozenset(" \t\f\v")


def split_lines(text: str) -> list[str]:
    """Split on LF, CRLF or CR only (``str.splitlines`` would also split on FF, VT, ...)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def tokenize_line(line: str) -> tuple[str, ...]:
    """Tokens of one line; raises :class:`BadValue` for an unterminated quote."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in _SPACE:
            i += 1
        elif ch == "#":
            break
        elif ch == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise BadValue("unterminated quoted string (missing closing '\"')")
            tokens.append(line[i + 1 : end])
            i = end + 1
        else:
            start = i
            while i < n and line[i] not in _SPACE and line[i] not in '#"':
                i += 1
            tokens.append(line[start:i])
    return tuple(tokens)


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line_number, line_text)`` for every line."""
    yield from enumerate(split_lines(text), start=1)
