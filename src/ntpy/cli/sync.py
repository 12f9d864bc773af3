"""``ntpy sync``: set the clock once from NTP servers, the way ``ntpdate`` does.

Admin guides and boot scripts still run ``ntpdate -q``, ``ntpdate -u``, ``-b`` and ``-B``
and parse what it prints, so this command keeps ntpdate's options, its decisions and its
output lines, with ``ntpy`` as the program name:

    server 127.0.0.1, stratum 2, offset -0.000015, delay 0.02580
    22 Nov 05:10:11 ntpy[1234]: adjust time server 127.0.0.1 offset -0.000015 sec

What is ntpdate's (facts, reimplemented): every address of every name is a server; each
gets ``-p`` requests, the next one sent one timeout after the last reply or at once after
a timeout (a lost request is a lost sample); the sample with the lowest delay is the
server's; servers that are unsynchronized, kissed, too far away (> 8 s), broken (reference
time after transmit time) or stale (not synchronized for a day) are dropped; the rest are
ranked by stratum and dispersion, cut to the two best strata, ranked by stratum and delay,
and outliers are pruned by offset before the first is taken. The clock is stepped when
the offset is at least 0.5 s and slewed otherwise; ``-b``/``-B`` force either. Server
lines are printed with ``-q`` (or ``-v``/``--dry-run``); the step/adjust line goes to
stdout, errors to stderr, both with ntpdate's ``DD Mon HH:MM:SS prog[pid]:`` prefix.

Where ntpy differs, on purpose: the delay shown is the measured round trip (ntpdate adds
its own 10 ms skew allowance and precisions and shows at least 0.02 s); a slew is the exact
offset (ntpdate over-slews by half, up to 50 ms); the source port is always unprivileged
(``-u`` is accepted); ``--port`` and ``--dry-run`` are additions; a failed adjustment exits
1 with the reason (ntpdate logs it and exits 0).

The clock is only touched through ``AdjustableClock`` (``SystemClock`` in production), so
tests inject a fake; ``-q`` and ``--dry-run`` never create a clock at all.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import selectors
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from ntpy.clock.errors import ClockError
from ntpy.core.address import host_and_port
from ntpy.core.client import ReplyRejected, Sample, build_request, parse_reply
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.timestamps import NS_PER_S, precision_to_ns
from ntpy.daemon.udp import ANC_BUFSIZE, SO_TIMESTAMPNS, parse_ancillary

PROG = "ntpy"

DEFAULT_SAMPLES = 4
MAX_SAMPLES = 8
"""ntpdate's NTP_SHIFT: the filter holds at most 8 samples per server."""
DEFAULT_TIMEOUT_S = 1.0
"""ntpdate's DEFTIMEOUT: 5 ticks of its 5 Hz timer."""
MAX_TIMEOUT_S = 60.0

STEP_THRESHOLD_NS = NS_PER_S // 2
"""ntpdate's NTPDATE_THRESHOLD: offsets of 0.5 s or more are stepped, smaller ones slewed."""
MAX_DELAY_NS = 8 * NS_PER_S
"""NTP_MAXWGT: a server with a longer round trip is 'too far away'."""
MAX_AGE_NS = 86_400 * NS_PER_S
"""NTP_MAXAGE: a server whose reference time is a day old has lost its own sync."""
MAX_DISPERSION_NS = 64 * NS_PER_S
"""PEER_MAXDISP: what a lost sample (or a wild one) adds to a server's dispersion."""
MAX_LIST = 5
"""NTP_MAXLIST: candidates kept for the falseticker pruning."""
SKEW_ALLOWANCE_NS = 10_000_000
"""NTP_MAXSKW (0.01 s): part of the pruning threshold."""
OWN_PRECISION_NS = NS_PER_S >> 6
"""NTPDATE_PRECISION (2**-6 s): ntpdate's claimed precision, the other fixed part."""
STRATUM_UNSPEC = 16
MAX_STRATUM = 15

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

KISS_MEANINGS = {
    "RATE": "rate limit response from server",
    "DENY": "access denied by the server",
    "RSTR": "access restricted by the server",
}


