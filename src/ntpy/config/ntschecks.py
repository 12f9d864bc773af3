"""Checks of the NTS setup a parsed config names on this machine, part of
:func:`ntpy.config.checks.check_paths` (so ``check-config``, ``serve`` and a reload agree).

Server (``nts enable``):

* errors -- ``nts cert`` without ``nts key`` (or the reverse); a certificate or key that is
  missing, unreadable, expired, not yet valid, or not a matching pair
  (:mod:`ntpy.config.ntscert`, which the daemon's TLS setup uses too); an NTP-only host (no
  cert and key: it serves with the key-exchange host's cookie keys) without ``nts rotate 0``;
  a cookie key ring that is there but unreadable or corrupt;
* warning -- an NTP-only host whose ring file is not there yet: it may be deployed after the
  config, so ``check-config`` only warns; ``serve`` still refuses to start without it.

Client: a ``ca`` path (``server HOST nts ca F`` or ``nts ca F``) that does not exist is an
error (``noval`` is warned about by the parser already: it is about the file, not this
machine).
"""

from __future__ import annotations

import os

from ntpy.core.ntscookie import CookieKeys, CookieKeysError

from .errors import ConfigError, ConfigWarning, SourceLocation
from .model import Config, NtsServerSpec
from .ntscert import CertificateError, check_certificate

Problem = ConfigError | ConfigWarning

FILE_NAME = "ntpy-nts-cookies"
DEFAULT_DIR = "/var/lib/ntpy"


def ring_path(spec: NtsServerSpec, driftfile: str | None) -> str:
    """The cookie key ring file: ``nts cookie DIR`` (an existing directory, or a path ending
    in ``/``) means ``DIR/ntpy-nts-cookies``; any other path is the file itself. Default: that
    file in the drift file's directory, else in ``/var/lib/ntpy``."""
    where = spec.cookie
    if where is None:
        base = os.path.dirname(driftfile) if driftfile else DEFAULT_DIR
        return os.path.join(base or ".", FILE_NAME)
    if where.endswith("/") or os.path.isdir(where):
        return os.path.join(where, FILE_NAME)
    return where


def check_nts(config: Config) -> list[Problem]:
    """Every problem with the NTS server and client setup, server first."""
    return _check_server(config) + _check_client(config)


def _at(config: Config, sub: str) -> SourceLocation:
    return config.location_of(f"nts {sub}") or config.nts.location or SourceLocation("<config>", 0)


def _error(loc: SourceLocation, message: str) -> ConfigError:
    return ConfigError(loc.filename, loc.line, message)


def _check_server(config: Config) -> list[Problem]:
    spec = config.nts
    if not spec.enabled:
        return []
    if spec.cert and spec.key:
        try:
            check_certificate(spec.cert, spec.key)
        except CertificateError as exc:
            problems: list[Problem] = [_error(_at(config, exc.which), str(exc))]
        else:
            problems = []
        # a KE host with rotate 0 only reads the ring too (a shared one)
        return problems + (_check_ring(config) if spec.rotate_s == 0 else [])
    if spec.cert or spec.key:
        given, missing = ("cert", "key") if spec.cert else ("key", "cert")
        return [
            _error(
                _at(config, given),
                f"'nts {given}' without 'nts {missing} FILE': the key exchange needs both; "
                f"add 'nts {missing} FILE', or drop 'nts {given}' for an NTP-only host",
            )
        ]
    if spec.rotate_s:
        return [
            _error(
                _at(config, "enable"),
                "'nts enable' without 'nts cert'/'nts key' serves NTS only with the "
                "key-exchange host's cookie keys: add 'nts rotate 0' and 'nts cookie DIR' "
                "(the keys copied or shared from that host), or add 'nts cert FILE' and "
                "'nts key FILE' to run the key exchange here",
            )
        ]
    return _check_ring(config)


def _check_ring(config: Config) -> list[Problem]:
    """``rotate 0`` (an NTP-only host, or a KE host sharing a ring): the ring it only reads."""
    path = ring_path(config.nts, config.driftfile)
    loc = _at(config, "cookie")
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
    except FileNotFoundError:
        return [
            ConfigWarning(
                loc.filename,
                loc.line,
                f"no NTS cookie keys at {path} yet: 'nts rotate 0' only reads them, so "
                "'ntpy serve' refuses to start until the file is copied from the key-exchange "
                "host (or set 'nts cookie' to where it is)",
            )
        ]
    except OSError as exc:
        return [_error(loc, f"NTS cookie keys {path}: cannot read it ({exc.strerror or exc})")]
    try:
        CookieKeys.from_bytes(data)
    except CookieKeysError as exc:
        return [
            _error(loc, f"NTS cookie keys {path}: {exc}; copy it again from the key-exchange host")
        ]
    return []


def _check_client(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    if config.nts_ca is not None and not os.path.exists(config.nts_ca):
        problems.append(
            _error(
                _at(config, "ca"),
                f"nts ca {config.nts_ca}: no such file or directory; name the CA bundle "
                "(PEM) or directory NTS clients verify servers with, or drop the line to use "
                "the system's",
            )
        )
    for server in config.servers:
        if not server.nts:
            continue
        loc = server.location or SourceLocation("<config>", 0)
        name = f"{server.kind} {server.address}"
        if server.ca is not None and not os.path.exists(server.ca):
            problems.append(
                _error(
                    loc,
                    f"'{name} nts ca {server.ca}': no such file or directory; name the CA "
                    "bundle (PEM) or directory that signed the server's certificate",
                )
            )
    return problems
