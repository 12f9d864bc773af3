"""``ntpy authdata``: how each source is authenticated, like ``chronyc authdata``.

Why its own view: ``ntpy peers`` says only ``nts``/``key N``/``none`` and whether the last
reply was authentic; an operator debugging NTS needs the rest -- the AEAD agreed, when the
last key exchange succeeded, how many were tried, the NAKs, the cookies held and their
length, and the last key-exchange error. It reads the ``peers`` reply of the control
socket (``SourceStatus``'s ``nts_*`` fields).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from ntpy.cli.views import EXIT_UNKNOWN, _add_common, _print_json, peers_reply, pretty_interval

HEAD = (
    f"{'Name/IP address':<27} {'Mode':>5} {'KeyID':>5} {'AEAD':>16} {'KE ago':>7} "
    f"{'Tries':>5} {'NAKs':>4} {'Cook':>4} {'CLen':>4} {'Fail':>4}"
)


def _mode(src: Mapping[str, Any]) -> tuple[str, str]:
    auth = str(src.get("auth") or "none")
    if auth.startswith("key "):
        return "key", auth[4:]
    return auth, "-"


def _ago(ns: object, now_ns: int) -> str:
    if not isinstance(ns, int) or isinstance(ns, bool):
        return "-"
    return pretty_interval(max(0, (now_ns - ns) // 1_000_000_000))


def render_authdata(reply: Mapping[str, Any], now_ns: int | None = None) -> str:
    """The table (no trailing newline), then one line per NTS source whose last key
    exchange failed, saying why."""
    now = time.time_ns() if now_ns is None else now_ns
    lines = [HEAD, "=" * len(HEAD)]
    errors = []
    for src in reply.get("sources") or []:
        if not isinstance(src, Mapping) or src.get("kind") == "local":
            continue
        mode, keyid = _mode(src)
        name = str(src.get("name") or src.get("address") or "?")
        nts = mode == "nts"

        def num(field: str, src: Mapping[str, Any] = src, nts: bool = nts) -> str:
            value = src.get(field)
            return str(value) if nts and isinstance(value, int) else "-"

        lines.append(
            f"{name[:27]:<27} {mode:>5} {keyid:>5} {src.get('nts_aead') or '-'!s:>16} "
            f"{_ago(src.get('nts_last_ke_ns'), now) if nts else '-':>7} "
            f"{num('nts_ke_attempts'):>5} {num('nts_naks'):>4} {num('nts_cookies'):>4} "
            f"{num('nts_cookie_length'):>4} {int(src.get('auth_failures') or 0):>4}"
        )
        if nts and src.get("nts_ke_error"):
            errors.append(f"{name}: last key exchange failed: {src['nts_ke_error']}")
    return "\n".join(lines + errors)


def run_authdata(args: argparse.Namespace) -> int:
    """Exit 0, or 2 if the daemon cannot be asked or replies nonsense."""
    reply = peers_reply(args)
    if reply is None:
        return EXIT_UNKNOWN
    if getattr(args, "json", False):
        _print_json(reply)
    else:
        sys.stdout.write(render_authdata(reply) + "\n")
    return 0


def add_authdata_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "authdata",
        help="each source's authentication (nts/key/none, AEAD, cookies), like 'chronyc authdata'",
    )
    _add_common(p)
