"""Files, keys, statistics, interfaces, listen addresses and the directives ntpy skips.

``includefile`` is not here: it needs the include stack, so ``parser.py`` handles it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from ntpy.core.address import AddressError, split_host_port

from ..checks import filegen_file_problem
from ..model import FilegenSpec, InterfaceRule, IPAddress, ListenAddress
from ..state import Args, Directive, Line, State
from ..values import (
    BadValue,
    host_network,
    parse_float,
    parse_int,
    parse_ip,
    parse_network,
    show,
)

FILE_DIRECTIVES = ("driftfile", "logfile", "leapfile", "pidfile", "statsdir", "keys")

STATISTICS_NAMES = (
    "clockstats",
    "cryptostats",
    "loopstats",
    "peerstats",
    "protostats",
    "rawstats",
    "sysstats",
    "timingstats",
    "usestats",
)
"""ntpd's statistics files (``monopt.html``) plus NTPsec's ``usestats``."""

FILEGEN_TYPES = ("none", "pid", "day", "week", "month", "year", "age")

UNSUPPORTED_NTPD_DIRECTIVES = frozenset(
    {
        "automax",
        "calldelay",
        "crypto",
        "device",
        "dscp",
        "keysdir",
        "manycastclient",
        "manycastserver",
        "mdnstries",
        "multicastclient",
        "nonvolatile",
        "ntpsigndsocket",
        "phone",
        "qos",
        "reset",
        "revoke",
        "rlimit",
        "saveconfigdir",
        "setvar",
        "tick",
        "trap",
        "ttl",
        "unconfig",
        "unpeer",
    }
)
"""Real ntpd/NTPsec directives that ntpy accepts but does not act on (warned, not fatal)."""

_INTERFACE_NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}\Z")
_LOGCONFIG_RE = re.compile(r"[=+-]?[A-Za-z]{1,32}\Z")


def handle_file(state: State, line: Line) -> None:
    args = Args(line.args)
    path = args.take()
    if path is None or not path:
        raise BadValue(f"'{line.name}' needs a path, got {show(path)}")
    if "\x00" in path:
        raise BadValue(f"'{line.name}' path contains a NUL character")
    args.expect_end()
    state.set_file(line.name, path, line.loc)
    if line.name == "driftfile" and state.tinker.freq is not None:
        state.warn(line.loc, "'tinker freq' overrides the frequency read from the driftfile")


def _key_id(token: str | None, what: str) -> int:
    return parse_int(token, what, 1, 65535)


def handle_trustedkey(state: State, line: Line) -> None:
    """``trustedkey 1 2 (10 ... 15)`` — ntpd's range syntax; parentheses may touch numbers."""
    text = " ".join(line.args)
    for mark in ("(", ")", "..."):
        text = text.replace(mark, f" {mark} ")
    args = Args(tuple(text.split()))
    if args.empty():
        raise BadValue("'trustedkey' needs at least one key id")
    while not args.empty():
        token = args.take()
        if token == "(":
            first = _key_id(args.take(), "trustedkey range start")
            dots = args.take()
            if dots != "...":
                raise BadValue(f"a key range needs '...' between its ends, got {show(dots)}")
            last = _key_id(args.take(), "trustedkey range end")
            close = args.take()
            if close != ")":
                raise BadValue(f"a key range must end with ')', got {show(close)}")
            if first > last:
                raise BadValue(f"key range ({first} ... {last}) is empty: start > end")
            state.trustedkeys.update(range(first, last + 1))
        else:
            state.trustedkeys.add(_key_id(token, "trustedkey"))
    state.file_locations["trustedkey"] = line.loc  # for the keys-file check (config.checks)


def handle_single_key(state: State, line: Line) -> None:
    args = Args(line.args)
    key = _key_id(args.take(), line.name)
    args.expect_end()
    if line.name == "requestkey":
        state.requestkey = key
    else:
        state.controlkey = key
    state.file_locations[line.name] = line.loc