# ---------------------------------------------------------------------------------------
# What was measured


@dataclass(frozen=True, slots=True)
class Target:
    """One server address to poll (a name may resolve to several)."""

    name: str
    address: str
    port: int
    family: int
    sockaddr: tuple[object, ...]


@dataclass(slots=True)
class ServerPoll:
    """What one server said: a slot per request (None = no usable reply in time)."""

    target: Target
    samples: list[Sample | None] = field(default_factory=list)
    kiss: str | None = None
    """The kiss code if the server sent a kiss-o'-death (polling stopped there)."""
    error: str | None = None
    """Why polling stopped early: refused, unreachable, an insane reply."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A server after filtering: its best sample and why it may not be used."""

    target: Target
    best: Sample | None
    dispersion_ns: int
    dropped: str | None
    """None if the server may be selected, else the reason (for the message)."""

    @property
    def stratum(self) -> int:
        """As ntpdate shows it: 0 without data, 16 for a server that sent stratum 0."""
        if self.best is None:
            return 0
        return self.best.stratum or STRATUM_UNSPEC


# ---------------------------------------------------------------------------------------
# Pure: filtering, rejection, selection, decision


def filter_samples(samples: Sequence[Sample | None]) -> tuple[Sample | None, int]:
    """The lowest-delay sample and the dispersion of the others around it (ntpdate's filter).

    The samples are ordered by delay, lost ones last; each later sample adds its offset
    distance from the best, halved once per rank (a lost one adds the maximum), so a server
    that dropped packets or wandered ranks below a steady one.
    """
    got = sorted((s for s in samples if s is not None), key=lambda s: s.delay_ns)
    if not got:
        return None, MAX_DISPERSION_NS
    best = got[0]
    ranked: list[Sample | None] = [*got, *[None] * (len(samples) - len(got))]
    dispersion = 0
    for rank, s in enumerate(ranked[1:], start=1):
        d = MAX_DISPERSION_NS if s is None else abs(s.offset_ns - best.offset_ns)
        dispersion += min(d, MAX_DISPERSION_NS) >> rank
    return best, dispersion


def drop_reason(poll: ServerPoll, best: Sample | None, timeout_s: float) -> str | None:
    """Why a server cannot be used, in ntpdate's order of checks, or None."""
    if poll.kiss is not None:
        meaning = KISS_MEANINGS.get(poll.kiss, "the server refuses to serve us")
        return f"kiss-o'-death {poll.kiss} ({meaning})"
    if best is None:
        if poll.error is not None:
            return f"no data ({poll.error})"
        n = len(poll.samples)
        return f"no data (no reply within {timeout_s:g} s to {n} request{'s' * (n != 1)})"
    if best.leap == LEAP_ALARM:
        return (
            f"Leap not in sync (the server is unsynchronized: stratum "
            f"{best.stratum or STRATUM_UNSPEC}, "
            f"refid {best.refid_text})"
        )
    if best.stratum == 0 or best.stratum > MAX_STRATUM:
        return f"strata too high (stratum {best.stratum or STRATUM_UNSPEC})"
    if best.delay_ns > MAX_DELAY_NS:
        return f"server too far away (delay {best.delay_ns / NS_PER_S:.3f} s)"
    reference = best.reference_ns
    if reference is not None and reference >= best.t3_ns:
        return "server is very broken (its reference time is not before its transmit time)"
    if reference is None:
        return "Server has gone too long without sync (its reference time is zero: never)"
    if best.t3_ns - reference >= MAX_AGE_NS:
        days = (best.t3_ns - reference) / (86_400 * NS_PER_S)
        return f"Server has gone too long without sync (last synchronized {days:.1f} days ago)"
    return None


def judge(poll: ServerPoll, timeout_s: float) -> Verdict:
    best, dispersion = filter_samples(poll.samples)
    return Verdict(poll.target, best, dispersion, drop_reason(poll, best, timeout_s))


def _badness(offsets: Sequence[int], k: int) -> int:
    """How far the others are from candidate k, nearer-ranked ones weighing more (3/4 a rank)."""
    total = 0
    for j, off in enumerate(offsets):
        if j == k:
            continue
        d = abs(off - offsets[k])
        for _ in range(j):
            d = (d >> 1) + (d >> 2)
        total += d
    return total


