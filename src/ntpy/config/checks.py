"""Checks of what a parsed config names on this machine: keys file, drift file, log file,
statistics directory, and the NTS certificate, key, cookie keys and CA paths
(:mod:`ntpy.config.ntschecks`).

Why one module: ``ntpy check-config``, ``ntpy serve`` and a SIGHUP reload all call
:func:`check_paths` (through ``load(..., check_paths=True)``), so the checker and the daemon
cannot disagree about a config. Severity follows what the daemon can do about it:

* errors — the config cannot mean what the admin wants: a keys file that cannot be read or
  parsed (``keys /dev/zero``), a ``trustedkey`` with no such key, a directory where a file
  belongs (``driftfile /var/lib/ntp``);
* warnings — the daemon runs but loses something: a drift or log file whose directory is
  missing or not writable (the frequency is not saved; logs go to stderr only), a statistics
  directory that cannot be written.

The pure string checks (:func:`filegen_file_problem`) are used by the parser as well, so the
statistics writer and the config checker share one rule.
"""

from __future__ import annotations

import os
import stat
import time

from .errors import ConfigError, ConfigWarning, SourceLocation, all_errors
from .leapfile import leap_file_problems
from .model import Config
from .ntschecks import check_nts

Problem = ConfigError | ConfigWarning


def filegen_file_problem(file: str) -> str | None:
    """Why a ``filegen NAME file F`` name is not used (None if it is): like ntpd, a ``..``
    component would leave the statistics directory, so the statistics name is used instead."""
    if ".." in file.split("/"):
        return "leaves the statistics directory"
    return None


def directory_problem(path: str) -> str | None:
    """Why files cannot be created in directory ``path`` (None if they can)."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def check_paths(config: Config) -> list[Problem]:
    """Every problem with the files and directories ``config`` names, in config order."""
    problems: list[Problem] = []
    problems += _check_keys(config)
    problems += _check_file(config, "driftfile", "the clock frequency will not be saved")
    problems += _check_file(config, "logfile", "log lines go to stderr only")
    problems += _check_statsdir(config)
    problems += _check_interfaces(config)
    problems += check_nts(config)
    problems += _check_user(config)
    problems += leap_file_problems(config, time.time_ns())
    return problems


def _check_user(config: Config) -> list[Problem]:
    """``user USER[:GROUP]``: both must exist here (the daemon drops to them)."""
    spec = config.user
    if spec is None:
        return []
    from .users import UserLookupError, resolve_user

    try:
        resolve_user(spec.user, spec.group)
    except UserLookupError as exc:
        loc = spec.location or SourceLocation("<config>", 0)
        return [_error(loc, f"user {spec}: {exc}")]
    return []


def _where(config: Config, directive: str) -> SourceLocation:
    return config.location_of(directive) or SourceLocation("<config>", 0)


def _error(loc: SourceLocation, message: str) -> ConfigError:
    return ConfigError(loc.filename, loc.line, message)


def _warning(loc: SourceLocation, message: str) -> ConfigWarning:
    return ConfigWarning(loc.filename, loc.line, message)


def _check_keys(config: Config) -> list[Problem]:
    from .keys import hashlib_name, load_keys

    wanted = sorted(config.trustedkeys)
    trusted_at = _where(config, "trustedkey")
    if config.keys is None:
        if wanted:
            return [_warning(trusted_at, "'trustedkey' without a 'keys FILE' line trusts no key")]
        return []
    loc = _where(config, "keys")
    try:
        keys = load_keys(config.keys)
    except ConfigError as exc:
        out: list[Problem] = []
        for error in all_errors(exc):
            if error.line == 0:  # the file itself: blame the 'keys' line
                out.append(_error(loc, f"keys {config.keys}: {error.message}"))
            else:
                out.append(error)
        return out
    problems: list[Problem] = []
    for server in config.servers:
        if server.key is not None and server.key not in keys and server.location is not None:
            problems.append(
                _error(
                    server.location,
                    f"'{server.kind} {server.address} key {server.key}': no key {server.key} "
                    f"in the keys file {config.keys}; add it there (e.g. '{server.key} SHA1 "
                    "<40 hex digits>') or name a key it has",
                )
            )
    missing = [k for k in wanted if k not in keys]
    if missing:
        shown = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        problems.append(
            _error(trusted_at, f"trustedkey {shown}: no such key in the keys file {config.keys}")
        )
    for keyid in wanted:
        key = keys.get(keyid)
        if key is not None and hashlib_name(key.algorithm) is None:
            where = key.location or loc
            problems.append(
                _error(where, f"key {keyid}: algorithm {key.algorithm} is not available here")
            )
    for name, wanted_id in (("requestkey", config.requestkey), ("controlkey", config.controlkey)):
        if wanted_id is not None and wanted_id not in keys:
            problems.append(_warning(_where(config, name), f"{name} {wanted_id}: no such key"))
    return problems


def _check_file(config: Config, directive: str, consequence: str) -> list[Problem]:
    path: str | None = getattr(config, directive)
    if not path:
        return []
    loc = _where(config, directive)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        return [_warning(loc, f"{directive} {path}: {exc.strerror or exc}; {consequence}")]
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            example = os.path.join(path, "ntp.drift" if directive == "driftfile" else "ntp.log")
            return [
                _error(loc, f"{directive} {path} is a directory; name a file in it, e.g. {example}")
            ]
        if not stat.S_ISREG(info.st_mode) and not (directive == "logfile" and _is_char(info)):
            return [_error(loc, f"{directive} {path} is not a regular file")]
    directory = os.path.dirname(os.path.abspath(path))
    problem = directory_problem(directory)
    if problem is not None:
        message = f"{directive} {path}: directory {directory} {problem}; {consequence}"
        return [_warning(loc, message)]
    if info is not None and not os.access(path, os.W_OK):
        return [_warning(loc, f"{directive} {path} is not writable; {consequence}")]
    return []


def _check_interfaces(config: Config) -> list[Problem]:
    """The daemon listens on single addresses or the wildcard; say so where it starts."""
    problems: list[Problem] = []
    for rule in config.interfaces:
        network = rule.network
        if rule.action == "listen" and network is not None and network.num_addresses != 1:
            loc = rule.location or SourceLocation("<config>", 0)
            problems.append(
                _warning(
                    loc,
                    f"'interface listen {network}' covers a network; ntpy listens on single "
                    "addresses or the wildcard, so it is ignored",
                )
            )
    return problems


def _is_char(info: os.stat_result) -> bool:
    """``logfile /dev/stderr`` or ``/dev/null`` are fine for a log."""
    return stat.S_ISCHR(info.st_mode)


PRODUCED_STATISTICS = ("loopstats", "peerstats")
"""The statistics files ntpy writes (``ntpy.metrics.statsfiles`` produces these only)."""


def _check_statsdir(config: Config) -> list[Problem]:
    if not config.statsdir:
        wanted = [n for n in PRODUCED_STATISTICS if n in config.statistics]
        if wanted:
            return [
                _warning(
                    _where(config, "statistics"),
                    f"statistics {', '.join(wanted)} enabled but no 'statsdir' is set: "
                    "no statistics files are written",
                )
            ]
        return []
    problem = directory_problem(config.statsdir)
    if problem is None:
        return []
    loc = _where(config, "statsdir")
    return [
        _warning(
            loc,
            f"statsdir {config.statsdir} {problem}: statistics files are not written "
            "until it can be",
        )
    ]
