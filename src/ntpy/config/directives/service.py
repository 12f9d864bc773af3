"""Service directives: ``metrics``, ``webstatus``, ``workers``, ``user``, ``seccomp``,
``rtcsync``.

Most have no ntpd equivalent, so they follow chrony's style: one value per line, a later
line replaces an earlier one (with a warning so a stray duplicate is noticed).
"""

from __future__ import annotations

import os

from ..model import FastpathSpec, HttpEndpointSpec, UserSpec
from ..state import Args, Directive, Line, State
from ..values import BadValue, parse_int, show
from .misc import listen_endpoint

DEFAULT_METRICS_PORT = 9123
DEFAULT_WEBSTATUS_PORT = 8123
MAX_WORKERS = 256


def _endpoint(line: Line, default_port: int) -> HttpEndpointSpec:
    args = Args(line.args)
    token = args.take()
    if token is None:
        raise BadValue(f"'{line.name}' needs an address, e.g. 127.0.0.1:{default_port}")
    args.expect_end()
    address, written = listen_endpoint(token)
    port = default_port if written is None else written
    if port == 0:
        raise BadValue(f"'{line.name}' needs a fixed port, not 0")
    return HttpEndpointSpec(address=address, port=port, location=line.loc)


def _replace_endpoint(
    state: State, line: Line, current: HttpEndpointSpec | None, default_port: int
) -> HttpEndpointSpec:
    """The endpoint of this line; a warning if an earlier line had set one already."""
    if current is not None and current.location is not None:
        state.warn(
            line.loc,
            f"'{line.name}' was already set at {current.location}; this line replaces it",
        )
    return _endpoint(line, default_port)


def handle_metrics(state: State, line: Line) -> None:
    state.metrics = _replace_endpoint(state, line, state.metrics, DEFAULT_METRICS_PORT)


def handle_webstatus(state: State, line: Line) -> None:
    state.webstatus = _replace_endpoint(state, line, state.webstatus, DEFAULT_WEBSTATUS_PORT)


def handle_workers(state: State, line: Line) -> None:
    args = Args(line.args)
    word = args.take()
    args.expect_end()
    if word is None:
        raise BadValue("'workers' needs a number of processes or 'auto'")
    if word.lower() == "auto":
        state.workers = None
        return
    try:
        state.workers = parse_int(word, "workers", 1, MAX_WORKERS)
    except BadValue as exc:
        raise BadValue(f"{exc} (or 'auto' for one per CPU core)") from None


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-$")


def _account_name(token: str, what: str) -> str:
    """A user or group name as ``useradd`` allows it (or a number): nothing that would
    need quoting, no empty part."""
    if not token or not set(token) <= _NAME_CHARS or token.startswith("-"):
        raise BadValue(f"'user' needs a {what} name or number, got {show(token)}")
    return token


def handle_user(state: State, line: Line) -> None:
    """``user USER[:GROUP]``: whether the names exist is checked with the files
    (``checks``), so a config written for another machine still parses."""
    args = Args(line.args)
    word = args.take()
    args.expect_end()
    if word is None:
        raise BadValue("'user' needs a user name, e.g. 'user ntpy' or 'user ntpy:ntpy'")
    name, sep, group = word.partition(":")
    spec = UserSpec(
        _account_name(name, "user"), _account_name(group, "group") if sep else None, line.loc
    )
    if state.user is not None:
        state.warn(line.loc, f"'user' was already set at {state.user.location}; this line wins")
    state.user = spec


_IFNAME_MAX = 15


def handle_fastpath(state: State, line: Line) -> None:
    """``fastpath xdp [IFACE...]``: whether the kernel can run it is found out at start
    (and logged), so a config written for another machine still parses."""
    args = Args(line.args)
    kind = args.take()
    if kind is None or kind.lower() != "xdp":
        raise BadValue(
            f"'fastpath' knows only 'xdp', got {show(kind or '')}: 'fastpath xdp [IFACE...]'"
        )
    names: list[str] = []
    while (name := args.take()) is not None:
        if len(name) > _IFNAME_MAX or "/" in name or name in names:
            raise BadValue(f"'fastpath xdp' needs interface names, got {show(name)}")
        names.append(name)
    if state.fastpath is not None:
        state.warn(
            line.loc, f"'fastpath' was already set at {state.fastpath.location}; this line wins"
        )
    state.fastpath = FastpathSpec("xdp", tuple(names), line.loc)


def handle_seccomp(state: State, line: Line) -> None:
    """``seccomp LEVEL``: chrony's ``-F`` levels (the command line's ``-F`` wins)."""
    args = Args(line.args)
    word = args.take()
    args.expect_end()
    if word is None or word not in ("0", "1", "-1"):
        raise BadValue(
            f"'seccomp' needs a level: 0 (off), 1 (allow-list, other calls kill) or -1 "
            f"(allow-list, other calls are logged by name), got {show(word or '')}"
        )
    state.seccomp = int(word)