def select_server(verdicts: Sequence[Verdict]) -> Verdict | None:
    """ntpdate's choice among the usable servers, or None if there is none.

    Keep the five best by (stratum, dispersion) from the two lowest strata; order them by
    (stratum, delay); while more than one is left, drop the one whose offset disagrees most
    with the others unless even that one agrees within the precision threshold. The first
    remaining server wins.
    """
    usable = [v for v in verdicts if v.dropped is None and v.best is not None]
    ranked = sorted(usable, key=lambda v: (v.stratum, v.dispersion_ns))[:MAX_LIST]
    steps = 0
    for i in range(1, len(ranked)):
        if ranked[i].stratum > ranked[i - 1].stratum:
            steps += 1
            if steps == 2:
                ranked = ranked[:i]
                break
    if len(ranked) <= 1:
        return ranked[0] if ranked else None
    ranked.sort(key=lambda v: (v.stratum, v.best.delay_ns if v.best else 0))
    while len(ranked) > 1:
        offsets = [v.best.offset_ns if v.best else 0 for v in ranked]
        scores = [_badness(offsets, k) for k in range(len(ranked))]
        worst = max(range(len(ranked)), key=lambda k: (scores[k], k))
        finest = min(v.best.precision if v.best else 0 for v in ranked)
        if scores[worst] < OWN_PRECISION_NS + SKEW_ALLOWANCE_NS + precision_to_ns(finest):
            break
        del ranked[worst]
    return ranked[0]


def decide(offset_ns: int, *, force_step: bool = False, force_slew: bool = False) -> str:
    """'step' or 'slew': ntpdate's rule (|offset| >= 0.5 s steps) unless -b or -B forces it."""
    if force_step and force_slew:
        raise ValueError("-b (always step) and -B (always slew) exclude each other")
    if force_step:
        return "step"
    if force_slew:
        return "slew"
    return "step" if abs(offset_ns) >= STEP_THRESHOLD_NS else "slew"


# ---------------------------------------------------------------------------------------
# Pure: output formats


