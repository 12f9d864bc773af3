"""``ntpy stat``: the daemon's synchronisation state in the words of the original ``ntpstat``.

``ntpy status`` follows the newer ntpstat shell script; this command follows the original
C program (G. Richard Keech's, shipped for years with ntpd) that older runbooks and
monitoring checks were written against. Its facts, reimplemented:

* synchronised: ``synchronised to <clock source>`` where the source is named by the RFC 1305
  code in the system status word -- "NTP server" (followed by `` (address)``), "local net"
  for the LOCAL driver, "atomic clock", "UHF radio", ... -- then `` at stratum N``; then
  ``   time correct to within N ms`` (root dispersion + half the root delay);
* not synchronised (leap indicator 3): ``unsynchronised``, plus
  ``  time server re-starting`` when the daemon has just started; ntpy adds
  ``  reason: <why>: <detail>`` (no majority, no reachable source, ...), which the C program
  could not know -- "re-starting" alone once stood for 1.5 h of "no majority";
* always: ``   polling server every N s``;
* missing fields: ``, stratum unknown``, ``accuracy unknown``, ``poll interval unknown``
  (each also makes the exit code 1);
* exit 0 synchronised, 1 not, 2 the daemon cannot be asked (with "Unable to talk to NTP
  daemon. Is it running?" on stderr).

The C program printed a stray space after the stratum; it is not reproduced. "Re-starting"
was ntpd's last system event being the start-up one; ntpy's equivalent is "no clock update
since the daemon started" (``updates == 0`` in the status reply) while the daemon is still
waiting for samples; once it knows a better reason, the reason line says it instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ntpy.cli.views import (
    EXIT_SYNCED,
    EXIT_UNSYNCED,
    NTP_KINDS,
    add_timeout_option,
    int_field,
    is_synced,
    sync_reason,
    system_peer,
)
from ntpy.daemon.control import ControlError, query_control
from ntpy.daemon.control_paths import SOCKET_HELP

EXIT_UNREACHABLE = 2

UNREACHABLE_MESSAGE = "Unable to talk to NTP daemon. Is it running?"

CLOCK_SOURCE_NAMES = (
    "unspecified",
    "atomic clock",
    "VLF radio",
    "HF radio",
    "UHF radio",
    "local net",
    "NTP server",
    "UDP/TIME",
    "wristwatch",
    "modem",
)
"""RFC 1305 clock source codes 0..9 as the original ntpstat names them."""
SOURCE_UNSPECIFIED = 0
SOURCE_LOCAL = 5
SOURCE_NTP = 6


def clock_source(status: Mapping[str, Any]) -> tuple[int, str | None]:
    """The RFC 1305 clock source code ntpd would put in its status word, and the address
    to show with code 6 (NTP server)."""
    peer = system_peer(status)
    if peer is None:
        return SOURCE_UNSPECIFIED, None
    kind = peer.get("kind")
    if kind in NTP_KINDS:
        address = status.get("system_peer") or peer.get("address")
        return SOURCE_NTP, str(address) if address else None
    if kind == "local":
        return SOURCE_LOCAL, None
    return SOURCE_UNSPECIFIED, None


def _distance_ns(status: Mapping[str, Any]) -> int | None:
    distance = int_field(status.get("root_distance_ns"))
    if distance is not None:
        return distance
    delay = int_field(status.get("root_delay_ns"))
    disp = int_field(status.get("root_dispersion_ns"))
    if delay is None or disp is None:
        return None
    return disp + delay // 2


def _poll_s(status: Mapping[str, Any]) -> int | None:
    poll = int_field(status.get("poll_s"))
    if poll is not None and poll > 0:
        return poll
    tc = int_field(status.get("time_constant"))
    if tc is not None and 0 <= tc <= 17:
        return 1 << tc
    return None


def render_stat(status: Mapping[str, Any]) -> tuple[str, int]:
    """The original ntpstat's text (no trailing newline) and exit code (0 synchronised, 1 not)."""
    lines: list[str] = []
    synced = is_synced(status)
    code = EXIT_SYNCED if synced else EXIT_UNSYNCED
    if not synced:
        lines.append("unsynchronised")
        why = sync_reason(status)
        waiting = status.get("reason") in (None, "waiting for samples")
        if int_field(status.get("updates")) == 0 and waiting:
            lines.append("  time server re-starting")
        if why is not None:
            lines.append(f"  reason: {why}")
    else:
        source, address = clock_source(status)
        head = f"synchronised to {CLOCK_SOURCE_NAMES[source]}"
        if source == SOURCE_NTP:
            if address:
                head += f" ({address})"
            else:
                head += " <IP unknown>"
                code = EXIT_UNSYNCED
        stratum = int_field(status.get("stratum"))
        if stratum is None:
            lines.append(head + ", stratum unknown")
            code = EXIT_UNSYNCED
        else:
            lines.append(f"{head} at stratum {stratum}")
        distance = _distance_ns(status)
        if distance is None:
            lines.append("accuracy unknown")
            code = EXIT_UNSYNCED
        else:
            lines.append(f"   time correct to within {distance / 1e6:.0f} ms")
    poll = _poll_s(status)
    if poll is None:
        lines.append("poll interval unknown")
        code = EXIT_UNSYNCED
    else:
        lines.append(f"   polling server every {poll} s")
    return "\n".join(lines), code


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``ntpy stat``: print the state; exit 0 synchronised, 1 not, 2 daemon unreachable."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        reply = query_control(args.control_socket, "status", timeout=args.timeout)
    except ControlError as exc:
        err.write(f"{UNREACHABLE_MESSAGE}\nntpy stat: {exc}\n")
        return EXIT_UNREACHABLE
    if not isinstance(reply.get("synchronized"), bool):
        err.write("ntpy stat: bad reply from the daemon: no 'synchronized' field\n")
        return EXIT_UNREACHABLE
    text, code = render_stat(reply)
    out.write(text + "\n")
    try:
        counters = query_control(args.control_socket, "counters", timeout=args.timeout)
    except ControlError:
        counters = {}
    line = render_fastpath(dict(counters.get("counters", counters)))
    if line:
        out.write(line + "\n")
    return code


def render_fastpath(counters: Mapping[str, Any]) -> str:
    """With ``fastpath xdp`` running: what the kernel answered and passed up (by why);
    nothing otherwise, so the ntpstat text stays as it was."""
    if "xdp_answered" not in counters:
        return ""
    passed = {
        k[len("xdp_pass_") :]: int(v)
        for k, v in sorted(counters.items())
        if k.startswith("xdp_pass_") and isinstance(v, int) and v
    }
    why = ", ".join(f"{k} {v}" for k, v in passed.items())
    return (
        f"   kernel fast path: answered {int(counters['xdp_answered'])}, passed up "
        f"{sum(passed.values())}" + (f" ({why})" if why else "")
    )


def add_stat_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``stat`` to the ``ntpy`` command line."""
    p = subparsers.add_parser(
        "stat",
        help="synchronisation status in the original ntpstat's words "
        "(exit 0 synchronised, 1 not, 2 daemon unreachable)",
    )
    p.add_argument(
        "--control-socket",
        "--socket",
        "-s",
        dest="control_socket",
        metavar="PATH",
        help=SOCKET_HELP,
    )
    add_timeout_option(p)
