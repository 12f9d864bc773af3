"""Which configuration ``ntpy serve`` runs: ``--config FILE``, else ``/etc/ntp.conf`` when it
exists (as ntpd does), else the built-in default.

Why the default file: admins follow the ntpd guides, edit ``/etc/ntp.conf`` and run the
daemon; ignoring that file served an undisciplined local clock to their LAN. The file read
is always named in the start-up log, so nobody has to guess.

``NTPY_DEFAULT_CONFIG`` replaces the default path. The test suite points it at a path that
does not exist, so a real ``/etc/ntp.conf`` on the machine never leaks into a test daemon.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ntpy.config import Config, ConfigError, all_errors, default_config, load

DEFAULT_CONFIG_PATH = "/etc/ntp.conf"
DEFAULT_CONFIG_ENV = "NTPY_DEFAULT_CONFIG"


@dataclass(frozen=True)
class ChosenConfig:
    """The config to run, the file it came from (None: built-in) and how to describe it."""

    config: Config
    path: str | None
    origin: str


def default_config_path() -> str:
    """``$NTPY_DEFAULT_CONFIG`` if set, else ``/etc/ntp.conf``."""
    return os.environ.get(DEFAULT_CONFIG_ENV) or DEFAULT_CONFIG_PATH


def choose_config(explicit: str | None, *, strict: bool) -> ChosenConfig | None:
    """Load the config ``ntpy serve`` should run; None (after printing every error, with
    ``file:line``) when it is not usable. Warnings are printed and do not stop the start."""
    path = explicit
    if not path:
        candidate = default_config_path()
        if not os.path.lexists(candidate):
            return ChosenConfig(default_config(), None, f"built-in default config (no {candidate})")
        path = candidate
    try:
        result = load(path, strict=strict, check_paths=True)
    except ConfigError as exc:
        for error in all_errors(exc):
            print(f"ntpy: {error}", file=sys.stderr)
        hint = "" if explicit else " (read by default; use --config FILE for another one)"
        print(f"ntpy: not starting: {path} has errors{hint}", file=sys.stderr)
        return None
    for warning in result.warnings:
        print(f"ntpy: warning: {warning}", file=sys.stderr)
    return ChosenConfig(result.config, path, path)
