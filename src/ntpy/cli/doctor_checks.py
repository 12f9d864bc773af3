"""``ntpy doctor``'s checks: what stands between this server and a good public or LAN time
service, each finding with its fix.

Every check here is a pure function of the parsed ``Config`` and of facts the I/O layer
(``cli/doctor.py``) observed -- the daemon's status reply, its uid from ``/proc``, what a
query to each listen address brought back, the leap file's table, the certificate's expiry
-- so each can be tested with plain values, and the words are in one place. Severity is
about the service, not about the config file: *error* is something the pool monitor or a
client would notice now (no answer, no sync, offset beyond 75 ms, a file the daemon needs
and cannot write, an expired leap file or certificate); *warning* is lost robustness or
safety (too few upstreams, no rate limiting, running as root, a certificate that expires
within 30 days).
"""

from __future__ import annotations

import os.path
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ntpy.config.errors import ConfigError, ConfigWarning
from ntpy.config.leapfile import corrupt_warning, expiry_warning
from ntpy.config.model import Config
from ntpy.core.leapfile import FRESH_COPY_HINT, LeapFileError, LeapTable

Severity = Literal["ok", "warning", "error"]

MIN_UPSTREAMS = 4
"""The pool's advice: 4 or more, so one falseticker is outvoted and one loss leaves three."""
MAX_OFFSET_NS = 75_000_000
"""The NTP pool monitor scores a server down when its offset is beyond 75 ms."""
CERT_WARN_DAYS = 30
LEAP_WARN_DAYS = 28
DEFAULT_LEAPFILE = "/usr/share/zoneinfo/leap-seconds.list"
GOOD_RESTRICT = "restrict default kod limited nomodify notrap nopeer noquery"
LOCAL_DRIVER = 1
"""ntpd's LOCAL driver (127.127.1.x): the undisciplined local clock, not a time source."""
NETWORK_KINDS = frozenset({"server", "pool", "peer"})
EXIT_FOR = {"ok": 0, "warning": 1, "error": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor looked at: what it found and, unless ok, what to do."""

    check: str
    severity: Severity
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PortProbe:
    """What an NTP query to one configured listen address brought back."""

    address: str
    """As configured (``0.0.0.0`` for the wildcard)."""
    port: int
    asked: str | None
    """The address actually asked (loopback for a wildcard); None: not asked."""
    outcome: Literal["answered", "kod", "no answer", "not local"]
    detail: str = ""


def exit_status(findings: Sequence[Finding]) -> int:
    """0 all ok, 1 warnings, 2 errors."""
    return max((EXIT_FOR[f.severity] for f in findings), default=0)


# --- the config file ------------------------------------------------------------------


COVERED_ELSEWHERE = ("driftfile ", "leapfile ", "nts cert ", "nts key ")
"""check-config warnings that a doctor check below reports with more context."""


def check_config_problems(
    path: str | None, errors: Sequence[ConfigError], warnings: Sequence[ConfigWarning]
) -> list[Finding]:
    """check-config's errors (each an error) and its warnings not covered by another check."""
    name = path or "the built-in default config"
    again = f"edit that line; 'ntpy check-config {path}' checks again" if path else ""
    out = [Finding("config", "error", str(e), again) for e in errors]
    out += [
        Finding("config", "warning", str(w), again)
        for w in warnings
        if not w.message.startswith(COVERED_ELSEWHERE)
    ]
    if not out:
        out.append(Finding("config", "ok", f"{name} passes ntpy check-config"))
    return out


# --- upstreams and access -------------------------------------------------------------


def check_upstreams(config: Config) -> Finding:
    """Fewer than 4 upstream sources: a pool line counts as its ``maxsources``."""
    count = 0
    parts: list[str] = []
    for s in config.servers:
        if s.noselect:
            continue
        n = s.maxsources if s.kind == "pool" else 1
        count += n
        parts.append(f"pool {s.address} (maxsources {n})" if s.kind == "pool" else s.address)
    refclocks = [r for r in config.refclocks if not r.noselect and r.driver != LOCAL_DRIVER]
    count += len(refclocks)
    parts += [f"refclock {r.driver}.{r.unit}" for r in refclocks]
    listed = ", ".join(parts) if parts else "none; the local clock does not count"
    if count >= MIN_UPSTREAMS:
        return Finding("upstreams", "ok", f"{count} upstream sources: {listed}")
    why = {
        0: "nothing disciplines the clock; clients get whatever it drifts to",
        1: "a single source that goes wrong takes this server with it",
        2: "when two sources disagree nobody can tell which is wrong",
        3: "losing one leaves two that cannot outvote a falseticker",
    }[count]
    return Finding(
        "upstreams",
        "error" if count == 0 else "warning",
        f"{count} upstream source{'' if count == 1 else 's'} ({listed}): {why}",
        f"use at least {MIN_UPSTREAMS}: 'pool pool.ntp.org iburst' (counts as its maxsources, "
        "4 by default) or more 'server HOST iburst' lines",
    )


def check_restrict_default(config: Config) -> Finding:
    """The default restriction must carry ``kod`` and ``limited`` for IPv4 and IPv6."""
    missing: dict[str, list[str]] = {}
    for family, label in ((4, "IPv4"), (6, "IPv6")):
        rule = None
        for r in config.restricts:
            if r.target == "default" and r.family in (None, family):
                rule = r  # the last default line for this family wins, as in ntpd
        flags = rule.flags if rule is not None else frozenset()
        if "ignore" in flags:
            continue  # nobody is served at all there: nothing to limit
        lacking = [f for f in ("kod", "limited") if f not in flags]
        if lacking:
            missing[label] = lacking
    if not missing:
        return Finding("restrict", "ok", "restrict default has kod and limited")
    said = "; ".join(f"{fam}: no {' and no '.join(flags)}" for fam, flags in missing.items())
    return Finding(
        "restrict",
        "warning",
        f"restrict default {said}: a client polling too fast is answered at full rate "
        "(no 'limited') or dropped without being told to slow down (no 'kod')",
        f"put '{GOOD_RESTRICT}' (and 'restrict -6 default ...' if IPv6 has its own line) "
        "before the rules for your own hosts",
    )


# --- the running daemon ---------------------------------------------------------------


def _ms(ns: object) -> str:
    return f"{ns / 1e6:+.3f} ms" if isinstance(ns, int | float) else "?"


def check_daemon(status: Mapping[str, Any] | None, error: str | None) -> list[Finding]:
    """What the pool monitor would score down, from the daemon's ``status`` reply:
    unsynchronised (it serves stratum 16, leap 3), an offset beyond 75 ms, and upstreams
    that do not answer, are unsynchronised (stratum 0) or are off by more than 75 ms."""
    if status is None:
        return [
            Finding(
                "daemon",
                "error",
                f"cannot ask the running daemon: {error}; nothing is served, and the checks "
                "of its offsets and its user fall back to the config",
                "start it: 'ntpy serve --config FILE -u ntpy' (or 'systemctl start ntpy'); "
                "for a daemon with its own --control-socket, pass doctor --socket PATH",
            )
        ]
    from ntpy.cli.views import is_synced, sync_reason, sync_target

    out: list[Finding] = []
    offset = status.get("offset_ns")
    if not is_synced(status):
        why = sync_reason(status) or "no source selected"
        out.append(
            Finding(
                "offset",
                "error",
                f"not synchronised ({why}): it serves stratum 16 with leap 3, which clients "
                "ignore and the pool monitor scores as no time",
                "'ntpy peers' shows each upstream's state; fix the upstreams named below, "
                "then wait for a few polls",
            )
        )
    elif isinstance(offset, int) and abs(offset) > MAX_OFFSET_NS:
        out.append(
            Finding(
                "offset",
                "error",
                f"the clock is {_ms(offset)} from its sources, beyond the pool monitor's "
                f"{MAX_OFFSET_NS // 1_000_000} ms",
                "let it converge (a large offset at start is stepped with 'ntpy serve -g' or "
                "'tinker step'); if it stays, a source is wrong: see 'ntpy peers'",
            )
        )
    elif sync_target(status) == "local net":
        out.append(
            Finding(
                "offset",
                "warning",
                f"it follows its own local clock (stratum {status.get('stratum')}): nothing "
                "disciplines the time it serves",
                "give it upstreams that answer; the local clock is only a fallback "
                "('tos orphan' for a LAN that must keep one time when cut off)",
            )
        )
    else:
        out.append(
            Finding(
                "offset",
                "ok",
                f"synchronised to {status.get('system_peer') or status.get('refid')} at "
                f"stratum {status.get('stratum')}, offset {_ms(offset)}",
            )
        )
    sources = status.get("sources")
    for src in sources if isinstance(sources, list) else []:
        if isinstance(src, Mapping) and src.get("kind") in NETWORK_KINDS:
            finding = _source_finding(src)
            if finding is not None:
                out.append(finding)
    return out


def _source_finding(src: Mapping[str, Any]) -> Finding | None:
    name = src.get("name") or src.get("address")
    if src.get("address") and src.get("address") != name:
        name = f"{name} ({src.get('address')})"
    state = src.get("state")
    replace = "replace it with another server, or use a 'pool' line that replaces it itself"
    if src.get("reach") == 0 and state != "init":
        problem = "does not answer (reach 0)"
    elif state == "kod":
        problem = "refused us with a kiss-o'-death and is no longer polled"
    elif src.get("stratum") in (0, 16) or state == "unsynchronized":
        problem = f"is unsynchronised (stratum {src.get('stratum')})"
    elif isinstance(src.get("offset_ns"), int) and abs(src["offset_ns"]) > MAX_OFFSET_NS:
        problem = f"is {_ms(src['offset_ns'])} away, beyond 75 ms"
    elif state == "falseticker":
        problem = "is a falseticker (outside the majority's interval)"
    else:
        return None
    return Finding("upstream", "warning", f"upstream {name} {problem}", replace)


def check_user(
    daemon_pid: int | None, daemon_uid: int | None, daemon_user: str | None, config: Config
) -> Finding:
    """Running as root without ``-u``/``user``: from the daemon's ``/proc`` status when it
    runs, else from the config."""
    fix = (
        "start it with '-u ntpy' or put 'user ntpy' in the config: after binding it keeps "
        "only CAP_SYS_TIME (create the account: useradd --system ntpy)"
    )
    if daemon_uid is not None:
        if daemon_uid == 0:
            return Finding(
                "user",
                "warning",
                f"the daemon (pid {daemon_pid}) runs as root: a flaw in packet handling "
                "would be root's",
                fix,
            )
        return Finding("user", "ok", f"the daemon (pid {daemon_pid}) runs as {daemon_user}")
    if config.user is None:
        return Finding(
            "user",
            "warning",
            "the config has no 'user' line: started without -u, it stays root",
            fix,
        )
    return Finding("user", "ok", f"the config drops root to {config.user}")


# --- files ----------------------------------------------------------------------------


def check_driftfile(
    config: Config, problem: str | None, user: str | None, user_cannot: Sequence[str]
) -> Finding:
    """The drift file must be writable by this process's kind of owner (``problem``: why
    not, from ``config.checks``) and by the ``user`` the daemon drops to (``user_cannot``:
    the paths ``runas.failing_needs`` found that user cannot write)."""
    path = config.driftfile
    if not path:
        return Finding(
            "driftfile",
            "warning",
            "no driftfile: the frequency is learned again at every start, and the clock "
            "serves worse time for the first minutes to hours",
            "driftfile /var/lib/ntpy/ntp.drift (a directory the daemon's user can write)",
        )
    directory = os.path.dirname(os.path.abspath(path))
    if problem is not None:
        return Finding(
            "driftfile",
            "error",
            f"driftfile {path}: {problem}; the frequency and last-good time are not saved",
            f"mkdir -p {directory} && chown {user or 'root'} {directory}, or name a "
            "driftfile in a directory the daemon's user can write",
        )
    if user_cannot:
        return Finding(
            "driftfile",
            "error",
            f"{user} cannot write {', '.join(user_cannot)} (the drift file {path} is "
            "replaced there hourly and at exit); the daemon will refuse to start as it",
            f"chown {user} {' '.join(user_cannot)}",
        )
    who = f" by {user}" if user else ""
    return Finding("driftfile", "ok", f"driftfile {path} is writable{who}")


def check_leapfile(
    config: Config,
    table: LeapTable | LeapFileError | None,
    now_unix_ns: int,
    default_present: bool,
) -> Finding:
    """The leap file: missing from the config, unreadable or corrupt, expired, or expiring."""
    path = config.leapfile
    if not path:
        where = "it is on this host" if default_present else "install tzdata for it"
        return Finding(
            "leapfile",
            "warning",
            "no leapfile: a leap second is known only if the upstreams announce it",
            f"leapfile {DEFAULT_LEAPFILE} ({where})",
        )
    if isinstance(table, LeapFileError) or table is None:
        error = table if table is not None else LeapFileError("not read")
        return Finding(
            "leapfile", "error", _unhinted(corrupt_warning(path, error)), FRESH_COPY_HINT
        )
    if table.expired(now_unix_ns):
        expired = f"{_unhinted(expiry_warning(path, table))} (on {_date(table.expires_unix_s)})"
        return Finding("leapfile", "error", expired, FRESH_COPY_HINT)
    left_s = table.expires_unix_s - now_unix_ns // 1_000_000_000
    days = left_s // 86_400
    expires = _date(table.expires_unix_s)
    if days < LEAP_WARN_DAYS:
        return Finding(
            "leapfile",
            "warning",
            f"leapfile {path} expires on {expires}, in {days} days",
            FRESH_COPY_HINT,
        )
    return Finding("leapfile", "ok", f"leapfile {path} is valid until {expires}")


def _unhinted(text: str) -> str:
    """config.leapfile's words without the hint, which doctor shows as the fix."""
    return text.replace(f"; {FRESH_COPY_HINT}", "")


def _date(unix_s: int) -> str:
    return f"{datetime(1970, 1, 1) + timedelta(seconds=unix_s):%Y-%m-%d}"


def check_nts_certificate(
    config: Config, not_after: datetime | None, error: str | None, now: datetime
) -> Finding:
    """The NTS-KE certificate: unusable (``config.ntscert``'s words), or expiring within 30
    days (clients refuse an expired one, and the key exchange stops)."""
    if not config.nts.enabled:
        return Finding("nts", "ok", "NTS is not enabled (nothing to expire)")
    fix = "renew it (e.g. certbot renew), then 'systemctl reload ntpy' (SIGHUP re-reads it)"
    if error is not None or not_after is None:
        return Finding("nts", "error", error or "nts cert: not checked", fix)
    left = not_after - now
    when = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if left < timedelta(days=CERT_WARN_DAYS):
        return Finding(
            "nts",
            "warning",
            f"nts cert {config.nts.cert} expires on {when}, in {left.days} days",
            fix,
        )
    return Finding("nts", "ok", f"nts cert {config.nts.cert} is valid until {when}")


# --- port 123 -------------------------------------------------------------------------


def check_ports(probes: Sequence[PortProbe]) -> list[Finding]:
    """Each configured listen address must answer an NTP query, on port 123."""
    out: list[Finding] = []
    for p in probes:
        where = f"{p.address}:{p.port}" if ":" not in p.address else f"[{p.address}]:{p.port}"
        asked = f" (asked at {p.asked})" if p.asked and p.asked != p.address else ""
        if p.outcome == "not local":
            out.append(
                Finding(
                    "port",
                    "error",
                    f"listen {where}: not an address of this host, so nothing can answer there "
                    "(not queried)",
                    "listen on an address this host has ('ip addr' lists them), or add it",
                )
            )
        elif p.outcome == "no answer":
            out.append(
                Finding(
                    "port",
                    "error",
                    f"nothing answers NTP on {where}{asked}: {p.detail}",
                    "start ntpy (it binds every configured address), and check that no other "
                    "NTP daemon holds the port: ss -ulpn 'sport = :123'",
                )
            )
        elif p.port != 123:
            out.append(
                Finding(
                    "port",
                    "warning",
                    f"{where} answers{asked}, but clients and the pool monitor ask port 123",
                    f"listen {p.address} (port 123 is the default)",
                )
            )
        else:
            said = f" with a {p.detail}" if p.outcome == "kod" else ""
            out.append(Finding("port", "ok", f"{where} answers NTP{said}{asked}"))
    return out
