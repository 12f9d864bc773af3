"""``ntpy doctor``: one command that says what stands between this server and a good public
or LAN time service, each finding with its fix. Exit 0 all ok, 1 warnings, 2 errors.

This module is the thin I/O layer: it loads the config the way ``ntpy serve`` does
(``--config``, else ``NTPY_DEFAULT_CONFIG`` or ``/etc/ntp.conf``, else the built-in one)
with check-config's path checks, asks the running daemon over the control socket (and reads
its ``/proc`` status by the pid the kernel gives for that socket), reads the leap file and
the NTS certificate, asks ``runas`` whether the daemon's user can write its files, and sends
one real NTP query to each configured listen address -- only addresses of this host, never
the network. Every judgement is in ``doctor_checks`` (pure functions of those facts).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ntpy.cli.doctor_checks import (
    DEFAULT_LEAPFILE,
    Finding,
    PortProbe,
    check_config_problems,
    check_daemon,
    check_driftfile,
    check_leapfile,
    check_nts_certificate,
    check_ports,
    check_restrict_default,
    check_upstreams,
    check_user,
    exit_status,
)
from ntpy.cli.serve_config import default_config_path
from ntpy.config import Config, ConfigError, all_errors, default_config, load
from ntpy.config.errors import ConfigWarning
from ntpy.config.users import Identity, UserLookupError, resolve_user
from ntpy.daemon.control_paths import SOCKET_HELP
from ntpy.daemon.udp import ListenAddress

PROBE_TIMEOUT_S = 1.0
PROBE_TRIES = 2


def add_doctor_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = subparsers.add_parser(
        "doctor",
        help="what stands between this server and a good time service, each with its fix: "
        "exit 0 all ok, 1 warnings, 2 errors",
    )
    d.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="the ntp.conf the daemon runs (default: as 'ntpy serve': /etc/ntp.conf if it "
        "exists, else the built-in config)",
    )
    d.add_argument("--socket", "-s", metavar="PATH", help=SOCKET_HELP)
    d.add_argument("--json", action="store_true", help="print the findings as JSON")
    d.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long for the daemon's control socket (default 2)",
    )


def run(args: argparse.Namespace) -> int:
    path, config, findings = _config(args.config)
    if config is not None:
        findings += examine(config, path, args.socket, args.timeout)
    code = exit_status(findings)
    if args.json:
        doc = {
            "config": path,
            "exit": code,
            "findings": [f.to_json() for f in findings],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render(path, findings) + "\n")
    return code


def render(path: str | None, findings: Sequence[Finding]) -> str:
    """The text report: one line per finding, its fix indented below, then the totals."""
    lines = [f"ntpy doctor: {path or 'built-in default config'}"]
    for f in findings:
        lines.append(
            f"{f.severity.upper() if f.severity != 'ok' else 'ok':8} {f.check:10} {f.message}"
        )
        if f.fix and f.severity != "ok":
            lines.append(f"{'':19}fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("ok", "warning", "error")}
    lines.append(f"{counts['ok']} ok, {counts['warning']} warning(s), {counts['error']} error(s)")
    return "\n".join(lines)


def _config(explicit: str | None) -> tuple[str | None, Config | None, list[Finding]]:
    path = explicit
    if not path:
        candidate = default_config_path()
        if not os.path.lexists(candidate):
            return None, default_config(), check_config_problems(None, [], [])
        path = candidate
    try:
        result = load(path, strict=False, check_paths=True)
    except ConfigError as exc:
        return path, None, check_config_problems(path, all_errors(exc), [])
    warnings: list[ConfigWarning] = list(result.warnings)
    return path, result.config, check_config_problems(path, [], warnings)


def examine(
    config: Config, config_path: str | None, socket_path: str | None, timeout: float
) -> list[Finding]:
    """Gather the facts and run every check, in the order an admin fixes things."""
    from ntpy.daemon.control import ControlError, query_control_pid

    status: dict[str, Any] | None = None
    error: str | None = None
    pid: int | None = None
    try:
        status, pid = query_control_pid(socket_path, "status", timeout=timeout)
    except ControlError as exc:
        error = str(exc).splitlines()[0]
    uid, user = _process_user(pid)
    findings = [check_upstreams(config), check_restrict_default(config)]
    findings += check_daemon(status, error)
    findings.append(check_user(pid, uid, user, config))
    findings.append(_drift(config, config_path, uid))
    findings.append(_leap(config))
    findings.append(_nts(config))
    findings += check_ports(probe_listen_addresses(config))
    return findings


def _process_user(pid: int | None) -> tuple[int | None, str | None]:
    """The effective uid of ``pid`` from ``/proc`` and its name."""
    if pid is None:
        return None, None
    from ntpy.daemon.privdrop import read_status

    try:
        uid = int(read_status(pid)["Uid"].split()[1])
    except (OSError, KeyError, IndexError, ValueError):
        return None, None
    import pwd

    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, str(uid)


def _drift(config: Config, config_path: str | None, daemon_uid: int | None) -> Finding:
    """The drift file as this process sees it (check-config's rule), then as the user the
    daemon runs as, or drops to (``runas``'s own check: a forked child that drops)."""
    from ntpy.config.checks import directory_problem

    path = config.driftfile
    if not path:
        return check_driftfile(config, None, None, [])
    directory = os.path.dirname(os.path.abspath(path))
    problem = directory_problem(directory)
    if problem is not None:
        problem = f"directory {directory} {problem}"
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    ident = _identity(config, daemon_uid)
    if problem is not None or ident is None:
        return check_driftfile(config, problem, ident.user if ident else None, [])
    if os.geteuid() != 0:
        if ident.uid != os.geteuid():
            return Finding(
                "driftfile",
                "warning",
                f"driftfile {path}: not checked as {ident.user} (only root can act as it)",
                "run 'ntpy doctor' as root",
            )
        return check_driftfile(config, None, ident.user, [])
    from ntpy.daemon.privdrop import PrivilegeError
    from ntpy.daemon.runas import failing_needs, path_needs

    needs = [n for n in path_needs(config, config_path) if n.what.startswith("drift file")]
    try:
        failing = failing_needs(ident, needs)
    except PrivilegeError as exc:
        return Finding("driftfile", "warning", f"driftfile {path}: not checked: {exc}")
    return check_driftfile(config, None, ident.user, [n.path for n in failing])


def _identity(config: Config, daemon_uid: int | None) -> Identity | None:
    """Who writes the drift file: the running daemon's user, else the config's ``user``;
    None for root (root writes any existing directory)."""
    try:
        if daemon_uid is not None:
            return None if daemon_uid == 0 else resolve_user(str(daemon_uid))
        if config.user is not None:
            return resolve_user(config.user.user, config.user.group)
    except UserLookupError:
        return None  # an unknown user is check-config's error already
    return None


def _leap(config: Config) -> Finding:
    from ntpy.config.leapfile import load_leap_file
    from ntpy.core.leapfile import LeapFileError, LeapTable

    table: LeapTable | LeapFileError | None = None
    if config.leapfile:
        try:
            table = load_leap_file(config.leapfile)
        except LeapFileError as exc:
            table = exc
    return check_leapfile(config, table, time.time_ns(), os.path.exists(DEFAULT_LEAPFILE))


def _nts(config: Config) -> Finding:
    now = datetime.now(UTC)
    if not config.nts.enabled or not config.nts.cert or not config.nts.key:
        return check_nts_certificate(config, None, "nts cert/key: not configured", now)
    from ntpy.config.ntscert import CertificateError, check_certificate

    try:
        leaf = check_certificate(config.nts.cert, config.nts.key, now)
    except CertificateError as exc:
        return check_nts_certificate(config, None, str(exc), now)
    return check_nts_certificate(config, leaf.not_valid_after_utc, None, now)


# --- port 123 -------------------------------------------------------------------------


def probe_listen_addresses(config: Config) -> list[PortProbe]:
    """Ask each address the daemon would listen on (the wildcard at loopback). An address
    this host does not have is reported, never queried: no packet leaves the machine."""
    from ntpy.daemon.assemble import StartupError, listen_addresses

    try:
        required, optional = listen_addresses(config, [])
    except StartupError as exc:  # every address ignored
        return [PortProbe("*", 123, None, "no answer", str(exc))]
    probes = [_probe(a) for a in required]
    for a in optional:  # the IPv6 wildcard: only where this host has IPv6 loopback
        if _has_address(ipaddress.ip_address("::1")):
            probes.append(_probe(a))
    return probes


def _probe(addr: ListenAddress) -> PortProbe:
    from ntpy.cli.query import NoAnswer, exchange
    from ntpy.core.exchange import KissOfDeath, ReplyRejected

    ip = ipaddress.ip_address(addr.host)
    asked = ip
    if ip.is_unspecified:
        asked = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    elif not _has_address(ip):
        return PortProbe(addr.host, addr.port, None, "not local")
    family = socket.AF_INET if asked.version == 4 else socket.AF_INET6
    try:
        sample = exchange((str(asked), addr.port), family, 4, PROBE_TIMEOUT_S, PROBE_TRIES)
    except KissOfDeath as exc:
        return PortProbe(addr.host, addr.port, str(asked), "kod", exc.detail)
    except (NoAnswer, ReplyRejected, OSError) as exc:
        return PortProbe(addr.host, addr.port, str(asked), "no answer", str(exc))
    return PortProbe(addr.host, addr.port, str(asked), "answered", f"stratum {sample.stratum}")


def _has_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Is ``ip`` this host's: loopback, or on one of its interfaces."""
    if ip.is_loopback and ip.version == 4:
        return True
    from ntpy.daemon.ifaddrs import interface_addresses

    try:
        return any(a == ip for _, a in interface_addresses())
    except OSError:
        return ip.is_loopback
