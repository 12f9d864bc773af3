"""The ``ntpy`` command: ``serve``, ``check-config`` and ``query``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ntpy import __version__
from ntpy.cli.authdata import add_authdata_parser, run_authdata
from ntpy.cli.doctor import add_doctor_parser
from ntpy.cli.stat import add_stat_parser
from ntpy.cli.sync import add_sync_parser
from ntpy.cli.views import add_clients_parser, add_view_parsers, run_clients, run_peers, run_status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntpy", description="NTP time server and client daemon (reads ntpd's ntp.conf)."
    )
    p.add_argument("--version", action="version", version=f"ntpy {__version__}")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="(each has its own --help)"
    )

    s = sub.add_parser("serve", help="run the NTP server in the foreground, logging to stderr")
    s.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="ntp.conf to read (default: /etc/ntp.conf if it exists, else the built-in "
        "config: local clock at stratum 10)",
    )
    s.add_argument(
        "--listen",
        "-l",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="address to serve on, repeatable; overrides the config "
        "(default: port 123 on all IPv4 and IPv6 addresses)",
    )
    clock = s.add_mutually_exclusive_group()
    clock.add_argument(
        "--clock",
        choices=["auto", "system", "virtual"],
        help="clock to discipline and serve (default: config 'clock', else auto: "
        "system clock with CAP_SYS_TIME, virtual clock without)",
    )
    clock.add_argument(
        "-x",
        dest="clock",
        action="store_const",
        const="virtual",
        help="never touch the system clock: keep a virtual clock (like chronyd -x)",
    )
    s.add_argument(
        "--selector",
        choices=["default", "poll", "select"],
        default="default",
        help="event loop backend; 'poll' uses only poll(2) (for LD_PRELOAD simulators)",
    )
    s.add_argument("--strict", action="store_true", help="unknown config directives are errors")
    s.add_argument(
        "-g",
        dest="allow_panic_step",
        action="store_true",
        help="allow the first clock adjustment to exceed the panic threshold (ntpd -g)",
    )
    s.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="after binding the sockets and opening the files, run as USER (ntpd -u); "
        "overrides the config's 'user'",
    )
    s.add_argument(
        "-F",
        dest="seccomp",
        type=int,
        choices=(-1, 0, 1),
        metavar="LEVEL",
        help="system-call filter after start-up (chronyd -F): 1 allow-list, other calls kill; "
        "-1 other calls are logged by name; 0 none; overrides the config's 'seccomp'",
    )
    s.add_argument(
        "--control-socket",
        metavar="PATH",
        help="UNIX socket for 'ntpy status'/'ntpy peers' ('none' to disable; "
        "default /run/ntpy/ntpy.sock as root)",
    )
    s.add_argument(
        "--workers",
        type=_workers_arg,
        metavar="N",
        help="serving processes sharing the listen addresses ('auto': one per CPU core); "
        "overrides the config's 'workers' (default auto)",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log messages of this level and above (default info)",
    )

    c = sub.add_parser("check-config", help="validate an ntp.conf: exit 0, or 2 with file:line")
    c.add_argument("file", metavar="FILE", help="the ntp.conf to check")
    c.add_argument("--strict", action="store_true", help="unknown directives are errors")

    q = sub.add_parser(
        "query", help="ask a server for the time once, like 'ntpdate -q' (never sets the clock)"
    )
    q.add_argument(
        "server",
        metavar="HOST[:PORT]",
        nargs="+",
        help="server name or address, port 123 unless given; several are asked in turn",
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument(
        "--ntp-version",
        type=int,
        default=4,
        choices=[1, 2, 3, 4],
        dest="ntp_version",
        help="NTP version number to put in the requests (default 4)",
    )
    q.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per try (default 2)")
    q.add_argument(
        "--tries", type=int, default=3, help="requests sent before giving up (default 3)"
    )
    q.add_argument(
        "--samples",
        type=int,
        default=1,
        help="exchanges per server; the one with the lowest delay is reported",
    )
    q.add_argument(
        "--key-file",
        metavar="FILE",
        dest="key_file",
        help="an ntpd or chrony keys file, for --key",
    )
    q.add_argument(
        "--key",
        type=int,
        metavar="N",
        help="sign the requests with key N of --key-file; only replies signed with it count",
    )
    add_view_parsers(sub)
    add_clients_parser(sub)
    add_authdata_parser(sub)
    add_sync_parser(sub)
    add_stat_parser(sub)
    add_doctor_parser(sub)
    return p


def _workers_arg(text: str) -> int:
    from ntpy.config.directives.service import MAX_WORKERS, auto_workers

    if text.strip().lower() == "auto":
        return auto_workers()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_WORKERS} or 'auto', not {text!r}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:  # e.g. `ntpy query ... | head`
        sys.stderr.close()
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        from ntpy.cli.check_config import run

        return run(args.file, args.strict)
    if args.command == "status":
        return run_status(args)
    if args.command == "peers":
        return run_peers(args)
    if args.command == "clients":
        return run_clients(args)
    if args.command == "authdata":
        return run_authdata(args)
    if args.command == "query":
        from ntpy.cli.query import run as run_query

        return run_query(args)
    if args.command == "sync":
        from ntpy.cli.sync import run as run_sync

        return run_sync(args)
    if args.command == "doctor":
        from ntpy.cli.doctor import run as run_doctor

        return run_doctor(args)
    if args.command == "stat":
        from ntpy.cli.stat import run as run_stat

        return run_stat(args)
    return 2  # pragma: no cover - argparse enforces the choices


def _serve(args: argparse.Namespace) -> int:
    from ntpy.cli.serve_config import choose_config
    from ntpy.daemon.app import ServeOptions, serve

    chosen = choose_config(args.config, strict=args.strict)
    if chosen is None:
        return 2
    config = chosen.config
    options = ServeOptions(
        listen=args.listen,
        clock_mode=args.clock,
        selector=args.selector,
        log_level=args.log_level,
        allow_panic_step=args.allow_panic_step,
        control_socket=args.control_socket,
        workers=args.workers,
        config_path=chosen.path,
        config_origin=chosen.origin,
        user=args.user,
        seccomp=args.seccomp,
    )
    return serve(config, options)


if __name__ == "__main__":
    raise SystemExit(main())