def format_seconds(ns: int, decimals: int) -> str:
    """Seconds with a fixed number of decimals from integer ns, rounded half away from zero;
    negative values get a '-', positive ones no sign (ntpdate's lfptoa/fptoa)."""
    unit = 10 ** (9 - decimals)
    q = (abs(ns) + unit // 2) // unit
    scale = 10**decimals
    return f"{'-' if ns < 0 else ''}{q // scale}.{q % scale:0{decimals}d}"


def server_line(v: Verdict) -> str:
    """``server A, stratum S, offset O, delay D``; zeros for a server that never answered."""
    offset = v.best.offset_ns if v.best is not None else 0
    delay = v.best.delay_ns if v.best is not None else 0
    return (
        f"server {v.target.address}, stratum {v.stratum}, offset {format_seconds(offset, 6)}, "
        f"delay {format_seconds(delay, 5)}"
    )


def adjust_message(action: str, v: Verdict) -> str:
    """ntpdate's notice: ``step time server A offset O sec`` or ``adjust time server ...``."""
    assert v.best is not None
    verb = "step" if action == "step" else "adjust"
    return f"{verb} time server {v.target.address} offset {format_seconds(v.best.offset_ns, 6)} sec"


def log_prefix(when: time.struct_time, pid: int, prog: str = PROG) -> str:
    """ntpdate's terminal log prefix: ``22 Nov 05:10:11 ntpy[1234]: `` (local time, English
    month names whatever the locale, day padded to two columns)."""
    return (
        f"{when.tm_mday:2d} {_MONTHS[when.tm_mon - 1]} {when.tm_hour:02d}:{when.tm_min:02d}:"
        f"{when.tm_sec:02d} {prog}[{pid}]: "
    )


# ---------------------------------------------------------------------------------------
# Adjusting the clock


class AdjustableClock(Protocol):
    """What ``sync`` needs of a clock (``SystemClock`` has it; tests pass a fake)."""

    def can_adjust(self) -> bool: ...

    def step(self, offset_ns: int) -> None: ...

    def slew(self, offset_ns: int) -> None: ...


class AdjustError(Exception):
    """The clock could not be changed; the message is for the terminal."""


def apply_adjustment(clock: AdjustableClock, action: str, offset_ns: int) -> None:
    """Step or slew ``clock`` by ``offset_ns``; any refusal becomes AdjustError."""
    if action not in ("step", "slew"):
        raise ValueError(f"action must be 'step' or 'slew', got {action!r}")
    if not clock.can_adjust():
        raise AdjustError(
            "cannot set the clock: this needs CAP_SYS_TIME (run as root); "
            "use -q to only query, or --dry-run"
        )
    try:
        if action == "step":
            clock.step(offset_ns)
        else:
            clock.slew(offset_ns)
    except ClockError as exc:
        what = "step" if action == "step" else "adjust"
        raise AdjustError(f"can't {what} the time of day: {exc}") from exc
    except ValueError as exc:  # e.g. a slew beyond what the kernel accepts
        raise AdjustError(f"can't slew the time of day: {exc}; use -b to step") from exc


def system_clock() -> AdjustableClock:
    """The real clock, created only when the user asked to set it."""
    from ntpy.clock.system import SystemClock

    return SystemClock()


# ---------------------------------------------------------------------------------------
# The network side


def resolve(
    hosts: Sequence[str], port: int, family: int
) -> tuple[list[Target], list[tuple[str, str]]]:
    """Every address of every name (ntpdate polls them all), duplicates once; and the names
    that failed with the resolver's reason."""
    targets: list[Target] = []
    failures: list[tuple[str, str]] = []
    seen: set[tuple[str, int]] = set()
    for text in hosts:
        try:
            host, host_port = host_and_port(text, port)
            infos = socket.getaddrinfo(host, host_port, family, socket.SOCK_DGRAM)
        except ValueError as exc:
            failures.append((text, str(exc)))
            continue
        except OSError as exc:
            failures.append((text, exc.strerror or str(exc)))
            continue
        for fam, _, _, _, sockaddr in infos:
            address = str(sockaddr[0])
            if (address, host_port) in seen:
                continue
            seen.add((address, host_port))
            targets.append(Target(text, address, host_port, fam, tuple(sockaddr)))
    return targets, failures


@dataclass(slots=True)
class _Flight:
    """The shell's state for one server while polling."""

    poll: ServerPoll
    sock: socket.socket | None
    cookie: int = 0
    t1_ns: int = 0
    deadline: float | None = None
    """Monotonic time the outstanding request times out; None if none is outstanding."""
    next_send: float = 0.0
    done: bool = False


def poll_servers(
    targets: Sequence[Target], samples: int, timeout_s: float, version: int
) -> list[ServerPoll]:
    """Poll every target concurrently, ``samples`` requests each, ntpdate's pacing.

    T1 is read from the system clock just before sending and T4 is the kernel's receive
    timestamp, both integer ns. A reply that does not echo our cookie (stale, duplicate,
    spoofed) is ignored and the request stays outstanding.
    """
    flights: list[_Flight] = []
    sel = selectors.DefaultSelector()
    try:
        for t in targets:
            poll = ServerPoll(t)
            try:
                sock = socket.socket(t.family, socket.SOCK_DGRAM)
            except OSError as exc:
                poll.error = exc.strerror or str(exc)
                flights.append(_Flight(poll, None, done=True))
                continue
            flight = _Flight(poll, sock)
            flights.append(flight)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.setblocking(False)
                sock.connect(t.sockaddr)
            except OSError as exc:
                _finish(flight, exc.strerror or str(exc))
                continue
            sel.register(sock, selectors.EVENT_READ, flight)
        _run_polls(sel, flights, samples, timeout_s, version)
    finally:
        sel.close()
        for f in flights:
            if f.sock is not None:
                f.sock.close()
    return [f.poll for f in flights]


def _finish(flight: _Flight, error: str | None = None) -> None:
    flight.done = True
    flight.deadline = None
    if error is not None:
        flight.poll.error = error


def _run_polls(
    sel: selectors.BaseSelector,
    flights: list[_Flight],
    samples: int,
    timeout_s: float,
    version: int,
) -> None:
    while True:
        now = time.monotonic()
        active = [f for f in flights if not f.done]
        if not active:
            return
        for f in active:
            if f.deadline is not None and now >= f.deadline:
                f.poll.samples.append(None)  # lost: ntpdate shifts a zero sample in
                f.deadline = None
                f.next_send = now
                if len(f.poll.samples) >= samples:
                    _finish(f)
            if not f.done and f.deadline is None and now >= f.next_send:
                _send(f, version, timeout_s)
        wakeups = [
            f.deadline if f.deadline is not None else f.next_send for f in flights if not f.done
        ]
        if not wakeups:
            return
        for key, _ in sel.select(max(0.0, min(wakeups) - time.monotonic())):
            flight: _Flight = key.data
            if not flight.done:
                _receive(flight, samples, timeout_s)


def _send(f: _Flight, version: int, timeout_s: float) -> None:
    f.cookie = secrets.randbits(64)
    request = build_request(f.cookie, version=version)
    assert f.sock is not None
    f.t1_ns = time.time_ns()
    try:
        f.sock.send(request)
    except OSError as exc:
        _finish(f, exc.strerror or str(exc))
        return
    f.deadline = time.monotonic() + timeout_s


def _receive(f: _Flight, samples: int, timeout_s: float) -> None:
    assert f.sock is not None
    try:
        data, anc, _flags, _addr = f.sock.recvmsg(2048, ANC_BUFSIZE)
    except BlockingIOError:
        return
    except ConnectionRefusedError:
        _finish(f, "port unreachable: no NTP server there")
        return
    except OSError as exc:
        _finish(f, exc.strerror or str(exc))
        return
    if f.deadline is None:
        return  # a late reply to a request already counted as lost
    t4 = parse_ancillary(anc)[0] or time.time_ns()
    try:
        sample = parse_reply(data, f.cookie, f.t1_ns, t4)
    except ReplyRejected as exc:
        if exc.reason.startswith("kod_"):
            f.poll.kiss = exc.reason[4:]
            _finish(f)
        elif exc.reason in ("insane", "bad_mode"):
            _finish(f, f"unusable reply: {exc.detail}")
        return  # malformed, stale or bogus: keep waiting for the real reply
    f.poll.samples.append(sample)
    f.deadline = None
    f.next_send = time.monotonic() + timeout_s  # ntpdate waits a timeout between requests
    if len(f.poll.samples) >= samples:
        _finish(f)


# ---------------------------------------------------------------------------------------
# The command


@dataclass
class Output:
    """Where lines go; the log lines get ntpdate's time/program prefix."""

    out: TextIO
    err: TextIO
    localtime: Callable[[], time.struct_time] = time.localtime
    pid: int = field(default_factory=os.getpid)

    def notice(self, message: str) -> None:
        """A LOG_NOTICE line: stdout, as ntpdate's terminal logging does."""
        self.out.write(log_prefix(self.localtime(), self.pid) + message + "\n")

    def error(self, message: str) -> None:
        """A LOG_ERR line: stderr."""
        self.err.write(log_prefix(self.localtime(), self.pid) + message + "\n")


def run(
    args: argparse.Namespace,
    clock_factory: Callable[[], AdjustableClock] = system_clock,
    poller: Callable[[Sequence[Target], int, float, int], list[ServerPoll]] = poll_servers,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``ntpy sync``: 0 when a server was chosen (and the clock set unless -q/--dry-run),
    1 when no server is suitable or the clock cannot be set."""
    o = Output(out or sys.stdout, err or sys.stderr)
    force_step, force_slew = args.step, args.slew
    clock: AdjustableClock | None = None
    if not (args.query or args.dry_run):
        try:
            clock = clock_factory()
        except (ClockError, OSError) as exc:  # e.g. no adjtimex in this C library
            o.error(f"cannot use the system clock: {exc}")
            return 1
        if not clock.can_adjust():  # fail before polling, as ntpdate fails binding port 123
            o.error(
                "cannot set the clock: this needs CAP_SYS_TIME (run as root); "
                "use -q to only query, or --dry-run to see what would be done"
            )
            return 1
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(args.family or 0, socket.AF_UNSPEC)
    targets, failures = resolve(args.host, args.port, family)
    for name, why in failures:
        o.err.write(f"Error : {why}\n")
        o.error(f"can't find host {name}")
    if not targets:
        o.error("no servers can be used, exiting")
        return 1
    polls = poller(targets, args.samples, args.timeout, args.ntp_version)
    verdicts = [judge(p, args.timeout) for p in polls]
    if args.query or args.dry_run or args.verbose:
        for v in verdicts:
            o.out.write(server_line(v) + "\n")
    for v in verdicts:
        if v.dropped is not None:
            o.err.write(f"{PROG}: {v.target.address}: Server dropped: {v.dropped}\n")
    chosen = select_server(verdicts)
    if chosen is None or chosen.best is None:
        o.error("no server suitable for synchronization found")
        return 1
    action = decide(chosen.best.offset_ns, force_step=force_step, force_slew=force_slew)
    if args.query:
        o.notice(adjust_message(action, chosen))
        return 0
    if args.dry_run:
        o.notice(adjust_message(action, chosen))
        verb = "stepped" if action == "step" else "slewed"
        o.err.write(
            f"{PROG}: --dry-run: the clock was not changed (it would have been {verb} by "
            f"{format_seconds(chosen.best.offset_ns, 6)} s)\n"
        )
        return 0
    assert clock is not None
    try:
        apply_adjustment(clock, action, chosen.best.offset_ns)
    except AdjustError as exc:
        o.error(str(exc))
        return 1
    o.notice(adjust_message(action, chosen))
    return 0


# ---------------------------------------------------------------------------------------
# Command line


def _samples(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"number of samples ({text}) is invalid") from None
    if not 1 <= n <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"number of samples ({n}) is invalid: 1 to {MAX_SAMPLES}")
    return n


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timeout {text} is undecodeable") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"timeout {text} is out of range: more than 0, at most {MAX_TIMEOUT_S:g} seconds"
        )
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"bad port {text!r}: expected 1..65535")
    return int(text)


def add_sync_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sync`` (ntpdate's options) to the ``ntpy`` command line."""
    p = subparsers.add_parser(
        "sync",
        help="set the clock once from NTP servers, like ntpdate (-q: only query)",
        description="Query NTP servers and step or slew the system clock once, like ntpdate. "
        "Exit 0 on success, 1 if no server is suitable or the clock cannot be set.",
    )
    p.add_argument("host", nargs="+", metavar="HOST", help="server name or address")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument(
        "-4",
        dest="family",
        action="store_const",
        const=4,
        help="resolve names to IPv4 addresses only",
    )
    fam.add_argument(
        "-6",
        dest="family",
        action="store_const",
        const=6,
        help="resolve names to IPv6 addresses only",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "-b",
        dest="step",
        action="store_true",
        help="always step the clock (settimeofday-style), whatever the offset",
    )
    how.add_argument(
        "-B",
        dest="slew",
        action="store_true",
        help="always slew the clock, even if the offset is 0.5 s or more",
    )
    p.add_argument(
        "-q",
        dest="query",
        action="store_true",
        help="query only: print the servers and the decision, never set the clock",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="do everything except changing the clock, and say what would be done",
    )
    p.add_argument(
        "-p",
        dest="samples",
        type=_samples,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help=f"requests per server, 1 to {MAX_SAMPLES} (default {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "-t",
        dest="timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"wait this long for each reply (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "-o",
        dest="ntp_version",
        type=int,
        choices=[1, 2, 3, 4],
        default=4,
        metavar="VERSION",
        help="NTP version of the requests (default 4)",
    )
    p.add_argument(
        "-u",
        dest="unprivileged",
        action="store_true",
        help="accepted for ntpdate compatibility: ntpy always sends from an unprivileged port",
    )
    p.add_argument(
        "-v",
        dest="verbose",
        action="store_true",
        help="also print the server lines when setting the clock",
    )
    p.add_argument("--port", type=_port, default=123, help="server UDP port (default 123)")
