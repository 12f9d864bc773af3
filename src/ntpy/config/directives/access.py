"""Access control: ntpd ``restrict`` and chrony-style ``allow``/``deny``.

Restrict flags are those documented for ntpd 4.2.8 (``accopt.html``/``ntp_acc(5)``,
including the later ``noepeer``, ``nomrulist``, ``serverresponse fuzz`` and ``ippeerlimit``)
and NTPsec. Host names are kept unresolved: resolving is the daemon's job.

``serverresponse fuzz`` (the one two-word flag: fuzz the low bits of the reference time in
replies) is accepted so existing configs load, but ntpy does not fuzz anything, so the line
gets a warning saying so instead of a silent no-op; the valid-flag list in error messages
shows it as the two words it is.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Literal

from ntpy.core.access import RESTRICT_FLAGS as CORE_RESTRICT_FLAGS

from ..model import AccessRule, Family, IPAddress, IPNetwork, RestrictRule, RestrictTarget
from ..state import Args, Directive, Line, State
from ..values import (
    BadValue,
    host_network,
    is_hostname,
    looks_numeric,
    mask_prefixlen,
    numeric_hint,
    parse_int,
    parse_ip,
    parse_network,
    show,
)

# One list of flags for the parser and the enforcer: the core owns it (the parser may
# import the core; the core never imports the parser). ``serverresponse fuzz`` (two words)
# is stored with an underscore.
RESTRICT_FLAGS = CORE_RESTRICT_FLAGS

_FLAG_LIST = ", ".join(sorted(f.replace("_", " ") for f in RESTRICT_FLAGS))

RESTRICT_USAGE = (
    "restrict [-4|-6] default|source|ADDRESS[/PREFIX]|HOSTNAME [mask MASK] "
    "[ippeerlimit N] [FLAG ...]"
)

ALL_V4 = IPv4Network("0.0.0.0/0")
ALL_V6 = IPv6Network("::/0")


def _is_keyword(token: str) -> bool:
    word = token.lower()
    return word in RESTRICT_FLAGS or word in ("mask", "ippeerlimit", "serverresponse")


def handle_restrict(state: State, line: Line) -> None:
    args = Args(line.args)
    family: Family | None = None
    while args.peek() in ("-4", "-6"):
        family = 4 if args.take() == "-4" else 6
    target_text = args.take()
    target, networks, host = _restrict_target(target_text, family)
    mask: IPAddress | None = None
    flags: set[str] = set()
    ippeerlimit: int | None = None
    masked = False
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option == "mask":
            if masked:
                raise BadValue("'mask' given twice")
            if target_text is not None and "/" in target_text:
                raise BadValue("use either ADDRESS/PREFIX or ADDRESS mask MASK, not both")
            masked = True
            mask, networks = _apply_mask(args.take(), target, networks)
            if target == "network":
                mask = None
        elif option == "ippeerlimit":
            ippeerlimit = parse_int(args.take(), "ippeerlimit", -1, 65535)
        elif option == "serverresponse":
            follow = args.take()
            if follow is None or follow.lower() != "fuzz":
                raise BadValue(f"'serverresponse' must be followed by 'fuzz', got {show(follow)}")
            flags.add("serverresponse_fuzz")
            state.warn(
                line.loc,
                "'serverresponse fuzz' has no effect: ntpy does not fuzz the reference time "
                "in its replies (the rest of the line applies)",
            )
        elif option in RESTRICT_FLAGS:
            flags.add(option)
        else:
            raise BadValue(f"unknown restrict flag {show(word)}; valid flags: {_FLAG_LIST}")
    if target == "network" and family is not None and networks[0].version != family:
        raise BadValue(f"-{family} contradicts the IPv{networks[0].version} address")
    state.restricts.append(
        RestrictRule(
            target=target,
            networks=networks,
            host=host,
            mask=mask,
            family=family,
            flags=frozenset(flags),
            ippeerlimit=ippeerlimit,
            location=line.loc,
        )
    )


def _restrict_target(
    token: str | None, family: Family | None
) -> tuple[RestrictTarget, tuple[IPNetwork, ...], str | None]:
    if token is None:
        raise BadValue("'restrict' needs an address: default, source, an IP address or host")
    word = token.lower()
    if word == "mask":
        raise BadValue("'restrict' needs an address before 'mask' (the address is missing)")
    if _is_keyword(token):
        raise BadValue(
            f"'restrict' needs an address (default, source, an IP address or host name) "
            f"before the flags, got {show(token)}"
        )
    if word == "default":
        if family == 4:
            return "default", (ALL_V4,), None
        if family == 6:
            return "default", (ALL_V6,), None
        return "default", (ALL_V4, ALL_V6), None
    if word == "source":
        return "source", (), None
    if "/" in token:
        return "network", (parse_network(token, "restrict"),), None
    ip = parse_ip(token)
    if ip is not None:
        return "network", (host_network(ip),), None
    if looks_numeric(token):
        raise BadValue(numeric_hint(token, example="192.168.1.0"))
    if not is_hostname(token):
        raise BadValue(f"{show(token)} is not an IP address, network or host name")
    return "host", (), token


def _apply_mask(
    token: str | None, target: RestrictTarget, networks: tuple[IPNetwork, ...]
) -> tuple[IPAddress, tuple[IPNetwork, ...]]:
    """Validate ``mask M`` and, for an address target, turn it into a network."""
    mask = parse_ip(token) if token is not None else None
    if mask is None:
        hint = " (the mask itself is missing)" if token is not None and _is_keyword(token) else ""
        raise BadValue(
            f"'mask' needs a netmask such as 255.255.255.0 or ffff:ffff::, got {show(token)}{hint}"
        )
    prefix = mask_prefixlen(mask)
    if prefix is None:
        raise BadValue(f"mask {mask} is not contiguous (expected e.g. 255.255.255.0)")
    if target in ("default", "source"):
        raise BadValue(f"'mask' cannot be used with '{target}'")
    if target == "host":
        return mask, networks
    address = networks[0].network_address
    if address.version != mask.version:
        raise BadValue(f"mask {mask} is not of the same IP version as {address}")
    masked = ip_network((address, prefix), strict=False)
    if masked.network_address != address:
        raise BadValue(
            f"address {address} has host bits set for mask {mask}; "
            f"did you mean {masked.network_address}?"
        )
    return mask, (masked,)


ALLOW_USAGE = "allow|deny [all] [ADDRESS[/PREFIX]|PARTIAL-IPv4|HOSTNAME]"


def handle_allow_deny(state: State, line: Line) -> None:
    action: Literal["allow", "deny"] = "allow" if line.name == "allow" else "deny"
    args = Args(line.args)
    everything = False
    token = args.take()
    if token is not None and token.lower() == "all":
        everything = True
        token = args.take()
    args.expect_end()
    networks: tuple[IPNetwork, ...]
    host: str | None = None
    if token is None:
        networks = (ALL_V4, ALL_V6)
    elif "/" in token:
        networks = (parse_network(token, action),)
    else:
        ip = parse_ip(token)
        partial = _partial_ipv4(token)
        if ip is not None:
            networks = (host_network(ip),)
        elif partial is not None:
            networks = (partial,)
        elif looks_numeric(token):
            raise BadValue(numeric_hint(token, example="192.168.1.0"))
        elif is_hostname(token):
            networks, host = (), token
        else:
            raise BadValue(f"{show(token)} is not an address, network or host name")
    state.access.append(
        AccessRule(action=action, networks=networks, host=host, all=everything, location=line.loc)
    )


def _partial_ipv4(token: str) -> IPNetwork | None:
    """chrony's shorthand: ``192.168`` means 192.168.0.0/16, ``10`` means 10.0.0.0/8."""
    parts = token.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    if any(len(p) > 3 or int(p) > 255 for p in parts):
        return None
    octets = [int(p) for p in parts] + [0] * (4 - len(parts))
    return ip_network((IPv4Address(bytes(octets)), 8 * len(parts)))


