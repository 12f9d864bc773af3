"""``ntpy check-config``: validate an ntp.conf without starting the daemon.

Exit status 0 when the file is usable (warnings are printed to stderr but do not fail,
unless ``strict``), 2 when it is not. Output is ``file:line: message`` so editors and CI
logs can jump to the offending line; every error is listed, not only the first.

It runs exactly the validation ``ntpy serve`` runs at start and on reload (the parser plus
``ntpy.config.checks``: keys file, drift file, log and statistics paths), so a config that
passes here starts, and one that warns here warns there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from ntpy.config import ConfigError, all_errors, load
from ntpy.config.model import Config

EXIT_OK = 0
EXIT_INVALID = 2


def _say(stream: TextIO, text: str) -> None:
    # Config text may hold characters the terminal's encoding cannot show; never crash on them.
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, errors="backslashreplace").decode(encoding) + "\n")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary(config: Config, warnings: int) -> str:
    """One line describing what the configuration sets up."""
    kinds = [s.kind for s in config.servers]
    detail = ", ".join(
        _plural(kinds.count(kind), kind) for kind in ("server", "pool", "peer") if kind in kinds
    )
    parts = [
        f"{len(config.servers)} servers" + (f" ({detail})" if detail else ""),
        _plural(len(config.refclocks), "refclock"),
        _plural(len(config.restricts), "restrict rule"),
        _plural(len(config.access), "allow/deny rule"),
        _plural(warnings, "warning"),
    ]
    if config.local is not None:
        parts.insert(2, f"local stratum {config.local.stratum}")
    return "OK: " + ", ".join(parts)


def run(path: str, strict: bool) -> int:
    """Check ``path``; print warnings/errors to stderr and a summary to stdout."""
    try:
        result = load(path, strict=strict, check_paths=True)
    except ConfigError as exc:
        errors = all_errors(exc)
        for error in errors:
            _say(sys.stderr, str(error))
        _say(sys.stderr, f"{_plural(len(errors), 'error')}: {path} is not usable")
        return EXIT_INVALID
    for warning in result.warnings:
        _say(sys.stderr, f"{warning} (warning)")
    _say(sys.stdout, summary(result.config, len(result.warnings)))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ntpy check-config", description="Validate an ntp.conf for ntpy."
    )
    parser.add_argument("path", help="configuration file to check")
    parser.add_argument(
        "--strict", action="store_true", help="treat warnings (unknown directives...) as errors"
    )
    args = parser.parse_args(argv)
    return run(args.path, args.strict)


if __name__ == "__main__":
    raise SystemExit(main())
