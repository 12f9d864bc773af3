"""``ntpy status`` and ``ntpy peers``: the daemon's state as ``ntpstat`` and ``ntpq -p`` show it.

Admins and monitoring scripts already parse those two outputs, so the text is theirs line
for line and column for column: ``status`` follows ntpstat (the script shipped by current
distributions) including its exit codes (0 synchronised, 1 not, 2 the daemon cannot be
asked), and ``peers`` follows NTPsec's ``ntpq -p`` (tally, remote cut at 15 characters,
kiss-code refids in dots, when/poll in s/m/h/d, reach in octal, ms with adaptive decimals
in 8 columns). Both take the JSON the control socket returns, so rendering is pure and
is tested with plain dicts; ``--json`` prints that JSON unchanged for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from ntpy.daemon.control import ControlError, query_control
from ntpy.daemon.control_paths import SOCKET_HELP

PEERS_HEADER = "     remote           refid      st t when poll reach   delay   offset   jitter"
PEERS_RULE = "=" * len(PEERS_HEADER)
REMOTE_WIDTH = 15
REFID_WIDTH = 15
NTP_KINDS = frozenset({"server", "pool", "peer", "broadcast"})

EXIT_SYNCED = 0
EXIT_UNSYNCED = 1
EXIT_UNKNOWN = 2


# ---------------------------------------------------------------------------------------
# ntpstat


def int_field(value: object) -> int | None:
    """An int field of the reply, or None if it is missing or of the wrong type."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def system_peer(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The source the daemon follows: by id, else by address, else the one tallied '*'
    (e.g. the local clock, which is not a network system peer)."""
    sources = status.get("sources")
    if not isinstance(sources, list | tuple):
        return None
    entries = [s for s in sources if isinstance(s, Mapping)]
    peer_id = int_field(status.get("system_peer_id"))
    address = status.get("system_peer")
    for pick in (
        lambda s: peer_id is not None and int_field(s.get("id")) == peer_id,
        lambda s: bool(address) and s.get("address") == address,
        lambda s: s.get("tally") == "*",
    ):
        for src in entries:
            if pick(src):
                return src
    return None


def _is_local_refid(refid: object) -> bool:
    text = str(refid or "").strip(".")
    return text in ("LOCL", "LOCAL") or text.startswith("127.127.1.")


def sync_target(status: Mapping[str, Any]) -> str:
    """ntpstat's words for what the clock follows.

    ntpstat names ntpd's clock-source code: "NTP server (address)" for a network peer,
    "local net" for the LOCAL driver (127.127.1.x, chrony's ``local``), and "unspecified"
    when there is no system peer. A reference clock gets the modern script's
    "reference clock".
    """
    peer = system_peer(status)
    kind = peer.get("kind") if peer is not None else None
    address = status.get("system_peer") or (peer.get("address") if peer is not None else None)
    if kind in NTP_KINDS or (peer is None and address and not _is_local_refid(address)):
        return f"NTP server ({address})" if address else "NTP server"
    if kind == "local" or (peer is None and _is_local_refid(status.get("refid"))):
        return "local net"
    if kind == "refclock":
        return "reference clock"
    return "unspecified"


def sync_reason(status: Mapping[str, Any]) -> str | None:
    """``reason: detail`` when the daemon is not following an upstream source, else None.

    The daemon sends a ``SyncReason`` value (e.g. "no majority") and a sentence with the
    numbers; an older daemon sends neither, and then nothing is shown.
    """
    reason = status.get("reason")
    if not isinstance(reason, str) or not reason or reason == "synchronized":
        return None
    detail = status.get("reason_detail")
    return f"{reason}: {detail}" if isinstance(detail, str) and detail else reason


def is_synced(status: Mapping[str, Any]) -> bool:
    """The one test of "synchronised" that status, stat and peers all use."""
    return status.get("synchronized") is True and status.get("leap") != 3


def peers_headline(status: Mapping[str, Any]) -> str | None:
    """The line above the ``ntpy peers`` table: the sync state as ``ntpy stat`` says it, and
    why, so the table's tallies never have to be decoded to learn why nothing is '*'."""
    if not isinstance(status.get("synchronized"), bool):
        return None
    why = sync_reason(status)
    if not is_synced(status):
        return f"unsynchronised: {why}" if why else "unsynchronised"
    head = render_status(status)[0].splitlines()[0]
    if why is None:
        return head
    return f"{head} ({why})" if why.startswith("holdover") else f"{head} (upstream: {why})"


def render_status(status: Mapping[str, Any], max_error_ms: float | None = None) -> tuple[str, int]:
    """ntpstat's text (no trailing newline) and exit code: 0 synchronised, 1 not.

    Missing fields degrade the way ntpstat does ("stratum unknown", "accuracy unknown",
    "poll interval unknown") rather than failing. With ``max_error_ms`` (ntpstat -m) a
    larger error bound makes the clock count as unsynchronised.
    """
    synced = is_synced(status)
    lines: list[str] = []
    code = EXIT_SYNCED if synced else EXIT_UNSYNCED
    if synced:
        stratum = int_field(status.get("stratum"))
        target = sync_target(status)
        if stratum is not None:
            lines.append(f"synchronised to {target} at stratum {stratum}")
        else:
            lines.append(f"synchronised to {target}, stratum unknown")
        distance_ns = int_field(status.get("root_distance_ns"))
        if distance_ns is not None:
            distance_ms = distance_ns / 1e6
            line = f"   time correct to within {distance_ms:.0f} ms"
            if max_error_ms is not None and distance_ms > max_error_ms:
                line += f" (exceeded maximum of {max_error_ms:g} ms)"
                code = EXIT_UNSYNCED
            lines.append(line)
        else:
            lines.append("accuracy unknown")
            if max_error_ms is not None:
                code = EXIT_UNSYNCED
    else:
        lines.append("unsynchronised")
        why = sync_reason(status)
        if why is not None:
            lines.append(f"  reason: {why}")
    poll = int_field(status.get("poll_s"))
    if poll is not None and poll > 0:
        lines.append(f"   polling server every {poll} s")
    else:
        lines.append("poll interval unknown")
    return "\n".join(lines), code


# ---------------------------------------------------------------------------------------
# ntpq -p


def pretty_interval(seconds: object) -> str:
    """ntpq's when/poll: seconds up to 2048, then rounded minutes, hours, days."""
    value = int_field(seconds)
    if value is None or value <= 0:
        return "-"
    if value <= 2048:
        return str(value)
    value = (value + 29) // 60
    if value <= 300:
        return f"{value}m"
    value = (value + 29) // 60
    if value <= 96:
        return f"{value}h"
    return f"{(value + 11) // 24}d"


def format_ms(ns: object) -> str:
    """A duration in ms in 8 columns: 3 decimals, fewer only when the number needs room."""
    if isinstance(ns, bool) or not isinstance(ns, int | float):
        return f"{'-':>8}"
    ms = ns / 1e6
    if math.isnan(ms):
        return f"{'nan':>8}"
    for decimals in (3, 2, 1):
        text = f"{ms:8.{decimals}f}"
        if len(text) <= 8:
            return text
    return f"{ms:8.0f}"


def format_refid(refid: object) -> str:
    """Kiss codes and clock names in dots (``.GPS.``); addresses as they are.

    Too long (an IPv6 refid text): cut on the left with a leading '-', keeping the
    low-order part that tells addresses apart, as ntpq does.
    """
    text = str(refid) if refid is not None else ""
    if "." not in text and ":" not in text:
        text = f".{text}."
    if len(text) > REFID_WIDTH:
        text = "-" + text[-(REFID_WIDTH - 1) :]
    return text


def _remote(src: Mapping[str, Any], numeric: bool) -> str:
    name = str(src.get("name") or "")
    address = str(src.get("address") or "")
    if src.get("kind") == "local" or not numeric:
        return name or address  # LOCAL(0) stays a name even with -n, as in ntpq
    return address or name


def peer_line(src: Mapping[str, Any], numeric: bool) -> str:
    """One ``ntpq -p`` row (79 columns unless a number overflows its field)."""
    tally = str(src.get("tally") or " ")[:1]
    remote = _remote(src, numeric)
    stratum = int_field(src.get("stratum"))
    type_char = str(src.get("type_char") or "?")[:1]
    reach = int_field(src.get("reach")) or 0
    return (
        f"{tally}{remote:<{REMOTE_WIDTH}.{REMOTE_WIDTH}} "
        f"{format_refid(src.get('refid')):<{REFID_WIDTH}} "
        f"{16 if stratum is None else stratum:2d} {type_char} "
        f"{pretty_interval(src.get('when_s')):>4.4} {pretty_interval(src.get('poll_s')):>4.4}  "
        f"{reach & 0xFF:3o} "
        f"{format_ms(src.get('delay_ns'))} {format_ms(src.get('offset_ns'))} "
        f"{format_ms(src.get('jitter_ns'))}"
    )


def auth_line(src: Mapping[str, Any], numeric: bool) -> str | None:
    """The line below the table for an authenticated source: ``auth REMOTE: key N,
    authentic`` or ``auth REMOTE: nts, authentic`` (or why not; for NTS, the cookies held
    or the last key-exchange error). None for an unauthenticated source."""
    mode = src.get("auth")
    if not isinstance(mode, str) or mode == "none":
        return None
    refused = int_field(src.get("auth_failures")) or 0
    if src.get("authentic") is True:
        verdict = "authentic"
    elif refused:
        verdict = "NOT authentic"
    else:
        verdict = "no reply yet"
    if refused:
        verdict += f", {refused} repl{'y' if refused == 1 else 'ies'} refused"
    if mode == "nts":
        error = src.get("nts_ke_error")
        verdict += (
            f", key exchange failed: {error}"
            if error
            else (f", {int_field(src.get('nts_cookies')) or 0} cookies")
        )
    return f"auth {_remote(src, numeric)}: {mode}, {verdict}"


def xleave_line(src: Mapping[str, Any], numeric: bool) -> str | None:
    """The line below the table for an ``xleave`` source: whether its last sample was
    interleaved (chrony's ``ntpdata`` ``Interleaved``), and how many were. None for the
    others."""
    if src.get("xleave") is not True:
        return None
    total = int_field(src.get("samples_total")) or 0
    inter = int_field(src.get("samples_interleaved")) or 0
    if not total:
        mode = "no sample yet"
    elif src.get("interleaved") is True:
        mode = "interleaved"
    else:
        mode = "basic mode (the server did not interleave)"
    return f"xleave {_remote(src, numeric)}: {mode}, {inter} of {total} samples interleaved"


def render_peers(status: Mapping[str, Any], numeric: bool = False) -> str:
    """The ``ntpq -p`` table (no trailing newline): header, rule, one row per source.

    The columns stay ntpq's. Sources with a key get one ``auth ...`` line each below the
    table, and ``xleave`` sources one ``xleave ...`` line (none when no source uses either,
    so the output is ntpq's as before)."""
    lines = [PEERS_HEADER, PEERS_RULE]
    sources = status.get("sources")
    if isinstance(sources, list | tuple):
        rows = [src for src in sources if isinstance(src, Mapping)]
        lines.extend(peer_line(src, numeric) for src in rows)
        lines.extend(line for src in rows if (line := auth_line(src, numeric)) is not None)
        lines.extend(line for src in rows if (line := xleave_line(src, numeric)) is not None)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The subcommands


def _query(args: argparse.Namespace, cmd: str) -> dict[str, Any] | None:
    try:
        return query_control(
            getattr(args, "socket", None), cmd, timeout=getattr(args, "timeout", 2.0)
        )
    except ControlError as exc:
        print(f"ntpy: {exc}", file=sys.stderr)
        return None


def _print_json(reply: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(reply, indent=2, sort_keys=True) + "\n")


def run_status(args: argparse.Namespace) -> int:
    """``ntpy status``: exit 0 synchronised, 1 not, 2 the daemon cannot be asked."""
    reply = _query(args, "status")
    if reply is None:
        return EXIT_UNKNOWN
    text, code = render_status(reply, getattr(args, "max_error", None))
    if getattr(args, "json", False):
        _print_json(reply)
    else:
        sys.stdout.write(text + "\n")
    return code


def peers_reply(args: argparse.Namespace) -> dict[str, Any] | None:
    """The daemon's ``peers`` reply, or None (said on stderr) if it cannot be asked or its
    reply has no sources list."""
    reply = _query(args, "peers")
    if reply is None:
        return None
    if not isinstance(reply.get("sources"), list):
        print("ntpy: bad reply from the daemon: no 'sources' list", file=sys.stderr)
        return None
    return reply


def run_peers(args: argparse.Namespace) -> int:
    """``ntpy peers``: exit 0, or 2 if the daemon cannot be asked or replies nonsense."""
    reply = peers_reply(args)
    if reply is None:
        return EXIT_UNKNOWN
    if getattr(args, "json", False):
        _print_json(reply)
        return 0
    headline = peers_headline(reply)
    if headline is not None:
        sys.stdout.write(headline + "\n")
    sys.stdout.write(render_peers(reply, getattr(args, "numeric", False)) + "\n")
    if not reply["sources"]:
        print("ntpy: no sources (no server, pool, peer or refclock is polled)", file=sys.stderr)
    return 0


def positive_float(text: str) -> float:
    """argparse type for ``--timeout`` and the like: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        "-s",
        metavar="PATH",
        help=SOCKET_HELP,
    )
    p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    add_timeout_option(p)


def add_timeout_option(p: argparse.ArgumentParser) -> None:
    """``--timeout SECONDS`` for the commands that ask the daemon (default 2 s)."""
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="give up if the daemon does not answer in time (default 2)",
    )


def add_view_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` and ``peers`` to the ``ntpy`` command line."""
    s = subparsers.add_parser(
        "status",
        help="synchronisation status like ntpstat: exit 0 synchronised, 1 not, 2 unknown",
    )
    _add_common(s)
    s.add_argument(
        "--max-error",
        "-m",
        type=positive_float,
        dest="max_error",
        metavar="MS",
        help="also exit 1 if the error bound exceeds MS milliseconds (ntpstat -m)",
    )
    p = subparsers.add_parser("peers", help="the daemon's time sources like 'ntpq -p'")
    _add_common(p)
    p.add_argument(
        "-n",
        "--numeric",
        action="store_true",
        help="show addresses instead of the configured host names",
    )


def format_client_interval(seconds: object) -> str:
    """A client's average request interval: seconds as ntpq's when/poll, below one second
    in ms (below 1 ms in us). Sub-second averages are the abusive clients this view is for,
    so they must never round down to a blank."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    us = int(seconds * 1_000_000 + 0.5)
    if us < 1000:
        return f"{us}us"
    ms = int(seconds * 1000 + 0.5)
    if ms < 1000:
        return f"{ms}ms"
    return pretty_interval(round(seconds))


def render_clients(reply: Mapping[str, Any], now_note: str = "") -> str:
    """``ntpy clients``: the busiest clients of the rate limiter's table, like ``chronyc clients``.

    One row per client: address (IPv6 clients are tracked per /64), requests, requests
    dropped by the limiter, KoD replies sent, average interval between requests, and how long
    ago it was last seen.
    """
    rows = reply.get("clients") or []
    head = f"{'address':<40} {'requests':>9} {'drops':>7} {'kod':>5} {'interval':>9} {'last':>7}"
    lines = [head, "=" * len(head)]
    for c in rows:
        avg = c.get("avg_interval_s")
        interval = format_client_interval(avg)
        ago = c.get("last_seen_ago_s")
        last = "-" if ago is None else pretty_interval(int(ago))
        lines.append(
            f"{c.get('address', '?')!s:<40} {int(c.get('requests', 0)):>9} "
            f"{int(c.get('drops', 0)):>7} {int(c.get('kods', 0)):>5} {interval:>9} {last:>7}"
        )
    if not rows:
        lines.append(
            "(no clients tracked: rate limiting applies to clients matched by "
            "'restrict ... limited')"
        )
    return "\n".join(lines) + "\n" + _render_kernel_clients(reply) + now_note


def _render_kernel_clients(reply: Mapping[str, Any]) -> str:
    """With ``fastpath xdp``: what the kernel answered (those requests are not above), per
    ``limited`` client where it keeps a bucket, else as a total."""
    if "kernel_answered" not in reply:
        return ""
    out = [f"served in the kernel (fastpath xdp): {int(reply['kernel_answered'])} requests"]
    rows = reply.get("kernel_clients") or []
    if rows:
        head = f"{'address':<40} {'answered':>9} {'over':>7}"
        out += [head, "=" * len(head)]
        for c in rows:
            out.append(
                f"{c.get('address', '?')!s:<40} {int(c.get('answered', 0)):>9} "
                f"{int(c.get('over', 0)):>7}"
            )
    return "\n".join(out) + "\n"


def run_clients(args: argparse.Namespace) -> int:
    """``ntpy clients``: exit 0, or 2 if the daemon cannot be asked."""
    reply = _query(args, "clients")
    if reply is None:
        return EXIT_UNKNOWN
    if getattr(args, "json", False):
        _print_json(reply)
    else:
        sys.stdout.write(render_clients(reply))
    return 0


def add_clients_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = subparsers.add_parser(
        "clients", help="the busiest NTP clients (rate-limited ones), like 'chronyc clients'"
    )
    _add_common(c)
