"""``broadcast ADDR [key N] [ttl N] [minpoll N] [version N] [port N]``: ntpd's broadcast
server; ``broadcastclient [novolley]``: its client (``ntpy.core.bcastclient``). Every
2**minpoll s a mode 5 packet with our time goes to ADDR (a broadcast address, or a
multicast group with ``ttl`` hops). A client cannot check such a packet's origin, so
anything but a LAN you own needs ``key N`` (then the key must be trusted, as for
``server ... key N``: checked in the parser's finish)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from ..model import BroadcastSpec
from ..state import Args, Directive, Line, State
from ..values import BadValue, parse_int, parse_ip, show

CLIENT_USAGE = "broadcastclient [novolley]"
USAGE = "broadcast ADDRESS [key N] [ttl N] [minpoll N] [version N] [port N]"
_INT_OPTIONS: dict[str, tuple[int, int]] = {
    "key": (1, 65535),
    "ttl": (1, 255),
    "minpoll": (3, 17),
    "version": (3, 4),
    "port": (1, 65535),
}


def handle_broadcastclient(state: State, line: Line) -> None:
    args = Args(line.args)
    word = args.take()
    if word is not None and word.lower() != "novolley":
        raise BadValue(f"unknown option {show(word)} for 'broadcastclient' (usage: {CLIENT_USAGE})")
    args.expect_end()
    state.flags = replace(state.flags, bclient=True)
    state.broadcastclient_at = line.loc


def finish_broadcastclient(state: State) -> None:
    """A broadcast client with authentication on (the default) takes only packets whose
    MAC verifies under a trusted key: without any trusted key it would take none."""
    flags = state.flags
    if not flags.bclient or not flags.auth or state.trustedkeys:
        return
    loc = state.broadcastclient_at
    if loc is not None:
        state.warn(
            loc,
            "'broadcastclient' with authentication on (the default) takes only packets "
            "signed with a trusted key, and no key is trusted: add 'keys FILE' and "
            "'trustedkey N' (the server's 'broadcast ADDR key N'), or 'disable auth' to "
            "accept unsigned broadcasts from anyone on the LAN",
        )


def handle_broadcast(state: State, line: Line) -> None:
    args = Args(line.args)
    address = args.take()
    ip = parse_ip(address) if address is not None else None
    if ip is None:
        raise BadValue(f"'broadcast' needs an IP address (e.g. 192.168.1.255), got {show(address)}")
    if ip.version == 6 and not ip.is_multicast:
        raise BadValue(f"{ip}: IPv6 has no broadcast; give a multicast group (ff02::101)")
    if isinstance(ip, IPv4Address) and (ip.is_unspecified or ip.is_loopback):
        raise BadValue(f"{ip} is not a broadcast address; give the LAN's (e.g. 192.168.1.255)")
    values: dict[str, Any] = {}
    while not args.empty():
        word = args.take() or ""
        option = word.lower()
        if option not in _INT_OPTIONS:
            raise BadValue(f"unknown option {show(word)} for 'broadcast' (usage: {USAGE})")
        lo, hi = _INT_OPTIONS[option]
        values[option] = parse_int(args.take(), option, lo, hi)
    if "ttl" in values and not ip.is_multicast:
        state.warn(line.loc, "'ttl' only applies to a multicast address (ignored)")
    spec = replace(BroadcastSpec(address=str(ip), location=line.loc), **values)
    for other in state.broadcasts:
        if (other.address, other.port) == (spec.address, spec.port):
            raise BadValue(f"broadcast {spec.address} is already configured at {other.location}")
    state.broadcasts.append(spec)


DIRECTIVES: dict[str, Directive] = {
    "broadcast": Directive(
        handle_broadcast,
        USAGE,
        "Broadcast server (ntpd's): every 2^minpoll s a mode 5 packet with our time and "
        "system variables goes to ADDRESS, port 123 (or 'port'), sent with SO_BROADCAST "
        "from the first address we serve on. Sent only while we are synchronized. "
        "Clients cannot check where such a packet came from: use 'key N' beyond a LAN "
        "you own ('broadcastclient', ntpd's and ntpy's, ignores unauthenticated ones by "
        "default). chronyd has no broadcast client.",
        (
            ("key N", "sign every packet with trusted key N"),
            ("ttl N", "hops for a multicast group, 1..255 (default 1)"),
            ("minpoll N", "interval, log2 s, 3..17 (default 6: 64 s)"),
            ("version N", "NTP version of the packets, 3..4 (default 4)"),
            ("port N", "ntpy's own: the destination UDP port (default 123)"),
        ),
    ),
    "broadcastclient": Directive(
        handle_broadcastclient,
        CLIENT_USAGE,
        "Broadcast client (ntpd's; same as 'enable bclient'): mode 5 packets arriving on "
        "the NTP port become samples of a 'broadcast' source per sending server, with "
        "offset = transmit time + broadcastdelay/2 - receive time and delay = "
        "broadcastdelay (default 0.004 s). Such a source never polls; at most 8 are "
        "kept, and one silent for 8 of its intervals is removed. With 'auth' on (the "
        "default) only packets whose MAC verifies under a trusted key are used; others "
        "are ignored and counted (broadcast_unauthenticated, broadcast_bad_mac); "
        "'disable auth' accepts unsigned ones. 'novolley' is accepted (ntpy never "
        "volleys: it never sends to a broadcast server). chronyd has no broadcast client.",
    ),
}
