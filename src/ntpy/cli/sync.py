"""``ntpy sync``: set the clock once from NTP servers, the way ``ntpdate`` does.

Admin guides and boot scripts still run ``ntpdate -q``, ``ntpdate -u``, ``-b`` and ``-B``
and parse what it prints, so this command keeps ntpdate's options, its decisions and its
output lines, with ``ntpy`` as the program name:

    server 127.0.0.1, stratum 2, offset -0.000015, delay 0.02580
    22 Nov 05:10:11 ntpy[1234]: adjust time server 127.0.0.1 offset -0.000015 sec

ntpdate's decisions -- pacing, filter, drop reasons, selection, step or slew -- are pure
functions in ``ntpy.core.ntpdate`` over the samples of the core's client exchange; this
module is the I/O shell: names, sockets, clocks, the clock adjustment and the printing.
``-b``/``-B`` force a step or a slew. Server lines are printed with ``-q`` (or
``-v``/``--dry-run``); the step/adjust line goes to stdout, errors to stderr, both with
ntpdate's ``DD Mon HH:MM:SS prog[pid]:`` prefix.

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
from ntpy.core.ntpdate import (
    Pacer,
    ServerPoll,
    Target,
    adjust_message,
    decide,
    format_seconds,
    judge,
    select_server,
    server_line,
)
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.client_socket import open_client_socket, recv_reply

PROG = "ntpy"

DEFAULT_SAMPLES = 4
MAX_SAMPLES = 8
"""ntpdate's NTP_SHIFT: the filter holds at most 8 samples per server."""
DEFAULT_TIMEOUT_S = 1.0
"""ntpdate's DEFTIMEOUT: 5 ticks of its 5 Hz timer."""
MAX_TIMEOUT_S = 60.0

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# ---------------------------------------------------------------------------------------
# Output


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


class _OneShotSystemClock:
    """The system clock for a program that exits right after adjusting it: a slew is
    handed to the kernel's own adjtime() slew (500 ppm), which finishes without us --
    ``SystemClock.slew`` would need the process to stay and end it."""

    def __init__(self) -> None:
        from ntpy.clock.system import SystemClock

        self._clock = SystemClock()

    def can_adjust(self) -> bool:
        return self._clock.can_adjust()

    def step(self, offset_ns: int) -> None:
        self._clock.step(offset_ns)

    def slew(self, offset_ns: int) -> None:
        self._clock.hand_off_slew(offset_ns)


def system_clock() -> AdjustableClock:
    """The real clock, created only when the user asked to set it."""
    return _OneShotSystemClock()


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


def poll_servers(
    targets: Sequence[Target], samples: int, timeout_s: float, version: int
) -> list[ServerPoll]:
    """Poll every target concurrently, ``samples`` requests each, ntpdate's pacing (the
    ``Pacer`` of each server decides; this moves the datagrams and reads the clocks).

    T1 is read from the system clock just before sending and T4 is the kernel's receive
    timestamp, both integer ns.
    """
    timeout_ns = int(timeout_s * NS_PER_S)
    pacers: list[Pacer] = []
    socks: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    try:
        for t in targets:
            pacer = Pacer(ServerPoll(t), samples, timeout_ns)
            pacers.append(pacer)
            try:
                sock = open_client_socket(t.sockaddr, t.family, blocking=False)
            except OSError as exc:
                pacer.finish(exc.strerror or str(exc))
                continue
            socks[id(pacer)] = sock
            sel.register(sock, selectors.EVENT_READ, pacer)
        _run_polls(sel, pacers, socks, version)
    finally:
        sel.close()
        for sock in socks.values():
            sock.close()
    return [p.poll for p in pacers]


def _run_polls(
    sel: selectors.BaseSelector,
    pacers: list[Pacer],
    socks: dict[int, socket.socket],
    version: int,
) -> None:
    while True:
        now = time.monotonic_ns()
        for p in pacers:
            p.expire(now)
            if p.due(now):
                _send(p, socks[id(p)], version)
        wakeups = [w for w in (p.wakeup() for p in pacers) if w is not None]
        if not wakeups:
            return
        for key, _ in sel.select(max(0, min(wakeups) - time.monotonic_ns()) / NS_PER_S):
            pacer: Pacer = key.data
            if not pacer.done:
                _receive(pacer, socks[id(pacer)])


def _send(p: Pacer, sock: socket.socket, version: int) -> None:
    request = p.start(secrets.randbits(64), version)
    t1 = time.time_ns()
    try:
        sock.send(request)
    except OSError as exc:
        p.finish(exc.strerror or str(exc))
        return
    p.sent(t1, time.monotonic_ns())


def _receive(p: Pacer, sock: socket.socket) -> None:
    try:
        data, rx = recv_reply(sock)
    except BlockingIOError:
        return
    except ConnectionRefusedError:
        p.finish("port unreachable: no NTP server there")
        return
    except OSError as exc:
        p.finish(exc.strerror or str(exc))
        return
    p.receive(data, rx or time.time_ns(), time.monotonic_ns())


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