def handle_statistics(state: State, line: Line) -> None:
    args = Args(line.args)
    if args.empty():
        raise BadValue("'statistics' needs at least one name")
    while not args.empty():
        word = args.take() or ""
        state.statistics.add(_statistics_name(word))
    state.file_locations["statistics"] = line.loc  # for the statsdir check (config.checks)


def _statistics_name(word: str) -> str:
    name = word.lower()
    if name not in STATISTICS_NAMES:
        raise BadValue(
            f"unknown statistics name {show(word)}; valid: {', '.join(STATISTICS_NAMES)}"
        )
    return name


def handle_filegen(state: State, line: Line) -> None:
    args = Args(line.args)
    first = args.take()
    if first is None:
        raise BadValue("'filegen' needs a statistics name")
    name = _statistics_name(first)
    spec = state.filegens.get(name) or FilegenSpec(name=name, location=line.loc)
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option == "file":
            path = args.take()
            if not path:
                raise BadValue(f"'file' needs a file name, got {show(path)}")
            problem = filegen_file_problem(path)
            if problem is not None:
                state.warn(line.loc, f"filegen {name} file {show(path)} {problem}; using {name!r}")
            spec = replace(spec, file=path)
        elif option == "type":
            kind = args.take()
            if kind is None or kind.lower() not in FILEGEN_TYPES:
                raise BadValue(f"'type' needs one of {'|'.join(FILEGEN_TYPES)}, got {show(kind)}")
            spec = replace(spec, filetype=kind.lower())
        elif option in ("enable", "disable"):
            spec = replace(spec, enabled=option == "enable")
        elif option in ("link", "nolink"):
            spec = replace(spec, link=option == "link")
        else:
            raise BadValue(f"unknown filegen option {show(word)}")
    state.filegens[name] = spec


_INTERFACE_ACTIONS: dict[str, Literal["listen", "ignore", "drop"]] = {
    "listen": "listen",
    "ignore": "ignore",
    "drop": "drop",
}
_INTERFACE_CLASSES: dict[str, Literal["all", "ipv4", "ipv6", "wildcard"]] = {
    "all": "all",
    "ipv4": "ipv4",
    "ipv6": "ipv6",
    "wildcard": "wildcard",
}


def handle_interface(state: State, line: Line) -> None:
    args = Args(line.args)
    action_word = args.take()
    action = _INTERFACE_ACTIONS.get(action_word.lower()) if action_word is not None else None
    if action is None:
        raise BadValue(f"'{line.name}' needs listen, ignore or drop, got {show(action_word)}")
    what = args.take()
    args.expect_end()
    if what is None:
        raise BadValue(f"'{line.name} {action}' needs all, ipv4, ipv6, wildcard, a name or address")
    loc = line.loc
    rule: InterfaceRule
    address_class = _INTERFACE_CLASSES.get(what.lower())
    if address_class is not None:
        rule = InterfaceRule(action=action, match=address_class, location=loc)
    elif "/" in what:
        network = parse_network(what, line.name)
        rule = InterfaceRule(action=action, match="network", network=network, location=loc)
    elif (ip := parse_ip(what)) is not None:
        network = host_network(ip)
        rule = InterfaceRule(action=action, match="network", network=network, location=loc)
    elif _INTERFACE_NAME_RE.match(what):
        rule = InterfaceRule(action=action, match="name", name=what, location=loc)
    else:
        raise BadValue(f"{show(what)} is not an interface name or address")
    state.interfaces.append(rule)


def handle_listen(state: State, line: Line) -> None:
    args = Args(line.args)
    token = args.take()
    if token is None:
        raise BadValue("'listen' needs an address")
    args.expect_end()
    address, port = _listen_address(token)
    state.listen.append(ListenAddress(address=address, port=port, location=line.loc))


def _listen_address(token: str) -> tuple[IPAddress, int]:
    address, port = listen_endpoint(token)
    return address, 123 if port is None else port