def handle_rtcsync(state: State, line: Line) -> None:
    """``rtcsync [on|off]``: chrony's spelling; no word means on."""
    args = Args(line.args)
    word = args.take()
    args.expect_end()
    if word is None or word.lower() in ("on", "yes"):
        state.rtcsync = True
    elif word.lower() in ("off", "no"):
        state.rtcsync = False
    else:
        raise BadValue(f"'rtcsync' takes nothing, 'on' or 'off', got {show(word)}")


def auto_workers() -> int:
    """One serving process per CPU core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - Linux has sched_getaffinity
        return max(1, os.cpu_count() or 1)


DIRECTIVES: dict[str, Directive] = {
    "metrics": Directive(
        handle_metrics,
        f"metrics ADDRESS[:PORT] (default port {DEFAULT_METRICS_PORT})",
        "ntpy's own: serve Prometheus metrics at http://ADDRESS:PORT/metrics (offset, "
        "frequency, jitter, stratum, sync state, per-source state, requests by result). It "
        "binds only where this says: keep it on loopback or a management network. Default: "
        "off.",
    ),
    "webstatus": Directive(
        handle_webstatus,
        f"webstatus ADDRESS[:PORT] (default port {DEFAULT_WEBSTATUS_PORT})",
        "ntpy's own: a web status page with live tables and plots of the last hours, plus "
        "/api/status, /api/history and /metrics. Default: off.",
    ),
    "workers": Directive(
        handle_workers,
        f"workers N (1..{MAX_WORKERS}) | auto",
        "ntpy's own: serving processes on SO_REUSEPORT sockets, each client always on the "
        "same one (default auto: one per CPU core). Changing it needs a restart. Under "
        "socket activation the passed sockets are served by one process.",
    ),
    "fastpath": Directive(
        handle_fastpath,
        "fastpath xdp [IFACE...]",
        "ntpy's own, opt-in: answer plain NTP client requests (48-byte mode 3, NTPv1-4, IPv4 "
        "and IPv6, to one of our addresses on the first listen port, from clients no "
        "restrict rule restricts beyond 'limited') in the kernel with an XDP program on IFACE "
        "(default: the interfaces carrying the listen addresses), several times faster than "
        "from Python. Everything else -- other modes, extension fields, NTS, MACs, "
        "interleaved requests, other listen ports, restricted clients, the unsynchronized "
        "state -- is passed up and answered as without it.\n\n"
        "'limited' clients are rate limited in the kernel with the ratelimit/discard "
        "settings (a token bucket per client, the same arithmetic); a request over the limit "
        "is passed up and gets the RATE kiss or is dropped there, counted once (with "
        "workers, by whichever worker gets it: each reads the kernel's buckets). Counters: "
        "'ntpy stat', 'ntpy clients' (per limited client), /metrics (ntpy_xdp_*).\n\n"
        "XDP runs before the firewall: iptables and nftables rules do not see the requests "
        "it answers (restrict rules still apply: restricted clients are passed up). It needs "
        "Linux 6.1 or later, libbpf (libbpf1) and root or CAP_BPF and CAP_NET_ADMIN at "
        "start; the program is attached through a bpf_link held by the main process, so it "
        "is gone as soon as ntpy exits, even when killed. If it cannot run, ntpy logs one "
        "line saying why and serves every request from Python. Changing it needs a "
        "restart. Default: off.",
    ),
    "user": Directive(
        handle_user,
        "user USER[:GROUP]",
        "ntpd's -u: after start-up (sockets bound, files opened, keys read) every process "
        "becomes USER (and GROUP, default USER's group); the main process keeps only "
        "CAP_SYS_TIME, and only when it disciplines the system clock. The command line's -u "
        "wins. Default: stay root.",
    ),
    "seccomp": Directive(
        handle_seccomp,
        "seccomp 0 | 1 | -1",
        "chrony's -F: after start-up (and after the drop to 'user') every process loads a "
        "system-call filter that allows only the calls ntpy makes (the list and the reason "
        "for each: docs/seccomp.md). 1: any other call kills the process by SIGSYS (the "
        "kernel's audit log names it); -1: ntpy logs the forbidden call by name, then dies "
        "by SIGSYS; 0: no filter. Needs libseccomp2. The command line's -F wins. Changing "
        "it needs a restart. Default: 0.",
    ),
    "rtcsync": Directive(
        handle_rtcsync,
        "rtcsync [on | off]",
        "chrony's rtcsync, ntpd's kernel 11-minute mode: while the system clock is "
        "synchronized, ntpy clears STA_UNSYNC in the kernel, and Linux then copies the "
        "system time to the hardware clock (RTC) every 11 minutes; 'off' keeps STA_UNSYNC "
        "set, so the RTC is never written (and programs that read the kernel's status, "
        "such as timedatectl, see the clock as unsynchronized). The virtual clock (-x) "
        "never touches the kernel or the RTC. Changing it needs a restart. Default: on, "
        "as ntpd does.",
    ),
}

__all__ = ["DIRECTIVES", "auto_workers", "show"]