DIRECTIVES: dict[str, Directive] = {
    "restrict": Directive(
        handle_restrict,
        RESTRICT_USAGE,
        "ntpd's access control: the most specific matching line applies to a client "
        "(default: every address; source: the configured servers' addresses). Without any "
        "restrict or allow line everyone gets time and only the host itself mode 6 "
        "(ntpq). A public server uses 'restrict default kod nomodify notrap nopeer noquery "
        "limited'.",
        (
            ("-4, -6", "the line applies to IPv4 (-4) or IPv6 (-6) clients only"),
            ("mask MASK", "an IPv4 netmask for ADDRESS (or write ADDRESS/PREFIX)"),
            ("ippeerlimit N", "ntpd's peer limit per address: accepted"),
            ("ignore", "drop every packet"),
            ("noserve", "no time service"),
            ("noquery", "no mode 6 (ntpq) queries"),
            ("limited", "rate-limit time requests (discard, ratelimit, mru)"),
            ("kod", "send kiss-o'-death RATE replies to limited clients (themselves limited)"),
            ("version", "refuse requests of NTP versions before 4"),
            ("notrust", "serve only requests with a valid MAC"),
            ("ntpport", "the line matches only clients sending from port 123"),
            (
                "nomodify, notrap, lowpriotrap, nopeer, noepeer, nomrulist, mssntp, flake",
                "accepted for ntpd configs: ntpy never changes state from the network, has no "
                "traps, peers, MRU list or MS-SNTP",
            ),
            ("serverresponse fuzz", "accepted with a warning: ntpy does not fuzz timestamps"),
        ),
    ),
    "allow": Directive(
        handle_allow_deny,
        ALLOW_USAGE,
        "chrony's access control: serve time to this network, or a partial IPv4 address "
        "(192.168 = 192.168.0.0/16), or a host name; no argument: everyone. 'all' also "
        "overrides the allow/deny lines for its subnets; otherwise the most specific line "
        "wins.",
    ),
    "deny": Directive(
        handle_allow_deny,
        ALLOW_USAGE,
        "chrony's access control: refuse time to the clients of this network; the most "
        "specific allow or deny line wins.",
    ),
}