def listen_endpoint(token: str) -> tuple[IPAddress, int | None]:
    """An IP address with the port written after it (None if none), read by the one
    address parser (``ntpy.core.address``); host names are refused."""
    not_ip = BadValue(f"{show(token)} is not an IP address (host names are not accepted here)")
    try:
        hp = split_host_port(token)
    except AddressError:
        raise not_ip from None
    if hp.bracketed:
        if not hp.host or (hp.port_text is not None and ":" in hp.port_text):
            raise not_ip
        ip = parse_ip(hp.host)
        if not isinstance(ip, IPv6Address):
            raise BadValue(f"{show(hp.host)} in brackets must be an IPv6 address")
        return ip, None if hp.port_text is None else _port(hp.port_text)
    ip = parse_ip(token)
    if ip is not None:
        return ip, None
    if hp.port_text is not None:
        ip = parse_ip(hp.host)
        if isinstance(ip, IPv4Address):
            return ip, _port(hp.port_text)
    elif isinstance(parse_ip(token.rpartition(":")[0]), IPv6Address):
        raise BadValue("write an IPv6 address with a port as [ADDRESS]:PORT")
    raise not_ip


def _port(text: str) -> int:
    return parse_int(text, "port", 0, 65535)


def handle_logconfig(state: State, line: Line) -> None:
    if not line.args:
        raise BadValue("'logconfig' needs at least one keyword")
    for word in line.args:
        if not _LOGCONFIG_RE.match(word):
            raise BadValue(f"{show(word)} is not a logconfig keyword (like =syncall or +sysevents)")
        state.logconfig.append(word)


def handle_broadcastdelay(state: State, line: Line) -> None:
    args = Args(line.args)
    state.broadcastdelay = parse_float(args.take(), "broadcastdelay", 0.0, 1.0, unit="seconds")
    args.expect_end()


def handle_unsupported(state: State, line: Line) -> None:
    state.warn(line.loc, f"ntpd directive {show(line.written)} is not supported by ntpy (ignored)")


_FILE_DOCS = {
    "driftfile": "The clock's frequency, read at start and written atomically (temp file, "
    "fsync, rename) every hour and at exit. Its directory also holds the NTS cookie keys "
    "(ntscookies.json) unless 'nts cookie' says otherwise. Default: none (no drift kept).",
    "logfile": "Log lines go to this file as well as to stderr; SIGHUP reopens it "
    "(logrotate). Default: stderr only (the journal under systemd).",
    "leapfile": "The IETF/NIST/IERS leap-seconds.list (Debian's tzdata installs "
    "/usr/share/zoneinfo/leap-seconds.list). Its SHA-1 (#h line) is checked: a corrupt or "
    "unreadable file is ignored with a warning; past its expiry (#@ line) it is still read "
    "but warned about, and upstream leap announcements decide. A valid file decides the "
    "leap over the upstreams' majority vote. The leap is announced to clients (LI) during "
    "the month that ends with it, as ntpd does, and performed at the end of that month: "
    "by the kernel (STA_INS/STA_DEL) on the system clock, as a step at 23:59:60 on the "
    "virtual clock. SIGHUP reloads it. Default: none (upstream votes only).",
    "pidfile": "ntpd's PID file: accepted, not written (systemd tracks the main PID).",
    "statsdir": "The directory of the statistics files (see statistics and filegen).",
    "keys": "The symmetric key file, in ntpd's format ('1 SHA1 <40 hex digits>') or "
    "chrony's ('1 SHA1 HEX:...', 'ASCII:...'); check-config and start-up read it. A change "
    "needs a restart.",
}
_INTERFACE_OPTIONS = (
    (
        "listen ADDR",
        "listen on this single address, port 123 (a network is ignored with a warning)",
    ),
    ("ignore|drop ipv4|ipv6", "do not listen on the IPv4 (IPv6) wildcard"),
    ("ignore|drop all|wildcard", "listen on no wildcard address"),
    ("NAME", "an interface name: accepted, ignored (name addresses instead)"),
    ("ADDR/PREFIX", "a single-address prefix is ADDR; a wider network is ignored with a warning"),
)
_INTERFACE_DOC = (
    "ntpd's choice of listen sockets (default: port 123 on the IPv4 and IPv6 wildcard "
    "addresses). The listen directive and 'ntpy serve --listen' take precedence."
)

DIRECTIVES: dict[str, Directive] = {
    **{name: Directive(handle_file, f"{name} PATH", _FILE_DOCS[name]) for name in FILE_DIRECTIVES},
    "trustedkey": Directive(
        handle_trustedkey,
        "trustedkey KEYID ... [(FIRST ... LAST)]",
        "The keys of the keys file that may be used: for MACs on replies to clients that "
        "sign with them, and for 'server HOST key N'. A range is written (1 ... 10).",
    ),
    "requestkey": Directive(
        handle_single_key,
        "requestkey KEYID (1..65535)",
        "ntpd's mode 7 key: checked against the keys file; mode 7 is never answered.",
    ),
    "controlkey": Directive(
        handle_single_key,
        "controlkey KEYID (1..65535)",
        "ntpd's mode 6 write key: checked against the keys file; ntpy refuses every mode 6 write.",
    ),
    "statistics": Directive(
        handle_statistics,
        "statistics " + "|".join(STATISTICS_NAMES) + " ...",
        "The statistics files to write in statsdir: loopstats and peerstats, in ntpd's "
        "format byte for byte (NTPsec's ntpviz reads them). The other names are accepted "
        "and logged as not produced.",
    ),
    "filegen": Directive(
        handle_filegen,
        "filegen NAME [file FILE] [type " + "|".join(FILEGEN_TYPES) + "] [enable|disable] "
        "[link|nolink]",
        "How a statistics file is named and rotated.",
        (
            ("file FILE", "the file name in statsdir (default: the statistics name)"),
            (
                "type " + "|".join(FILEGEN_TYPES),
                "rotation: day writes loopstats.YYYYMMDD (default day)",
            ),
            ("enable|disable", "write this file or not (default enable, with statistics)"),
            ("link|nolink", "keep the plain name a symlink to the current file (default link)"),
        ),
    ),
    "interface": Directive(
        handle_interface,
        "interface listen|ignore|drop all|ipv4|ipv6|wildcard|NAME|ADDR[/PREFIX]",
        _INTERFACE_DOC,
        _INTERFACE_OPTIONS,
    ),
    "nic": Directive(
        handle_interface,
        "nic listen|ignore|drop all|ipv4|ipv6|wildcard|NAME|ADDR[/PREFIX]",
        "Another name for interface.",
    ),
    "listen": Directive(
        handle_listen,
        "listen IPv4[:PORT] | IPv6 | [IPv6]:PORT",
        "ntpy's own: an address (and port, default 123) to answer NTP on; repeatable, and "
        "it replaces the defaults. 'ntpy serve --listen' overrides it. Under socket "
        "activation, the sockets systemd passes must match these addresses.",
    ),
    "logconfig": Directive(
        handle_logconfig,
        "logconfig [=|+|-]KEYWORD ...",
        "ntpd's log event classes: accepted; ntpy logs each change of state once (sync "
        "gained or lost, steps, source changes) whatever this says.",
    ),
    "broadcastdelay": Directive(
        handle_broadcastdelay,
        "broadcastdelay SECONDS",
        "The broadcast client's (ntpd's) assumed one-way delay from a broadcast server, "
        "0..1 s (default 0.004): a mode 5 sample's offset is its transmit time plus half "
        "of this minus our receive time, and its delay is this.",
    ),
    **{
        name: Directive(
            handle_unsupported,
            name,
            "An ntpd directive ntpy does not support: the line is ignored with a warning "
            "(an error with check-config --strict).",
        )
        for name in UNSUPPORTED_NTPD_DIRECTIVES
    },
}
